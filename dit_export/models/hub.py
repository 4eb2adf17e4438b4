"""Downloads: where a checkpoint or VAE named by the user is on disk, fetching it when allowed.

Two sources, one cache (``$DIT_EXPORT_CACHE``, default ``~/.cache/dit_export``): the two released
DiT checkpoints over plain HTTPS (``torch.hub.download_url_to_file``: a temporary file renamed when
complete, with its SHA-256 check where a hash is known), and Hugging Face Hub repositories (DiT
transformers and VAEs alike, through ``huggingface_hub`` into ``<cache>/huggingface``).
``DIT_EXPORT_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) is honoured on every path: a file that is not
cached is one line at once, saying which file to put where. Nothing here imports torch at module
level (the ``ModelSpec`` checks run without it).
"""

from __future__ import annotations

import os
import re
import urllib.error
from pathlib import Path

from dit_export.errors import UserError
from dit_export.fileio import ensure_writable_dir
from dit_export.lazy import optional_import
from dit_export.models.embedded import embedded_model, is_embedded, resolve_embedded

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/DiT/models/"
# released file name -> (model, image size)
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, int]] = {
    "DiT-XL-2-256x256.pt": ("DiT-XL/2", 256),
    "DiT-XL-2-512x512.pt": ("DiT-XL/2", 512),
}
# SHA-256 prefixes checked after a download (torch.hub's hash_prefix); none are published for the
# released files, so the table is empty until someone records them from a trusted copy.
OFFICIAL_SHA256: dict[str, str] = {}
# diffusers pipelines converted from the released weights (subfolder transformer/)
HUB_CHECKPOINTS: dict[str, tuple[str, int]] = {
    "facebook/DiT-XL-2-256": ("DiT-XL/2", 256),
    "facebook/DiT-XL-2-512": ("DiT-XL/2", 512),
}
VAE_HUB_IDS = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}
WEIGHTS = "diffusion_pytorch_model"  # diffusers' file stem: .safetensors, .safetensors.index.json, .bin

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_VAE_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(/[\w.-]+)*$")  # owner/name[/subfolder]
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl")
_TRUE = {"1", "true", "yes", "on"}
_OFFLINE_VARS = ("DIT_EXPORT_OFFLINE", "HF_HUB_OFFLINE")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The download cache: the argument, else $DIT_EXPORT_CACHE, else ~/.cache/dit_export."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DIT_EXPORT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dit_export"


def offline_reason() -> str | None:
    """'DIT_EXPORT_OFFLINE is set' (or HF_HUB_OFFLINE) when the user asked for no network; read at call time."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    return None


def offline() -> bool:
    """Whether the user asked for no network (DIT_EXPORT_OFFLINE or HF_HUB_OFFLINE)."""
    return offline_reason() is not None


def official_file_for(model: str | None, image_size: int | None) -> str | None:
    """The released file name for a (canonical) model name at an image size, if there is one."""
    return next((name for name, spec in OFFICIAL_CHECKPOINTS.items() if spec == (model, image_size)), None)


def looks_like_hub_id(source: str) -> bool:
    """'org/name' without a weights-file suffix: what we try on the Hub when it is not a local path."""
    return bool(_HUB_ID.match(source)) and not source.lower().endswith(_WEIGHT_SUFFIXES)


def looks_like_vae_hub_id(source: str) -> bool:
    """'owner/name[/subfolder...]', as VAE repositories are named (a pipeline's vae/ included)."""
    return bool(_VAE_HUB_ID.match(source))


def no_such_checkpoint(source: str) -> str:
    return (
        f"no such checkpoint: {source} (not a file or folder, a shipped model, a released name "
        f"({', '.join(OFFICIAL_CHECKPOINTS)}), or a Hub id like {next(iter(HUB_CHECKPOINTS))})"
    )


# --------------------------------------------------------------------------- locating user sources


def locate_checkpoint(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A DiT checkpoint on disk: a local path as is, a shipped model's file, a released file name
    or a Hub id through the download cache."""
    source = str(source)
    path = Path(source).expanduser()
    if path.exists():
        return path
    if is_embedded(source):
        return resolve_embedded(source)[0]
    if source in OFFICIAL_CHECKPOINTS:
        return fetch_official(source, cache_dir)
    if looks_like_hub_id(source):
        return fetch_hub(source, cache_dir)
    raise UserError(no_such_checkpoint(source))


def locate_vae(spec: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of a VAE: a shipped model's, a local folder, ``ema``/``mse`` or a Hub id.

    A Hub id ``owner/name[/subfolder]`` is first looked up as the plain folder ``<cache>/<name>``
    (``name_subfolder`` for a subfolder), where a user without network can place the files, then
    fetched into ``<cache>/huggingface``, the cache the DiT downloads use too.
    """
    if not spec or not str(spec).strip():
        raise UserError("no VAE given: pass a diffusers folder, a Hub id, or one of ema, mse")
    spec = str(spec).strip()
    if is_embedded(spec):  # a shipped model's own VAE (e.g. tiny-digits)
        return resolve_embedded(spec)[1]
    spec = VAE_HUB_IDS.get(spec.lower(), spec)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if not looks_like_vae_hub_id(spec):
        raise UserError(f"VAE folder {spec} does not exist (and it is not a Hub id like owner/name)")
    parts = spec.split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    manual = cache_root(cache_dir) / "_".join(parts[1:])  # sd-vae-ft-ema; DiT-XL-2-256_vae
    if (manual / "config.json").is_file():
        return manual
    shown = str(manual) if manual.is_absolute() else f"./{manual}"
    where = spec
    hint = (
        f"download config.json and {WEIGHTS}.safetensors from https://huggingface.co/{where} "
        f"into the folder {shown} and pass that folder as the VAE"
    )
    return hub_snapshot(
        repo_id, [subfolder] if subfolder else [""], cache_dir, what=f"VAE {where}", hint=hint
    )


# --------------------------------------------------------------------------- the two sources


def download_url(
    url: str, dest: str | os.PathLike, *, progress: bool = True, sha256: str | None = None
) -> Path:
    """`url` into `dest` through ``torch.hub.download_url_to_file`` (temporary file, renamed when
    complete; SHA-256 prefix checked when given); one-line errors naming what to place where."""
    dest = Path(dest)
    where = f"download {url} yourself and place it at {dest}"
    reason = offline_reason()
    if reason:
        raise UserError(
            f"offline and {dest.name} is not cached ({reason}): download {url} and place it at {dest}"
        )
    hub = optional_import("torch.hub", "downloading a checkpoint")
    ensure_writable_dir(dest.parent)
    try:
        hub.download_url_to_file(url, str(dest), hash_prefix=sha256, progress=progress)
    except urllib.error.HTTPError as e:
        raise UserError(f"cannot download {url} (HTTP {e.code} {e.reason}); {where}") from None
    except urllib.error.URLError as e:
        raise UserError(f"cannot download {url} ({e.reason}); {where}") from None
    except RuntimeError as e:  # torch.hub's hash check
        raise UserError(f"download of {url} is corrupt ({_one_line(e)}); {where}") from None
    except (OSError, ValueError) as e:  # connection reset, timeout, disk full, bad URL
        raise UserError(f"download of {url} failed ({_one_line(e)}); {where}") from None
    return dest


def fetch_official(
    filename: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Path of a released checkpoint: cached copy, ./pretrained_models/ (the official scripts'
    folder), else downloaded from `base_url` ($DIT_EXPORT_BASE_URL, default the official site)."""
    if filename not in OFFICIAL_CHECKPOINTS:
        raise UserError(f"{filename} is not a released DiT checkpoint ({', '.join(OFFICIAL_CHECKPOINTS)})")
    dest = cache_root(cache_dir) / filename
    for candidate in (dest, Path("pretrained_models") / filename):
        if candidate.is_file():
            return candidate
    base = base_url or os.environ.get("DIT_EXPORT_BASE_URL") or OFFICIAL_BASE_URL
    url = base.rstrip("/") + "/" + filename
    return download_url(url, dest, progress=progress, sha256=OFFICIAL_SHA256.get(filename))


def fetch_hub(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local folder of a diffusers DiT repo (pipeline root or bare transformer) in our cache."""
    hint = (
        f"download transformer/config.json and transformer/{WEIGHTS}.safetensors from "
        f"https://huggingface.co/{repo_id} into a folder and pass that folder"
    )
    return hub_snapshot(repo_id, ["", "transformer"], cache_dir, what=repo_id, hint=hint, folder_of=False)


def hub_snapshot(
    repo_id: str,
    subfolders: list[str],
    cache_dir: str | os.PathLike | None,
    *,
    what: str,
    hint: str,
    folder_of: bool = True,
) -> Path:
    """A diffusers model (config.json + weights: safetensors, else the older .bin) from the Hub.

    Only those files are fetched, for each candidate subfolder. Returns the model's folder
    (``folder_of``) or the snapshot root. Offline, only the local cache is consulted.
    """
    hf = optional_import("huggingface_hub", f"{what} (a Hugging Face Hub id)")
    errors = optional_import("huggingface_hub.errors", f"{what} (a Hugging Face Hub id)")
    hub_cache = ensure_writable_dir(cache_root(cache_dir) / "huggingface")
    reason = offline_reason() or ("HF_HUB_OFFLINE is set" if hf.constants.HF_HUB_OFFLINE else None)

    def patterns(*suffixes: str) -> list[str]:
        prefixes = [f"{s}/" if s else "" for s in subfolders]
        return [f"{p}{name}" for p in prefixes for name in ("config.json", *(WEIGHTS + x for x in suffixes))]

    def snapshot(allow: list[str]) -> Path:
        return Path(
            hf.snapshot_download(
                repo_id, allow_patterns=allow, cache_dir=str(hub_cache), local_files_only=reason is not None
            )
        )

    def model_folder(root: Path, *suffixes: str) -> Path | None:
        return next(
            (root / s for s in subfolders for x in suffixes if (root / s / (WEIGHTS + x)).is_file()), None
        )

    safetensors = (".safetensors", ".safetensors.index.json")
    try:
        root = snapshot(patterns(*safetensors))
        found = model_folder(root, *safetensors)
        if found is None:
            root = snapshot(patterns(*safetensors, ".bin"))
            found = model_folder(root, *safetensors, ".bin")
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        why = f"offline: {reason}" if reason else "no connection"
        raise UserError(
            f"cannot get {what} from the Hugging Face Hub ({why}, and it is not cached); {hint}"
        ) from None
    except errors.GatedRepoError:
        raise UserError(
            f"{what} is gated on the Hugging Face Hub (log in with `hf auth login`); {hint}"
        ) from None
    except errors.RepositoryNotFoundError:
        raise UserError(f"{what} is neither a local path nor a repository on the Hugging Face Hub") from None
    except Exception as e:  # network, HTTP, disk: the same advice
        raise UserError(f"cannot get {what} from the Hugging Face Hub ({_one_line(e)}); {hint}") from None
    if found is None:
        raise UserError(f"{what} on the Hugging Face Hub has no diffusers weights ({WEIGHTS}.*); {hint}")
    return found if folder_of else root


def describe_cache(model: str, image_size: int, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Where released weights of `model` at `image_size` are already on disk (for `models`)."""
    root = cache_root(cache_dir)
    found = []
    name = official_file_for(model, image_size)
    if name and any(p.is_file() for p in (root / name, Path("pretrained_models") / name)):
        found.append(name)
    for repo, spec in HUB_CHECKPOINTS.items():
        if (
            spec == (model, image_size)
            and (root / "huggingface" / f"models--{repo.replace('/', '--')}").is_dir()
        ):
            found.append(repo)
    return found


def shipped_files_present(name: str) -> bool:
    """Whether a shipped model's files are installed (a broken install lacks them)."""
    m = embedded_model(name)
    return m.ckpt_path.is_file() and (m.vae_path / "config.json").is_file()


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
