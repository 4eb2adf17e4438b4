"""Decoded images → uint8 pixels and files, bit for bit as the official DiT scripts make them.

numpy + Pillow only (the runtime imports this without torch). The official scripts do the
conversion in float32 torch ops; each numpy step below is the same float32 operation in the same
order, so every pixel matches (tests compare with a torch restatement on random data):

- ``sample_ddp.py`` (FID samples): clamp(127.5·x + 128, 0, 255) → uint8 (truncation), NHWC.
- ``sample.py`` (the grid): torchvision ``save_image(x, nrow=4, normalize=True,
  value_range=(-1, 1))`` = clamp to [-1, 1], (x + 1) / 2, ``make_grid`` (padding 2, pad value 0),
  then ·255, +0.5, clamp [0, 255] → uint8 (truncation), HWC.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dit_export.fileio import atomic_path, ensure_writable_dir

_F = np.float32


def _as_nchw_float32(x: np.ndarray) -> np.ndarray:
    """float32 (N,3,H,W); fp16 input widens exactly (the official math runs in fp32)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected decoded images of shape (N, 3, H, W), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected floating-point images in [-1, 1], got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """(N,3,H,W) in ≈[-1,1] → (N,H,W,3) uint8 as ``sample_ddp.py``: clamp(127.5x + 128) truncated.

    +128 (not +127.5) with truncation is the official rounding; keep it for comparable FID.
    """
    x = _as_nchw_float32(x)
    y = x * _F(127.5)  # float32 multiply, then a separate float32 add: torch's two ops
    y = y + _F(128.0)
    np.clip(y, _F(0.0), _F(255.0), out=y)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)).astype(np.uint8)


def make_grid(x: np.ndarray, nrow: int = 4, padding: int = 2, pad_value: float = 0.0) -> np.ndarray:
    """torchvision ``make_grid`` layout for a (N,C,H,W) float array → (C, gh, gw).

    ``min(nrow, N)`` columns, ``ceil(N/cols)`` rows, ``padding`` pixels before every tile and
    after the last; a single image is returned as is (no padding), as torchvision does.
    """
    n, c, h, w = x.shape
    if n == 1:
        return x[0].copy()
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow must be >= 1 and padding >= 0 (got {nrow}, {padding})")
    xmaps = min(nrow, n)
    ymaps = int(math.ceil(float(n) / xmaps))
    height, width = h + padding, w + padding
    grid = np.full((c, height * ymaps + padding, width * xmaps + padding), pad_value, dtype=x.dtype)
    for k in range(n):
        row, col = divmod(k, xmaps)
        top, left = row * height + padding, col * width + padding
        grid[:, top : top + h, left : left + w] = x[k]
    return grid


def to_uint8_grid(x: np.ndarray, nrow: int = 4, padding: int = 2) -> np.ndarray:
    """(N,3,H,W) in ≈[-1,1] → one (gh, gw, 3) uint8 grid as ``sample.py``'s ``save_image``."""
    x = _as_nchw_float32(x)
    t = np.clip(x, _F(-1.0), _F(1.0))
    t = t - _F(-1.0)  # normalize: (x - low) / max(high - low, 1e-5), low=-1, high=1
    t = t / _F(2.0)
    grid = make_grid(t, nrow=nrow, padding=padding, pad_value=0.0)
    g = grid * _F(255.0)
    g = g + _F(0.5)
    np.clip(g, _F(0.0), _F(255.0), out=g)
    return np.ascontiguousarray(g.transpose(1, 2, 0)).astype(np.uint8)


def labelled_grid(
    nhwc_uint8: np.ndarray, captions: Sequence[str], nrow: int = 4, padding: int = 2
) -> np.ndarray:
    """The images in ``make_grid``'s layout with each caption drawn (Pillow) in a band under its
    image → (gh, gw, 3) uint8. Tiles are the images' own pixels; white text on the black padding."""
    arr = np.asarray(nhwc_uint8)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or len(arr) != len(captions):
        raise ValueError(
            f"expected (N, H, W, 3) uint8 images and N captions, got {arr.shape} and {len(captions)}"
        )
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow must be >= 1 and padding >= 0 (got {nrow}, {padding})")
    n, h, w, _ = arr.shape
    font = _caption_font(max(10, h // 10))
    band = int(font.getbbox("0123456789")[3]) + 4
    cols, rows = min(nrow, n), math.ceil(n / min(nrow, n))
    cell_h, cell_w = h + band + padding, w + padding
    canvas = Image.new("RGB", (cell_w * cols + padding, cell_h * rows + padding))
    draw = ImageDraw.Draw(canvas)
    for k, (img, text) in enumerate(zip(arr, captions)):
        row, col = divmod(k, cols)
        top, left = row * cell_h + padding, col * cell_w + padding
        canvas.paste(Image.fromarray(img), (left, top))
        draw.text((left + w / 2, top + h + band / 2), str(text), fill=(255, 255, 255), font=font, anchor="mm")
    return np.asarray(canvas, dtype=np.uint8)


def _caption_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font (no font file needed): scalable where Pillow has FreeType, else its bitmap."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _check_hwc(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    return img


def save_png(path: str | os.PathLike, hwc_uint8: np.ndarray) -> Path:
    """Write one RGB PNG atomically (nothing half-written if interrupted)."""
    img = _check_hwc(hwc_uint8)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


def save_png_folder(folder: str | os.PathLike, nhwc_uint8: np.ndarray, start: int = 0) -> list[Path]:
    """Write images as ``{index:06d}.png`` from ``start`` (the naming of ``sample_ddp.py``)."""
    folder = ensure_writable_dir(folder)
    return [save_png(folder / f"{start + i:06d}.png", img) for i, img in enumerate(nhwc_uint8)]


def save_labelled_pngs(
    folder: str | os.PathLike, nhwc_uint8: np.ndarray, labels: Sequence[int], start: int = 0
) -> list[Path]:
    """Write one PNG per image as ``{index:03d}-class{label}.png`` (what ``sample --out`` writes
    beside its grid); `start` offsets the index. Each file is written atomically."""
    arr = np.asarray(nhwc_uint8)
    if arr.ndim != 4 or len(arr) != len(labels):
        raise ValueError(
            f"expected (N, H, W, 3) images and N labels, got {arr.shape} and {len(labels)} labels"
        )
    folder = ensure_writable_dir(folder)
    return [
        save_png(folder / f"{start + i:03d}-class{int(label)}.png", img)
        for i, (label, img) in enumerate(zip(labels, arr))
    ]


def save_npz(path: str | os.PathLike, nhwc_uint8: np.ndarray) -> Path:
    """Write (N,H,W,3) uint8 under key ``arr_0``, the layout the ADM FID evaluator reads."""
    arr = np.asarray(nhwc_uint8)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {arr.dtype} {arr.shape}")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
        np.savez(f, arr_0=arr)
    return path


def load_png(path: str | os.PathLike) -> np.ndarray:
    """Read an image back as (H, W, 3) uint8 (as ``sample_ddp.py`` does when building the npz)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
