"""Downloads: the two released DiT checkpoints (plain HTTPS) and diffusers repos (Hugging Face Hub).

Everything lands in one cache folder (``$DIT_EXPORT_CACHE``, default ``~/.cache/dit_export``), is
written to a temporary name and renamed when complete, so an interrupted download never leaves a
file that looks finished. Offline, or when a download fails, the error says which file to put where.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dit_export.errors import UserError
from dit_export.fileio import atomic_path, ensure_writable_dir

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/DiT/models/"
# released file name -> (model, image size)
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, int]] = {
    "DiT-XL-2-256x256.pt": ("DiT-XL/2", 256),
    "DiT-XL-2-512x512.pt": ("DiT-XL/2", 512),
}
# diffusers pipelines converted from the released weights (subfolder transformer/)
HUB_CHECKPOINTS: dict[str, tuple[str, int]] = {
    "facebook/DiT-XL-2-256": ("DiT-XL/2", 256),
    "facebook/DiT-XL-2-512": ("DiT-XL/2", 512),
}
# What a diffusers DiT needs: the transformer's config and weights, in a pipeline or on their own.
HUB_PATTERNS = [
    f"{sub}{name}"
    for sub in ("", "transformer/")
    for name in (
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
    )
]
HUB_BIN_PATTERNS = [f"{sub}diffusion_pytorch_model.bin" for sub in ("", "transformer/")]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl")
_TRUE = {"1", "true", "yes", "on"}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The download cache: the argument, else $DIT_EXPORT_CACHE, else ~/.cache/dit_export."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DIT_EXPORT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dit_export"


def offline() -> bool:
    """Whether the user asked for no network (HF_HUB_OFFLINE or DIT_EXPORT_OFFLINE), read at call time."""
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "DIT_EXPORT_OFFLINE")
    )


def official_file_for(model: str, image_size: int) -> str | None:
    """The released file name for a (canonical) model name at an image size, if there is one."""
    for name, spec in OFFICIAL_CHECKPOINTS.items():
        if spec == (model, image_size):
            return name
    return None


def looks_like_hub_id(source: str) -> bool:
    """'org/name' without a weights-file suffix: what we try on the Hub when it is not a local path."""
    return bool(_HUB_ID.match(source)) and not source.lower().endswith(_WEIGHT_SUFFIXES)


def download_url(url: str, dest: str | os.PathLike, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Stream `url` into `dest` (temp file, renamed when complete) with a tqdm bar; one-line errors."""
    dest = Path(dest)
    where = f"download {url} yourself and place it at {dest}"
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise UserError(f"cannot download {url} (HTTP {e.code} {e.reason}); {where}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download {url} ({reason}); {where}") from None
    with resp, atomic_path(dest) as tmp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        got = 0
        try:
            with (
                open(tmp, "wb") as f,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=None if progress else True,
                ) as bar,
            ):
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except OSError as e:  # connection reset, timeout, disk full
            raise UserError(f"download of {url} failed after {got} bytes ({e}); {where}") from None
        if total is not None and got != total:
            raise UserError(f"download of {url} stopped at {got} of {total} bytes; {where}")
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
    if offline():
        raise UserError(f"offline and {filename} is not cached: download {url} and place it at {dest}")
    ensure_writable_dir(dest.parent)
    return download_url(url, dest, progress=progress)


def fetch_hub(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local folder of a diffusers DiT repo (pipeline root or bare transformer) in our cache.

    Downloads only the transformer's config and weights (safetensors, else the older .bin).
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ModuleNotFoundError:
        raise UserError(f"{repo_id} looks like a Hub id, which needs: pip install huggingface_hub") from None
    hub_cache = ensure_writable_dir(cache_root(cache_dir) / "huggingface")
    local_only = offline()
    hint = (
        f"download transformer/config.json and transformer/diffusion_pytorch_model.safetensors from "
        f"https://huggingface.co/{repo_id} into a folder and pass that folder"
    )

    def snapshot(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=patterns, cache_dir=hub_cache, local_files_only=local_only
            )
        )

    def has(folder: Path, name: str) -> bool:
        return any((folder / sub / name).is_file() for sub in ("", "transformer"))

    try:
        folder = snapshot(HUB_PATTERNS)
        if not has(folder, "diffusion_pytorch_model.safetensors") and not has(
            folder, "diffusion_pytorch_model.safetensors.index.json"
        ):
            folder = snapshot(HUB_PATTERNS + HUB_BIN_PATTERNS)
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE)" if local_only else "no connection"
        raise UserError(
            f"cannot get {repo_id} from the Hugging Face Hub ({why} and not cached); {hint}"
        ) from None
    except GatedRepoError:
        raise UserError(
            f"{repo_id} is gated on the Hugging Face Hub (log in with `hf auth login`); {hint}"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{repo_id} is neither a local path nor a repository on the Hugging Face Hub"
        ) from None
    except Exception as e:  # network, HTTP, disk: the same advice
        lines = str(e).strip().splitlines()
        reason = (lines[0] if lines else type(e).__name__)[:200]
        raise UserError(f"cannot get {repo_id} from the Hugging Face Hub ({reason}); {hint}") from None
    return folder
