"""Downloads: where a checkpoint or VAE named by the user is on disk, fetching it when allowed.

Two sources, one cache (``$DIT_EXPORT_CACHE``, default ``~/.cache/dit_export``): the two released
DiT checkpoints over plain HTTPS from ``$DIT_EXPORT_BASE_URL`` (default the official site; a
temporary file renamed when complete, its length checked against Content-Length and its SHA-256
against a known hash where one is recorded), and Hugging Face Hub repositories (DiT transformers
and VAEs alike, through ``huggingface_hub`` from ``$HF_ENDPOINT`` into ``<cache>/huggingface``).

Every cached download is checked before use against the digest it was downloaded under (the Hub
names each blob by its sha256 or git sha1; an official file's sha256 is recorded at download): a
truncated or modified file is one line, never a model built from it. The full hash is computed
once per (size, mtime) of a file; ``<cache>/verified/`` remembers the files that passed.
``DIT_EXPORT_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) is honoured on every path: a file that is not
cached is one line at once, saying which file to put where. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from dit_export.errors import UserError, first_line
from dit_export.fileio import atomic_path, ensure_writable_dir, read_json_or_none, write_json
from dit_export.lazy import optional_import
from dit_export.models.embedded import embedded_model, is_embedded, resolve_embedded

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/DiT/models/"
# released file name -> (model, image size)
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, int]] = {
    "DiT-XL-2-256x256.pt": ("DiT-XL/2", 256),
    "DiT-XL-2-512x512.pt": ("DiT-XL/2", 512),
}
BASE_URL_VAR = "DIT_EXPORT_BASE_URL"  # where the released files are fetched from (a mirror, a test server)
# SHA-256 (or a prefix of it) checked after a download, whatever the base URL; none are published
# for the released files, so the table is empty until someone records them from a trusted copy.
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
_KEY = {"sha256": "sha256", "git-sha1": "git_sha1"}  # digest kind -> its key in a verified/ record
_BLOB_NAME = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # git sha1 (small files) | sha256 (LFS)
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


def hub_page(repo_id: str) -> str:
    """The web address of a Hub repository, on $HF_ENDPOINT when set (a mirror) as the client uses it."""
    return f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/{repo_id}"


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
        f"download config.json and {WEIGHTS}.safetensors from {hub_page(where)} "
        f"into the folder {shown} and pass that folder as the VAE"
    )
    return hub_snapshot(
        repo_id, [subfolder] if subfolder else [""], cache_dir, what=f"VAE {where}", hint=hint
    )


# --------------------------------------------------------------------------- the two sources


def download_url(
    url: str, dest: str | os.PathLike, *, progress: bool = True, sha256: str | None = None
) -> Path:
    """`url` into `dest` (a temporary file renamed when complete).

    A body shorter than its Content-Length, or a digest that does not start with `sha256` (when
    given), leaves nothing behind and is one line naming what to place where.
    """
    return _download(url, Path(dest), progress, sha256)[0]


def _download(url: str, dest: Path, progress: bool, sha256: str | None) -> tuple[Path, str]:
    """`download_url`, also returning the SHA-256 of what was written."""
    where = f"download {url} yourself and place it at {dest}"
    reason = offline_reason()
    if reason:
        raise UserError(
            f"offline and {dest.name} is not cached ({reason}): download {url} and place it at {dest}"
        )
    tqdm = optional_import("tqdm", "a download's progress bar").tqdm
    ensure_writable_dir(dest.parent)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(dest) as tmp:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            h, got = hashlib.sha256(), 0
            with (
                open(tmp, "wb") as f,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress, leave=False
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            digest = h.hexdigest()
            if total is not None and got != total:
                raise UserError(f"download of {url} is truncated ({got} of {total} bytes); {where}")
            if sha256 and not digest.startswith(sha256.lower()):
                raise UserError(
                    f"download of {url} is corrupt (invalid hash value: expected {sha256}, got "
                    f"{digest[: len(sha256)]}); {where}"
                )
    except urllib.error.HTTPError as e:
        raise UserError(f"cannot download {url} (HTTP {e.code} {e.reason}); {where}") from None
    except urllib.error.URLError as e:
        raise UserError(f"cannot download {url} ({e.reason}); {where}") from None
    except (OSError, ValueError) as e:  # connection reset, timeout, disk full, bad URL
        raise UserError(f"download of {url} failed ({first_line(e, 200)}); {where}") from None
    return dest, digest


def fetch_official(
    filename: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Path of a released checkpoint: cached copy (checked against the digest recorded when it
    was downloaded), ./pretrained_models/ (the official scripts' folder), else downloaded from
    `base_url` ($DIT_EXPORT_BASE_URL, default the official site; a known hash is checked whatever
    the base URL, and an override is named on stderr)."""
    if filename not in OFFICIAL_CHECKPOINTS:
        raise UserError(f"{filename} is not a released DiT checkpoint ({', '.join(OFFICIAL_CHECKPOINTS)})")
    root = cache_root(cache_dir)
    dest = root / filename
    record = root / "verified" / f"{filename}.json"
    if dest.is_file():
        recorded = read_json_or_none(record)
        expected = recorded.get("sha256") if isinstance(recorded, dict) else None
        expected = expected or OFFICIAL_SHA256.get(filename)
        if expected:
            check_file(dest, "sha256", expected, root, what=filename, fix=f"delete {dest} and run again")
        return dest
    local = Path("pretrained_models") / filename
    if local.is_file():
        return local
    base = base_url or os.environ.get(BASE_URL_VAR) or OFFICIAL_BASE_URL
    url = base.rstrip("/") + "/" + filename
    if base.rstrip("/") != OFFICIAL_BASE_URL.rstrip("/"):
        print(f"downloading {filename} from {url}, not the official site", file=sys.stderr)
    path, digest = _download(url, dest, progress, OFFICIAL_SHA256.get(filename))
    _remember(path, "sha256", digest, root, name=f"{filename}.json", url=url)
    return path


# --------------------------------------------------------------------------- cache integrity


def _digest(path: Path, kind: str) -> str:
    """sha256 of the bytes, or git's blob sha1 (what the Hub lists for a small, non-LFS file)."""
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1()
    if kind == "git-sha1":
        h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _remember(path: Path, kind: str, digest: str, root: Path, *, name: str, **extra: str) -> None:
    """Record that `path`, as it is now (size, mtime), has `digest`; a failed write costs a rehash."""
    real = path.resolve()
    st = real.stat()
    record = {_KEY[kind]: digest, "path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        write_json(root / "verified" / name, {**record, **extra})
    except (OSError, UserError):
        pass


def check_file(path: Path, kind: str, expected: str, root: Path, *, what: str, fix: str) -> None:
    """Refuse `path` unless its digest (`kind`: sha256 | git-sha1) starts with `expected`.

    Hashed once per (path, size, mtime): a file that passed is remembered in ``<root>/verified/``.
    This catches truncation and corruption, not a deliberate edit that restores the mtime.
    """
    real = path.resolve()
    try:
        st = real.stat()
    except OSError as e:
        raise UserError(f"{what}: cannot read the cached {path.name} ({e.strerror or e}); {fix}") from None
    name = f"{real.name}.json"
    seen = read_json_or_none(root / "verified" / name)
    if isinstance(seen, dict) and (seen.get("path"), seen.get("size"), seen.get("mtime_ns")) == (
        str(real),
        st.st_size,
        st.st_mtime_ns,
    ):
        if str(seen.get(_KEY[kind], "")).startswith(expected):
            return
    actual = _digest(real, kind)
    if not actual.startswith(expected):
        raise UserError(
            f"{what}: the cached {path.name} is corrupt or truncated ({kind} {actual[:12]}…, "
            f"{st.st_size} bytes; expected {kind} {expected[:12]}…); {fix}"
        )
    extra = {k: v for k, v in seen.items() if k == "url"} if isinstance(seen, dict) else {}
    _remember(real, kind, actual, root, name=name, **extra)


def check_snapshot_files(folder: Path, root: Path, *, what: str) -> None:
    """Every file of a Hub model folder against the digest its cache blob is named by.

    The Hub lists a small file by its git blob sha1 and an LFS file by its sha256, and
    ``huggingface_hub`` stores each as ``blobs/<that digest>`` (it checks only the length).
    Files that are not links into ``blobs/`` (a copy-mode cache) carry no digest to check.
    """
    for path in sorted(p for p in folder.iterdir() if p.is_file() or p.is_symlink()):
        real = path.resolve()
        if real.parent.name != "blobs" or not _BLOB_NAME.match(real.name):
            continue
        kind = "sha256" if len(real.name) == 64 else "git-sha1"
        check_file(
            path,
            kind,
            real.name,
            root,
            what=what,
            fix=f"delete {real} and run again online to download it anew",
        )


# --------------------------------------------------------------------------- the Hub


def fetch_hub(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local folder of a diffusers DiT repo (pipeline root or bare transformer) in our cache."""
    hint = (
        f"download transformer/config.json and transformer/{WEIGHTS}.safetensors from "
        f"{hub_page(repo_id)} into a folder and pass that folder"
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
    # submodules are imported by name: huggingface_hub 2.x no longer exposes them as attributes
    constants = optional_import("huggingface_hub.constants", f"{what} (a Hugging Face Hub id)")
    hub_cache = ensure_writable_dir(cache_root(cache_dir) / "huggingface")
    reason = offline_reason() or ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else None)

    def patterns(*suffixes: str) -> list[str]:
        prefixes = [f"{s}/" if s else "" for s in subfolders]
        names = ["config.json", *(WEIGHTS + x for x in suffixes)]
        if ".safetensors.index.json" in suffixes:  # the shards an index names
            names.append(f"{WEIGHTS}-*-of-*.safetensors")
        return [f"{p}{name}" for p in prefixes for name in names]

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
        raise UserError(
            f"cannot get {what} from the Hugging Face Hub ({first_line(e, 200)}); {hint}"
        ) from None
    if found is None:
        raise UserError(f"{what} on the Hugging Face Hub has no diffusers weights ({WEIGHTS}.*); {hint}")
    check_snapshot_files(found, cache_root(cache_dir), what=what)
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
