"""Sampler noise: a counter-based Philox stream every language reproduces, and the official torch stream.

numpy only at import time (the runtime uses this without torch). The `philox` kind is the default:
the noise for (seed, draw, image) is a pure function of those numbers, so any batch split, backend
or language (the C++ runtime reimplements `philox_normal`; spec in docs/noise.md) gives the same
numbers. The `torch` kind exists only to reproduce the official DiT scripts' stream on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dit_export.errors import UserError
from dit_export.lazy import optional_import
from dit_export.sampling.request import NOISE_KINDS

if TYPE_CHECKING:
    import torch

__all__ = ["NOISE_KINDS", "NoiseSource", "PhiloxNoise", "TorchNoise", "make_noise", "philox_normal"]

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # Random123 Philox4x32 multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key bumps (golden ratio, sqrt(3) - 1)
NOISE_TAG = 0x44695400  # counter word 3: ASCII "DiT\0", keeps our streams apart from other uses of a seed
_U32 = 0xFFFFFFFF


def philox4x32(counter: np.ndarray, key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """Philox4x32-R (Random123) of counters (..., 4) uint32 under one key; returns (..., 4) uint32."""
    ctr = np.asarray(counter, dtype=np.uint32)
    c0, c1, c2, c3 = (ctr[..., i] for i in range(4))
    k0, k1 = key[0] & _U32, key[1] & _U32
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & _U32, (k1 + PHILOX_W1) & _U32
        p0 = c0.astype(np.uint64) * m0  # exact 64-bit products: hi word = mulhi, low word = mullo
        p1 = c2.astype(np.uint64) * m1
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)).astype(np.uint32) ^ c1 ^ np.uint32(k0),
            p1.astype(np.uint32),
            (p0 >> np.uint64(32)).astype(np.uint32) ^ c3 ^ np.uint32(k1),
            p0.astype(np.uint32),
        )
    return np.stack([c0, c1, c2, c3], axis=-1)


def _check_u32(name: str, value: int, limit: int = 1 << 32) -> None:
    if not 0 <= value < limit:
        raise UserError(f"noise {name} must be in [0, {limit}), got {value}")


def philox_normal(
    seed: int, draw: int, images: Sequence[int] | np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Standard normals (len(images), *shape) float32 for `draw` of each image index (docs/noise.md).

    Element e of an image (row-major) is lane e % 4 of Philox block counter
    (e // 4, draw, image, NOISE_TAG) under key (seed low 32 bits, seed high 32 bits); the block's four
    words become two Box–Muller pairs in float64.
    """
    _check_u32("seed", seed, 1 << 64)
    _check_u32("draw", draw)
    idx = np.asarray(images, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() > _U32):
        raise UserError(f"noise image indices must be in [0, 2**32), got {idx.min()}..{idx.max()}")
    numel = math.prod(shape)
    blocks = -(-numel // 4)
    _check_u32("block count (elements / 4)", blocks, (1 << 32) + 1)
    ctr = np.empty((idx.size, blocks, 4), dtype=np.uint32)
    ctr[..., 0] = np.arange(blocks, dtype=np.uint32)
    ctr[..., 1] = draw
    ctr[..., 2] = idx[:, None].astype(np.uint32)
    ctr[..., 3] = NOISE_TAG
    u = (philox4x32(ctr, (seed & _U32, seed >> 32)).astype(np.float64) + 0.5) * 2.0**-32  # in (0, 1)
    r = np.sqrt(-2.0 * np.log(u[..., 0::2]))  # pairs (w0, w1) and (w2, w3): radius from the first
    theta = (2.0 * math.pi) * u[..., 1::2]  # angle from the second
    z = np.empty_like(u)
    z[..., 0::2] = r * np.cos(theta)
    z[..., 1::2] = r * np.sin(theta)
    return z.reshape(idx.size, blocks * 4)[:, :numel].astype(np.float32).reshape(idx.size, *shape)


class NoiseSource(Protocol):
    """What a sampler loop draws from: the initial latent once, then one noise tensor per step."""

    def initial(self) -> np.ndarray:
        """(N, C, L, L) float32 starting latent; call once, first."""
        ...

    def step(self, k: int) -> np.ndarray:
        """(N, C, L, L) float32 noise for the k-th step in loop order (k = 0 is the noisiest)."""
        ...


class PhiloxNoise:
    """Counter-based noise: initial = draw 0, step k = draw k + 1; any order, any batch split."""

    def __init__(self, seed: int, image_indices: Sequence[int] | np.ndarray, shape: tuple[int, ...]) -> None:
        self.seed, self.shape = seed, tuple(shape)
        self.images = np.asarray(image_indices, dtype=np.int64).reshape(-1)
        philox_normal(seed, 0, self.images, (0,))  # validate seed and indices now, not mid-loop

    def initial(self) -> np.ndarray:
        return philox_normal(self.seed, 0, self.images, self.shape)

    def step(self, k: int) -> np.ndarray:
        return philox_normal(self.seed, k + 1, self.images, self.shape)


class TorchNoise:
    """The official DiT sample.py stream: manual_seed(seed); randn(N) once; randn of the model batch per step.

    Every step (the last included) draws the whole model batch: 2N rows when guided (the official
    scripts duplicate x for CFG), N when not (sample_ddp.py at cfg 1); the loop uses the first N.
    A private generator, so the caller's global torch RNG state is untouched. The stream depends on
    the batch, so it reproduces one official batch only. The official scripts draw on the GPU:
    `device="cuda"` replays that stream (on CPU they first spend the generator on weight init).
    """

    def __init__(self, seed: int, n: int, shape: tuple[int, ...], guided: bool, device: str = "cpu") -> None:
        _check_u32("seed", seed, 1 << 64)
        torch = optional_import("torch", "noise='torch' (the official stream)")
        self.torch = torch
        self.n, self.shape, self.rows = n, tuple(shape), 2 * n if guided else n
        self.generator: torch.Generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._next = -1  # -1: initial() due; k >= 0: step(k) due

    def _draw(self, rows: int) -> np.ndarray:
        torch = self.torch
        x = torch.randn((rows, *self.shape), generator=self.generator, device=self.generator.device)
        return x[: self.n].to(device="cpu", dtype=torch.float32).numpy()

    def initial(self) -> np.ndarray:
        if self._next != -1:
            raise RuntimeError("TorchNoise.initial() must be called once, before any step")
        self._next = 0
        return self._draw(self.n)

    def step(self, k: int) -> np.ndarray:
        if k != self._next:
            expected = "initial()" if self._next == -1 else f"step({self._next})"
            raise RuntimeError(f"TorchNoise draws in loop order: step({k}) called, {expected} due")
        self._next += 1
        return self._draw(self.rows)


def make_noise(
    kind: str,
    seed: int,
    n: int,
    shape: tuple[int, ...],
    guided: bool,
    first_image: int = 0,
    torch_device: str = "cpu",
) -> NoiseSource:
    """The noise source for images first_image .. first_image + n - 1 of a run."""
    if kind == "philox":
        return PhiloxNoise(seed, np.arange(first_image, first_image + n, dtype=np.int64), shape)
    if kind == "torch":
        if first_image:
            raise UserError(
                "torch noise reproduces one official batch only; use philox noise to split a run into batches"
            )
        return TorchNoise(seed, n, shape, guided, device=torch_device)
    raise UserError(f"unknown noise kind {kind!r}; choose one of: {', '.join(NOISE_KINDS)}")
