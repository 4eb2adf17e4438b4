"""The runtime sampler: drives the fused step graph, then the VAE graph, on any backend.

    s = Sampler.load("engines/DiT-XL-2-256-fp16-b4", backend="trt")
    images = s.sample([207, 360, 387, 974], seed=0, cfg_scale=4.0, steps=250)   # (4, 256, 256, 3) uint8

The loop does no arithmetic: per step it binds the step's row of the timestep table, the
coefficient table and the noise table, runs `dit_step` from one latent buffer into the other,
and swaps the two (ping-pong). Everything numeric happens inside the graph, so every backend runs
the same math. Requests of any size are cut into chunks of the engine batch N (the last one
padded with label 0 and zero noise; pad rows are discarded). Philox noise is keyed by the image's
position in the request, so any split gives the same images. Noise for a chunk is generated in
blocks of steps before the block runs, never inside the step loop.

numpy + the chosen backend only: importing this module never imports torch (`noise="torch"` and
the torch backend import it when used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.runtime.backend import Backend, Buffer, canonical_backend, make_backend
from dit_export.sampling.noise import NOISE_KINDS, make_noise
from dit_export.sampling.schedule import SAMPLERS, make_schedule

# Largest noise table held per chunk (host and backend memory); longer runs upload it in blocks.
MAX_NOISE_TABLE_BYTES = 256 << 20
# torch noise must draw the official stream for the whole request up front (it is sequential).
MAX_TORCH_NOISE_BYTES = 4 << 30


@dataclass
class SampleResult:
    latents: np.ndarray  # (M, C, L, L) float32, final latents
    images: np.ndarray | None  # (M, 3, H, W) float32 in ≈[-1, 1], or None without a VAE / decode


class _ChunkNoise:
    """Initial latents and per-step noise for chunk c of a request, padded to the engine batch."""

    def __init__(
        self, kind: str, seed: int, m: int, n: int, shape: tuple[int, ...], guided: bool, steps: int
    ):
        if kind not in NOISE_KINDS:
            raise UserError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
        self.kind, self.seed, self.m, self.n, self.shape, self.guided = kind, seed, m, n, shape, guided
        self._philox: dict[int, object] = {}
        self._torch: tuple[np.ndarray, np.ndarray] | None = None
        if kind == "torch":
            need = (steps + 1) * m * math.prod(shape) * 4
            if need > MAX_TORCH_NOISE_BYTES:
                raise UserError(
                    f"torch noise for {m} images × {steps} steps needs {need / 2**30:.1f} GiB up front "
                    "(it is one sequential stream); use philox noise or fewer images per call"
                )
            self.steps_total = steps
        else:
            make_noise("philox", seed, m, shape, guided)  # validate the seed and indices now

    def _rows(self, c: int) -> tuple[int, int]:
        return c * self.n, min(self.m, (c + 1) * self.n)

    def _pad(self, a: np.ndarray) -> np.ndarray:
        out = np.zeros((self.n, *self.shape), dtype=np.float32)
        out[: a.shape[0]] = a
        return out

    def _philox_source(self, c: int):
        if c not in self._philox:
            lo, hi = self._rows(c)
            self._philox = {
                c: make_noise("philox", self.seed, hi - lo, self.shape, self.guided, first_image=lo)
            }
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
            return self._pad(self._torch_stream()[0][lo:hi])
        return self._pad(self._philox_source(c).initial())

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


class Sampler:
    """Class-conditional DiT sampling from an exported folder on one backend (ort, trt or torch)."""

    def __init__(self, folder: Path, manifest: dict, backend: Backend) -> None:
        self.folder, self.manifest, self.backend = Path(folder), manifest, backend
        self.batch = int(manifest["batch"])
        c, size = int(manifest["latent_channels"]), int(manifest["latent_size"])
        self.latent_shape = (c, size, size)
        self.image_size = int(manifest["image_size"])
        self.precision = str(manifest["precision"])
        self.num_classes = int(manifest["model"]["config"]["num_classes"])
        self._bufs: dict[str, Buffer] = {}

    @classmethod
    def load(
        cls,
        engines_dir: str | Path,
        backend: str = "ort",
        providers: Sequence[str] | None = None,
        *,
        graphs: Sequence[str] | None = None,
        check_hashes: bool | None = None,
        **options,
    ) -> Sampler:
        """Read and check the manifest, then load the graphs (default: the step and the VAE).

        `providers`: onnxruntime providers for the ort backend (default: CUDA when available, else
        CPU). `check_hashes`: re-hash the ONNX files (default on for ort and torch; the trt backend
        checks its plan files instead). Other options go to the backend (trt: `cuda_graph`).
        """
        from dit_export.export.manifest import read_manifest, verify_hashes

        folder = Path(engines_dir)
        manifest = read_manifest(folder)
        name = canonical_backend(backend)
        if check_hashes if check_hashes is not None else name != "trt":
            verify_hashes(folder, manifest)
        if graphs is None:
            graphs = ["dit_step"] + (["vae_decoder"] if manifest["graphs"].get("vae_decoder") else [])
        if providers:
            if name != "ort":
                raise UserError("providers apply to the ort backend only")
            options["providers"] = list(providers)
        return cls(folder, manifest, make_backend(name, folder, manifest, graphs, **options))

    # -- public API ------------------------------------------------------------------------------
    @property
    def has_vae(self) -> bool:
        return self.backend.has_graph("vae_decoder")

    def describe(self) -> str:
        m = self.manifest
        return (
            f"{m['model']['name']} {m['image_size']}px {m['precision']} batch {self.batch} "
            f"on {self.backend.describe()}"
        )

    def sample(
        self,
        class_labels: Sequence[int],
        seed: int = 0,
        cfg_scale: float = 4.0,
        steps: int = 250,
        sampler: str = "ddpm",
        noise: str = "philox",
        return_latents: bool = False,
        progress: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """uint8 images (M, H, W, 3) for M labels (and the final latents (M, C, L, L) on request)."""
        from dit_export.images import to_uint8

        if not self.has_vae:
            raise UserError("this export has no VAE decoder (exported with --vae none): use sample_latents()")
        res = self.generate(
            class_labels, seed, cfg_scale, steps, sampler, noise, decode=True, progress=progress
        )
        assert res.images is not None
        images = to_uint8(res.images)
        return (images, res.latents) if return_latents else images

    def sample_latents(
        self,
        class_labels: Sequence[int],
        seed: int = 0,
        cfg_scale: float = 4.0,
        steps: int = 250,
        sampler: str = "ddpm",
        noise: str = "philox",
        progress: bool = True,
    ) -> np.ndarray:
        """Final latents (M, C, L, L) float32, without decoding."""
        return self.generate(
            class_labels, seed, cfg_scale, steps, sampler, noise, decode=False, progress=progress
        ).latents

    def generate(
        self,
        class_labels: Sequence[int],
        seed: int = 0,
        cfg_scale: float = 4.0,
        steps: int = 250,
        sampler: str = "ddpm",
        noise: str = "philox",
        *,
        decode: bool = True,
        progress: bool = True,
    ) -> SampleResult:
        """Final latents and (when `decode` and the export has a VAE) float images in ≈[-1, 1]."""
        labels = self._check_request(class_labels, cfg_scale)
        timesteps, coefs = self.schedule(steps, sampler)
        num_steps, n, m = len(timesteps), self.batch, len(labels)
        chunks = -(-m // n)
        src = _ChunkNoise(noise, int(seed), m, n, self.latent_shape, cfg_scale > 1.0, num_steps)
        be = self.backend
        decode = decode and self.has_vae
        block = max(1, min(num_steps, MAX_NOISE_TABLE_BYTES // (n * math.prod(self.latent_shape) * 4)))
        b = self._buffers(num_steps, block, decode)
        be.write(b["t"], np.repeat(timesteps[:, None], n, axis=1))
        be.write(b["coef"], coefs)
        # Exactly 1.0 at cfg 1: the graph then selects the conditional ε (no guidance arithmetic).
        be.write(b["guidance"], np.array([1.0 if cfg_scale == 1.0 else cfg_scale], dtype=np.float32))

        latents = np.empty((m, *self.latent_shape), dtype=np.float32)
        images = None
        from tqdm import tqdm

        bar = tqdm(
            total=num_steps * chunks,
            desc=f"{be.name} {sampler} {num_steps} steps",
            unit="step",
            disable=not progress,
        )
        try:
            for c in range(chunks):
                lo, hi = c * n, min(m, (c + 1) * n)
                y = np.zeros(n, dtype=np.int64)  # pad rows: label 0, discarded
                y[: hi - lo] = labels[lo:hi]
                be.write(b["y"], y)
                final = self._chunk(c, src, num_steps, block, b, bar)
                assert isinstance(final, Buffer)
                lat = be.read(final)[: hi - lo]
                if not np.isfinite(lat).all():
                    self._report_nonfinite(c, src, num_steps, block, b, timesteps, lo, hi, seed)
                latents[lo:hi] = lat
                if decode:
                    be.run("vae_decoder", {"latent": final, "image": b["image"]})
                    img = be.read(b["image"])[: hi - lo]
                    if not np.isfinite(img).all():
                        raise UserError(
                            f"{be.describe()}: NaN/Inf in the vae_decoder output for images {lo}..{hi - 1} "
                            f"(the latents were finite)"
                        )
                    if images is None:
                        images = np.empty((m, *img.shape[1:]), dtype=np.float32)
                    images[lo:hi] = img
        finally:
            bar.close()
        return SampleResult(latents, images)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Float images (M, 3, H, W) for latents (M, C, L, L), in chunks of the engine batch."""
        if not self.has_vae:
            raise UserError("this export has no VAE decoder (exported with --vae none)")
        lat = np.asarray(latents, dtype=np.float32)
        if lat.shape[1:] != self.latent_shape:
            raise UserError(f"latents have shape {lat.shape[1:]}, this export takes {self.latent_shape}")
        n, be = self.batch, self.backend
        inp = self._buf("latent_in", (n, *self.latent_shape), "float32")
        out = self._buf("image", graph_out_shape(self.manifest, "vae_decoder"), "float32")
        result = []
        for lo in range(0, len(lat), n):
            chunk = np.zeros((n, *self.latent_shape), dtype=np.float32)
            chunk[: len(lat[lo : lo + n])] = lat[lo : lo + n]
            be.write(inp, chunk)
            be.run("vae_decoder", {"latent": inp, "image": out})
            result.append(be.read(out)[: len(lat[lo : lo + n])])
        return (
            np.concatenate(result)
            if result
            else np.empty((0, 3, self.image_size, self.image_size), np.float32)
        )

    def schedule(self, steps: int, sampler: str) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps int64 (S,), coefficient rows float32 (S, K)): stored in the manifest, else computed."""
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if int(steps) < 1:
            raise UserError(f"steps must be ≥ 1, got {steps}")
        entry = self.manifest["schedule"]["tables"].get(sampler, {}).get(str(int(steps)))
        if entry is not None:
            ts = np.asarray(entry["timesteps"], dtype=np.int64)
            coefs = np.asarray(entry["coefs"], dtype=np.float32)
        else:
            s = make_schedule(int(steps), sampler)
            ts, coefs = s.timesteps, s.coefs
        want = graph_in_shape(self.manifest, "dit_step", "coef")
        if coefs.shape[1:] != want:
            raise UserError(f"schedule rows have {coefs.shape[1]} values, dit_step takes coef {want}")
        return ts, coefs

    def close(self) -> None:
        self._bufs.clear()
        self.backend.close()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------
    def _check_request(self, class_labels: Sequence[int], cfg_scale: float) -> np.ndarray:
        labels = np.asarray(list(class_labels), dtype=np.int64).reshape(-1)
        if labels.size == 0:
            raise UserError("no class labels given")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise UserError(
                f"class id {bad[0]} is out of range: this model has classes 0..{self.num_classes - 1}"
            )
        if not (math.isfinite(cfg_scale) and cfg_scale >= 1.0):
            raise UserError(f"cfg scale must be ≥ 1 (1 = no guidance), got {cfg_scale}")
        return labels

    def _buf(self, key: str, shape: Sequence[int], dtype: str, table: bool = False) -> Buffer:
        """Allocate once; reallocate only when a table must grow (more steps than before)."""
        shape = tuple(int(d) for d in shape)
        have = self._bufs.get(key)
        if have is not None and tuple(have.shape[1:]) == shape[1:] and have.shape[0] >= shape[0]:
            return have
        buf = self.backend.alloc(shape, dtype, table=table)
        self._bufs[key] = buf
        return buf

    def _buffers(self, steps: int, block: int, decode: bool) -> dict[str, Buffer]:
        n, lat = self.batch, (self.batch, *self.latent_shape)
        k = graph_in_shape(self.manifest, "dit_step", "coef")
        b = {
            "x0": self._buf("x0", lat, "float32"),
            "x1": self._buf("x1", lat, "float32"),
            "y": self._buf("y", (n,), "int64"),
            "guidance": self._buf("guidance", (1,), "float32"),
            "t": self._buf("t", (steps, n), "int64", table=True),
            "coef": self._buf("coef", (steps, *k), "float32", table=True),
            "noise": self._buf("noise", (block, *lat), "float32", table=True),
        }
        if decode:
            b["image"] = self._buf("image", graph_out_shape(self.manifest, "vae_decoder"), "float32")
        return b

    def _chunk(
        self,
        c: int,
        src: _ChunkNoise,
        steps: int,
        block: int,
        b: dict[str, Buffer],
        bar,
        watch: int | None = None,
    ) -> Buffer | int | None:
        """Run the whole step loop for chunk c; returns the buffer holding the final latents.

        With `watch` = number of real rows, reads the latents after every step instead and returns
        the first step whose output is not finite (None when none is): the slow path used only to
        name the step after a non-finite result.
        """
        be = self.backend
        be.write(b["x0"], src.initial(c))
        cur, nxt = b["x0"], b["x1"]
        for k0 in range(0, steps, block):
            k1 = min(steps, k0 + block)
            be.write(b["noise"], src.steps(c, k0, k1))
            for k in range(k0, k1):
                be.run(
                    "dit_step",
                    {
                        "x": cur,
                        "t": b["t"].row(k),
                        "y": b["y"],
                        "noise": b["noise"].row(k - k0),
                        "guidance": b["guidance"],
                        "coef": b["coef"].row(k),
                        "x_next": nxt,
                    },
                )
                cur, nxt = nxt, cur
                if watch is not None and not np.isfinite(be.read(cur)[:watch]).all():
                    return k
            if bar is not None:
                bar.update(k1 - k0)
        return None if watch is not None else cur

    def _report_nonfinite(self, c, src, steps, block, b, timesteps, lo, hi, seed) -> None:
        """Re-run the chunk step by step to name the first step that produced NaN/Inf; raises."""
        k = self._chunk(c, src, steps, block, b, None, watch=hi - lo)
        where = f"images {lo}..{hi - 1}, seed {seed}"
        if isinstance(k, int):
            raise UserError(
                f"{self.backend.describe()}: NaN/Inf in the dit_step output first at step {k + 1}/{steps} "
                f"(t={int(timesteps[k])}; {where})"
            )
        raise UserError(
            f"{self.backend.describe()}: NaN/Inf in the final latents ({where}), but not when the loop "
            "was re-run step by step: the backend is not deterministic"
        )


def graph_in_shape(manifest: dict, graph: str, name: str) -> tuple[int, ...]:
    for t in manifest["graphs"][graph]["inputs"]:
        if t["name"] == name:
            return tuple(int(d) for d in t["shape"])
    raise UserError(f"manifest: graph {graph} has no input {name!r}")


def graph_out_shape(manifest: dict, graph: str) -> tuple[int, ...]:
    g = manifest["graphs"].get(graph)
    if g is None:
        raise UserError(f"this export has no graph {graph!r}")
    return tuple(int(d) for d in g["outputs"][0]["shape"])
