"""A request's noise served in engine batches: rows keyed by (seed, global image index), padded to N.

The runtime loop runs a request of M images in chunks of the engine batch N; `ChunkNoise` hands it
the initial latents and the per-step noise of chunk c, zero-padded to N rows. Philox rows are a
pure function of (seed, image index), so any split (and rows of several requests packed into one
batch, `Sampler.generate_many`) draws exactly what each image would draw alone; the `torch` stream
is sequential, so it is drawn for the whole request up front. numpy only at import time.
"""

from __future__ import annotations

import math

import numpy as np

from dit_export.errors import UserError
from dit_export.sampling.noise import PhiloxNoise, make_noise

# torch noise must draw the official stream for the whole request up front (it is sequential).
MAX_TORCH_NOISE_BYTES = 4 << 30


def pad_rows(a: np.ndarray, n: int) -> np.ndarray:
    """`a` with its first axis zero-padded to n rows (the last chunk of a request)."""
    a = np.asarray(a)
    out = np.zeros((n, *a.shape[1:]), dtype=a.dtype)
    out[: len(a)] = a
    return out


class RowsPhilox:
    """Philox noise for rows that each carry their own (seed, global image index): rows of several
    requests packed into one engine batch. Rows of one seed draw together, exactly as alone."""

    def __init__(self, seeds: np.ndarray, indices: np.ndarray, shape: tuple[int, ...]):
        self.rows, self.shape = len(indices), shape
        self.parts = []
        for seed in np.unique(seeds):
            rows = np.flatnonzero(seeds == seed)
            self.parts.append((rows, PhiloxNoise(int(seed), indices[rows], shape)))

    def _gather(self, draw) -> np.ndarray:
        out = np.empty((self.rows, *self.shape), dtype=np.float32)
        for rows, src in self.parts:
            out[rows] = draw(src)
        return out

    def initial(self) -> np.ndarray:
        return self._gather(lambda src: src.initial())

    def step(self, k: int) -> np.ndarray:
        return self._gather(lambda src: src.step(k))


class ChunkNoise:
    """Initial latents and per-step noise for chunk c of a request, padded to the engine batch n.

    Philox rows are keyed by (seeds[i], indices[i]): one seed and first_index + i for a request,
    several seeds for the packed rows of `Sampler.generate_many`. `steps`: how many steps of
    torch noise to draw up front (0 for the ODE samplers, which use only the initial latent)."""

    def __init__(
        self,
        kind: str,
        seeds: np.ndarray,
        indices: np.ndarray,
        n: int,
        shape: tuple[int, ...],
        guided: bool,
        steps: int,
    ):
        m = len(indices)
        self.kind, self.seed, self.m, self.n, self.shape = kind, int(seeds[0]), m, n, shape
        self.guided, self.seeds, self.indices = guided, seeds, indices
        self._philox: dict[int, RowsPhilox] = {}
        self._torch: tuple[np.ndarray, np.ndarray] | None = None
        if kind == "torch":
            need = (steps + 1) * m * math.prod(shape) * 4
            if need > MAX_TORCH_NOISE_BYTES:
                raise UserError(
                    f"torch noise for {m} images × {steps} steps needs {need / 2**30:.1f} GiB up front "
                    "(it is one sequential stream); use philox noise or fewer images per call"
                )
            self.steps_total = steps

    def _rows(self, c: int) -> tuple[int, int]:
        return c * self.n, min(self.m, (c + 1) * self.n)

    def _philox_source(self, c: int) -> RowsPhilox:
        if c not in self._philox:
            lo, hi = self._rows(c)
            self._philox = {c: RowsPhilox(self.seeds[lo:hi], self.indices[lo:hi], self.shape)}
        return self._philox[c]

    def _torch_stream(self) -> tuple[np.ndarray, np.ndarray]:
        if self._torch is None:
            src = make_noise("torch", self.seed, self.m, self.shape, self.guided)
            first = src.initial()
            rest = (
                np.stack([src.step(k) for k in range(self.steps_total)]) if self.steps_total else first[None]
            )
            self._torch = (first, rest)
        return self._torch

    def initial(self, c: int) -> np.ndarray:
        lo, hi = self._rows(c)
        if self.kind == "torch":
            return pad_rows(self._torch_stream()[0][lo:hi], self.n)
        return pad_rows(self._philox_source(c).initial(), self.n)

    def steps(self, c: int, k0: int, k1: int) -> np.ndarray:
        """(k1 − k0, N, C, L, L) noise for steps k0..k1−1 of chunk c."""
        lo, hi = self._rows(c)
        out = np.zeros((k1 - k0, self.n, *self.shape), dtype=np.float32)
        if self.kind == "torch":
            out[:, : hi - lo] = self._torch_stream()[1][k0:k1, lo:hi]
        else:
            src = self._philox_source(c)
            for k in range(k0, k1):
                out[k - k0, : hi - lo] = src.step(k)
        return out
