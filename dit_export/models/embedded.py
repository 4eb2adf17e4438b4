"""Models shipped inside the package, selectable by name with ``--model`` (no download needed).

``tiny-digits`` is a small class-conditional DiT and a small diffusers ``AutoencoderKL`` trained
by ``scripts/train_tiny_digits.py`` on scikit-learn's bundled 8×8 digits (upscaled to 32×32 RGB).
Its files are ordinary checkpoints (an official-key DiT state dict in safetensors and a diffusers
VAE folder), so they go through exactly the loaders, export and runtimes that DiT-XL/2 does; the
only thing this module adds is where those files are and what the weights alone cannot say
(the attention heads of a custom width, the image size, the class names).

The digits data set helpers live here too: training and the quality score (``verify/score.py``)
must see the same images, made the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dit_export.errors import UserError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class EmbeddedModel:
    """One shipped model: its files (relative to ``dit_export/data``) and what they do not record."""

    name: str
    folder: str  # under dit_export/data
    ckpt: str  # DiT weights, official key names
    vae: str  # diffusers AutoencoderKL folder
    image_size: int
    num_heads: int
    num_classes: int
    class_names: tuple[str, ...]
    description: str = ""

    @property
    def path(self) -> Path:
        return DATA_DIR / self.folder

    @property
    def ckpt_path(self) -> Path:
        return self.path / self.ckpt

    @property
    def vae_path(self) -> Path:
        return self.path / self.vae

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    def meta(self) -> dict[str, Any]:
        """The training record written next to the weights (config, command, losses)."""
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {self.meta_path}: {e}") from None


EMBEDDED: dict[str, EmbeddedModel] = {
    "tiny-digits": EmbeddedModel(
        name="tiny-digits",
        folder="tiny_digits",
        ckpt="dit.safetensors",
        vae="vae",
        image_size=32,
        num_heads=4,
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        description="DiT (depth 4, hidden 128, 4 heads, patch 1) + AutoencoderKL (×8) on sklearn's 8×8 digits at 32×32",
    ),
}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def is_embedded(name: str | None) -> bool:
    """True for a shipped model's name (case and '-'/'_' insensitive)."""
    return bool(name) and _key(str(name)) in EMBEDDED


def embedded_model(name: str) -> EmbeddedModel:
    """The shipped model of that name; a one-line error naming the choices otherwise."""
    try:
        return EMBEDDED[_key(name)]
    except KeyError:
        raise UserError(f"no embedded model {name!r}; embedded: {', '.join(EMBEDDED)}") from None


def resolve_embedded(name: str) -> tuple[Path, Path, int, int]:
    """(DiT checkpoint file, VAE folder, image size, attention heads) of a shipped model.

    Feed them to ``load_dit(ckpt, image_size=..., num_heads=...)`` and ``load_vae(str(vae))``.
    Missing files (a broken install) are a one-line error.
    """
    m = embedded_model(name)
    for p in (m.ckpt_path, m.vae_path / "config.json"):
        if not p.is_file():
            raise UserError(f"embedded model {m.name} is incomplete: {p} is missing (reinstall dit_export)")
    return m.ckpt_path, m.vae_path, m.image_size, m.num_heads


# --------------------------------------------------------------------------- the digits data set

DIGITS_SIDE = 8  # sklearn's images are 8×8 with values 0..16
DIGITS_MAX = 16.0
DIGITS_UPSCALE = 4  # 8 → 32 pixels


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (1797, 8, 8) float32 in [0, 1] and (1797,) int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise UserError("the digits data set needs scikit-learn: pip install 'dit_export[score]'") from None
    d = load_digits()
    return (d.images / DIGITS_MAX).astype(np.float32), d.target.astype(np.int64)


def upscale_digits(small: np.ndarray) -> np.ndarray:
    """(N, 8, 8) in [0, 1] → (N, 3, 32, 32) float32 in [-1, 1]: bilinear ×4, gray repeated to RGB.

    The training images of tiny-digits (bright strokes on black). Bilinear with half-pixel
    centres (PyTorch's align_corners=False), restated in numpy so no torch is needed.
    """
    x = np.asarray(small, dtype=np.float32)
    n, s = x.shape[0], x.shape[-1]
    big = s * DIGITS_UPSCALE
    # source coordinate of each output pixel centre, clamped at the border as PyTorch does
    src = np.clip((np.arange(big, dtype=np.float32) + 0.5) / DIGITS_UPSCALE - 0.5, 0.0, s - 1.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, s - 1)
    w = (src - i0).astype(np.float32)
    rows = x[:, i0, :] * (1 - w)[None, :, None] + x[:, i1, :] * w[None, :, None]
    out = rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i1] * w[None, None, :]
    out = out * 2.0 - 1.0
    return np.ascontiguousarray(np.repeat(out[:, None], 3, axis=1), dtype=np.float32).reshape(n, 3, big, big)


def downscale_images(images: np.ndarray, side: int = DIGITS_SIDE) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, side·side) float32 in [0, 1]: channel mean, then box-average
    to side×side. What the score's classifier sees, for generated and real images alike."""
    img = np.asarray(images)
    if img.ndim != 4 or img.shape[3] != 3 or img.shape[1] != img.shape[2] or img.shape[1] % side:
        raise UserError(f"expected (N, H, W, 3) square images with H a multiple of {side}, got {img.shape}")
    gray = img.astype(np.float32).mean(axis=3) / 255.0
    n, h = gray.shape[0], gray.shape[1]
    k = h // side
    return gray.reshape(n, side, k, side, k).mean(axis=(2, 4)).reshape(n, side * side)
