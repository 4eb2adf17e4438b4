"""The Stable-Diffusion VAE decoder (diffusers ``AutoencoderKL``): loading, a random stand-in, and
the decode module that the export traces.

DiT samples in the latent space of the SD kl-f8 autoencoder (``stabilityai/sd-vae-ft-ema`` for
FID, ``-mse`` for the demo grid); only the decoder is needed at sampling time. diffusers is
imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dit_export.errors import UserError

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

VAE_SHORTHANDS = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SD_SCALING_FACTOR = 0.18215

# owner/name[/subfolder...] as the Hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)*$")


# --------------------------------------------------------------------------- configs


def vae_config(kind: str = "sd") -> dict[str, Any]:
    """AutoencoderKL kwargs: the real SD kl-f8 config, or narrower ones that keep the ×8 factor.

    "sd": [128,256,512,512], 2 layers/block, 32 groups (the released sd-vae-ft-* VAEs).
    "small": [32,64,64,64], 2 layers/block, 32 groups (same structure, ~1/60 of the weights).
    "tiny": [16,16,32,32], 1 layer/block, 8 groups (fast CPU tests).
    """
    base: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        act_fn="silu",
        scaling_factor=SD_SCALING_FACTOR,
        sample_size=256,
    )
    shapes = {
        "sd": ([128, 256, 512, 512], 2, 32),
        "small": ([32, 64, 64, 64], 2, 32),
        "tiny": ([16, 16, 32, 32], 1, 8),
    }
    if kind not in shapes:
        raise UserError(f"unknown VAE kind {kind!r}; choose one of {', '.join(shapes)}")
    channels, layers, groups = shapes[kind]
    n = len(channels)
    return base | dict(
        block_out_channels=channels,
        layers_per_block=layers,
        norm_num_groups=groups,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
    )


def random_vae(kind: str = "sd", seed: int = 0) -> AutoencoderKL:
    """A random-weight AutoencoderKL of ``vae_config(kind)``, identical for the same seed.

    GroupNorm scales/shifts are perturbed away from 1/0 so that a swapped or dropped affine
    (e.g. GroupNorm → InstanceNorm rewrites in export) changes the output and tests notice.
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    cfg = vae_config(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**cfg)
        with torch.no_grad():
            for m in vae.modules():
                if isinstance(m, nn.GroupNorm) and m.affine:
                    m.weight.add_(0.1 * torch.randn_like(m.weight))
                    m.bias.add_(0.1 * torch.randn_like(m.bias))
    return vae.eval().requires_grad_(False)


def vae_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along one side: 2 ** (number of upsampling stages)."""
    return 2 ** (len(vae.config["block_out_channels"]) - 1)


# --------------------------------------------------------------------------- loading


def resolve_vae_spec(spec: str) -> str:
    """Expand the shorthands ``ema``/``mse`` to their Hub ids; anything else unchanged."""
    return VAE_SHORTHANDS.get(spec.strip().lower(), spec) if spec else spec


def load_vae(spec: str, cache_dir: str | os.PathLike | None = None) -> AutoencoderKL:
    """Load an AutoencoderKL from a local diffusers folder, a Hub id, or ``ema``/``mse``.

    A local folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or ``.bin``),
    or is a pipeline folder with them under ``vae/``. A Hub id (``owner/name[/subfolder]``) is
    first looked up as the plain folder ``<cache>/<name>`` (where a user without network can
    place the files), then downloaded through huggingface_hub into ``<cache>/huggingface`` — the
    same cache as the DiT downloads (``models.hub.cache_root``: the argument, $DIT_EXPORT_CACHE or
    ~/.cache/dit_export). Every failure is a one-line ``UserError``.
    """
    if not spec or not str(spec).strip():
        raise UserError("no VAE given: pass a diffusers folder, a Hub id, or one of ema, mse")
    from dit_export.models.embedded import is_embedded, resolve_embedded

    if is_embedded(str(spec)):  # a shipped model's own VAE (e.g. tiny-digits)
        return _load_folder(resolve_embedded(str(spec))[1])
    spec = resolve_vae_spec(str(spec))
    path = Path(spec).expanduser()
    if path.exists():
        return _load_folder(path)
    if not _HUB_ID.match(spec):
        raise UserError(f"VAE folder {spec} does not exist (and it is not a Hub id like owner/name)")
    parts = spec.split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    name = "_".join(parts[1:])  # sd-vae-ft-ema; DiT-XL-2-256_vae for a subfolder
    from dit_export.models.hub import cache_root

    root = cache_root(cache_dir)
    manual = root / name
    if (manual / "config.json").is_file():
        return _load_folder(manual)
    folder = _download(repo_id, subfolder, root / "huggingface", manual)
    return _load_folder(folder)


def _load_folder(folder: Path) -> AutoencoderKL:
    """Check a diffusers VAE folder ourselves (clear messages), then let diffusers read it."""
    if not folder.is_dir():
        raise UserError(f"VAE path {folder} is not a folder (expected a diffusers AutoencoderKL folder)")
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"  # a whole pipeline folder
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"VAE folder {folder} has no config.json (expected a diffusers AutoencoderKL folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read VAE config {cfg_path}: {_one_line(e)}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"VAE config {cfg_path} is not a JSON object")
    cls = cfg.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise UserError(f"VAE config {cfg_path} describes a {cls}, not an AutoencoderKL")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise UserError(f"VAE folder {folder} has no weights ({' or '.join(WEIGHT_FILES)})")

    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # we report missing weights ourselves, in one line
    try:
        vae, info = AutoencoderKL.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # user files: a bad config value, truncated or mismatched weights
        raise UserError(f"cannot load VAE from {folder}: {_one_line(e)}") from None
    finally:
        dlogging.set_verbosity(level)
    # A decoder-only folder is fine; a decoder weight left at random init is not.
    missing = sorted(
        k for k in info.get("missing_keys", []) if k.startswith(("decoder.", "post_quant_conv."))
    )
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"VAE weights in {folder} do not match its config: {missing[0]} missing{more}")
    return vae.eval().requires_grad_(False)


def _download(repo_id: str, subfolder: str, cache_dir: str | os.PathLike | None, manual: Path) -> Path:
    """config.json + weights (safetensors, else .bin) from the Hub; the snapshot folder."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}/{subfolder}" if subfolder else repo_id
    files = f"config.json and {WEIGHT_FILES[0]}"
    shown = str(manual) if manual.is_absolute() else f"./{manual}"
    hint = (
        f"download {files} from https://huggingface.co/{where} into the folder {shown} "
        f"and pass that folder as the VAE"
    )

    def get(filename: str) -> str:
        return hf_hub_download(
            repo_id,
            filename,
            subfolder=subfolder or None,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )

    try:
        cfg = get("config.json")
        try:
            get(WEIGHT_FILES[0])
        except RemoteEntryNotFoundError:
            get(WEIGHT_FILES[1])
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "no connection"
        raise UserError(
            f"cannot get VAE {where} from the Hugging Face Hub ({why} and it is not cached): {hint}"
        ) from None
    except GatedRepoError:
        raise UserError(
            f"VAE {where} is gated on the Hugging Face Hub (log in with `hf auth login`): {hint}"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"VAE repository {repo_id} not found on the Hugging Face Hub (nor as a local folder)"
        ) from None
    except RevisionNotFoundError as e:
        raise UserError(f"VAE {where}: {_one_line(e)}") from None
    except RemoteEntryNotFoundError:
        raise UserError(f"{where} on the Hugging Face Hub has no diffusers VAE ({files} missing)") from None
    except HfHubHTTPError as e:
        raise UserError(
            f"cannot get VAE {where} from the Hugging Face Hub ({_one_line(e)}): {hint}"
        ) from None
    except OSError as e:
        raise UserError(f"cannot store VAE {where} in the cache: {_one_line(e)}") from None
    return Path(cfg).parent


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- the decode module


class VAEDecode(nn.Module):
    """Latent (N,4,l,l) fp32 → image (N,3,8l,8l) in ≈[-1,1]: ``decoder(post_quant_conv(z / s))``.

    The same ops as the official ``vae.decode(z / 0.18215).sample`` (s read from the config), as
    one module with no Python branching on data, so it traces to a static ONNX graph. It shares
    the submodules of ``vae`` (no copy).
    """

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        cfg = dict(vae.config)
        self.post_quant_conv = vae.post_quant_conv if vae.post_quant_conv is not None else nn.Identity()
        self.decoder = vae.decoder
        self.decoder.gradient_checkpointing = False
        self.scaling_factor = float(cfg["scaling_factor"])
        shift = cfg.get("shift_factor")
        self.shift_factor = None if shift is None else float(shift)
        self.latent_channels = int(cfg["latent_channels"])
        self.out_channels = int(cfg["out_channels"])
        self.factor = vae_factor(vae)
        self.eval()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z / self.scaling_factor
        if self.shift_factor is not None:  # a config constant, not data: fixed at trace time
            z = z + self.shift_factor
        return self.decoder(self.post_quant_conv(z))

    def image_size(self, latent_size: int) -> int:
        return latent_size * self.factor

    def set_fused_attention(self, fused: bool) -> None:
        """Mid-block attention as fused SDPA (diffusers' default) or plain matmul + softmax."""
        from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

        for m in self.decoder.modules():
            if isinstance(m, Attention):
                proc: Any = AttnProcessor2_0() if fused else AttnProcessor()
                m.set_processor(proc)


@torch.no_grad()
def decode_to_uint8(vae_decode: VAEDecode, z: torch.Tensor) -> np.ndarray:
    """Decode latents and convert as ``sample_ddp.py`` does: (N,H,W,3) uint8."""
    from dit_export.images import to_uint8

    img = vae_decode(z.float())
    return to_uint8(img.float().cpu().numpy())
