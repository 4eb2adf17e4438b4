"""The Stable-Diffusion VAE decoder (diffusers ``AutoencoderKL``): loading, a random stand-in, and
the decode module that the export traces.

DiT samples in the latent space of the SD kl-f8 autoencoder (``stabilityai/sd-vae-ft-ema`` for
FID, ``-mse`` for the demo grid); only the decoder is needed at sampling time. diffusers is
imported at first use (``lazy.optional_import``) so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dit_export.errors import UserError, first_line
from dit_export.images import to_uint8
from dit_export.lazy import optional_import
from dit_export.models import hub
from dit_export.models.formats import safe_torch_load

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

VAE_SHORTHANDS = hub.VAE_HUB_IDS
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SD_SCALING_FACTOR = 0.18215
_AUTOENCODER = "diffusers.models.autoencoders.autoencoder_kl"  # imported at first use: diffusers is slow


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
    AutoencoderKL = optional_import(_AUTOENCODER, "the VAE decoder").AutoencoderKL
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
    return hub.VAE_HUB_IDS.get(spec.strip().lower(), spec) if spec else spec


def load_vae(spec: str, cache_dir: str | os.PathLike | None = None) -> AutoencoderKL:
    """Load an AutoencoderKL from a local diffusers folder, a Hub id, ``ema``/``mse``, or a shipped
    model's name (its own VAE).

    A local folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or ``.bin``),
    or is a pipeline folder with them under ``vae/``. Where a Hub id is looked for and cached:
    ``models.hub.locate_vae``. Every failure is a one-line ``UserError``.
    """
    return _load_folder(hub.locate_vae(spec, cache_dir))


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
        raise UserError(f"cannot read VAE config {cfg_path}: {first_line(e)}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"VAE config {cfg_path} is not a JSON object")
    cls = cfg.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise UserError(f"VAE config {cfg_path} describes a {cls}, not an AutoencoderKL")
    weights = [folder / w for w in WEIGHT_FILES if (folder / w).is_file()]
    if not weights:
        raise UserError(f"VAE folder {folder} has no weights ({' or '.join(WEIGHT_FILES)})")
    if weights[0].suffix == ".bin":  # a pickle: our refusal (it would run code) before diffusers opens it
        safe_torch_load(weights[0])
    AutoencoderKL = optional_import(_AUTOENCODER, "the VAE decoder").AutoencoderKL
    try:
        with _quiet_diffusers():  # we report missing weights ourselves, in one line
            vae, info = AutoencoderKL.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # user files: a bad config value, truncated or mismatched weights
        raise UserError(f"cannot load VAE from {folder}: {first_line(e)}") from None
    # A decoder-only folder is fine; a decoder weight left at random init is not.
    missing = sorted(
        k for k in info.get("missing_keys", []) if k.startswith(("decoder.", "post_quant_conv."))
    )
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"VAE weights in {folder} do not match its config: {missing[0]} missing{more}")
    return vae.eval().requires_grad_(False)


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers' logger at error level and its Python warnings dropped, restored afterwards."""
    dlogging = optional_import("diffusers.utils.logging", "the VAE decoder")
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlogging.set_verbosity(level)


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
        procs = optional_import("diffusers.models.attention_processor", "the VAE decoder")
        Attention, AttnProcessor, AttnProcessor2_0 = (
            procs.Attention,
            procs.AttnProcessor,
            procs.AttnProcessor2_0,
        )
        for m in self.decoder.modules():
            if isinstance(m, Attention):
                proc: Any = AttnProcessor2_0() if fused else AttnProcessor()
                m.set_processor(proc)


@torch.no_grad()
def decode_to_uint8(vae_decode: VAEDecode, z: torch.Tensor) -> np.ndarray:
    """Decode latents and convert as ``sample_ddp.py`` does: (N,H,W,3) uint8."""
    img = vae_decode(z.float())
    return to_uint8(img.float().cpu().numpy())
