"""The runtime sampler: drives the fused step graph, then the VAE graph, on any backend.

    s = Sampler.load("engines/DiT-XL-2-256-fp16-b4", backend="trt")
    res = s.generate(SampleRequest((207, 360, 387, 974), seed=0, cfg_scale=4.0, steps=250))
    res.latents, res.images                       # (4, 4, 32, 32), (4, 3, 256, 256) float in ≈[-1, 1]
    images = s.sample([207, 360], steps=50)        # convenience: (2, 256, 256, 3) uint8

The loop does no arithmetic: per step it binds the step's row of the timestep table, the
coefficient table and the noise table, runs `dit_step` from one latent buffer into the other,
and swaps the two (ping-pong). The multistep solvers' history (`schedule.STATE_NAMES`: inputs of
dit_step whose next values are its `<name>_next` outputs) is ping-ponged the same way, zeroed at
the start of each chunk. Which samplers a folder runs, their table layout, state and whether they
draw per-step noise come from the folder's record (`schedule.samplers` of the manifest plus the
`schedules --add` sidecar), never from a list here; samplers that draw no noise (the ODE ones)
draw only the initial latent and bind one zero noise row.
A request with `cache_interval` above 1 runs the forecast step cache (`runtime.step_cache`): per
step `dit_step_full` or `dit_step_forecast` with the cache buffers bound as well; interval 1 runs
`dit_step` exactly as without it.
Everything numeric happens inside the graph, so every backend runs the same math. Requests of
any size are cut into chunks of the engine batch N (the last one padded with label 0 and zero
noise; pad rows are discarded). Philox noise is keyed by the image's position in the request, so
any split gives the same images. Noise for a chunk is generated in blocks of steps before the
block runs, never inside the step loop.

numpy + the chosen backend only: importing this module never imports torch (`noise="torch"` and
the torch backend import it when used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dit_export.backends import canonical_backend
from dit_export.errors import UserError
from dit_export.export.manifest import Manifest
from dit_export.export.precision import check_backend
from dit_export.export.schedule_tables import FolderSchedules
from dit_export.images import to_uint8
from dit_export.runtime.backend import Backend, Buffer, as_manifest, make_backend
from dit_export.runtime.folder import ExportFolder
from dit_export.runtime.step_cache import CacheLayout, LoopCache, check_request
from dit_export.sampling.batch_noise import ChunkNoise, pad_rows
from dit_export.sampling.request import SampleRequest
from dit_export.sampling.schedule import STATE_NAMES, state_output

# Largest noise table held per chunk (host and backend memory); longer runs upload it in blocks.
MAX_NOISE_TABLE_BYTES = 256 << 20


@dataclass
class SampleResult:
    latents: np.ndarray  # (M, C, L, L) float32, final latents
    images: np.ndarray | None  # (M, 3, H, W) float32 in ≈[-1, 1], or None without a VAE / decode


class Sampler:
    """Class-conditional DiT sampling from an exported folder on one backend (ort, trt, torch, cpp).

    `generate(request)` is the entry point (`decode=False`: latents only); `generate_many` packs
    several requests into shared engine runs; `sample` is the convenience that builds the
    `SampleRequest` from keyword arguments and returns uint8 images.
    """

    def __init__(self, folder: Path, manifest: Manifest, backend: Backend) -> None:
        m = as_manifest(folder, manifest)
        self.folder, self.manifest, self.backend = Path(folder), m, backend
        self.model_name, self.num_classes = m.model.name, m.num_classes
        self.num_train_steps = m.schedule.num_train_steps
        # the samplers this folder supports and their stored tables: the manifest's record plus
        # the tables `schedules --add` stored beside it (hash-checked)
        self.schedules = FolderSchedules.of(self.folder, m)
        self.batch, self.image_size, self.precision = m.batch, m.image_size, m.precision
        self.latent_shape = (m.latent_channels, m.latent_size, m.latent_size)
        self._bufs: dict[str, Buffer] = {}
        self.cache_layout = CacheLayout.of(m)  # None: the folder has no forecast graphs

    @classmethod
    def load(
        cls,
        engines_dir: str | Path | ExportFolder,
        backend: str = "ort",
        providers: Sequence[str] | None = None,
        *,
        graphs: Sequence[str] | None = None,
        check_hashes: bool | None = None,
        cache: bool | None = None,
        **options,
    ) -> Sampler:
        """Read and check the manifest, then load the graphs (default: the step and the VAE).

        `cache`: load the forecast cache's two step graphs now (True), never (False), or (None, the
        default) on the first cached request where the backend can add graphs later (ort, torch:
        no memory for them until then) and now elsewhere (trt, cpp).

        `backend`: ort | trt | torch | cpp (or onnxruntime, tensorrt, pytorch). `providers`:
        onnxruntime providers for ort (default: CUDA when available, else CPU). `check_hashes`:
        re-hash the ONNX files (default on, except for trt, which checks its plan files). Other
        options go to the backend: trt `cuda_graph`; torch `mode` (fp32 | tf32 | fp16 | compile),
        `device`; ort `optimization`, `threads`; cpp `cpp_backend`, `threads`.
        """
        # One ExportFolder reads the manifest once (pass one in to share it: verify, build). The
        # graphs' real I/O is checked by the backend against what it loads (ORT session, TensorRT
        # engine), so the manifest reader need not open the ONNX files as well.
        export = ExportFolder.of(engines_dir)
        folder, manifest = export.path, export.manifest
        export.check_files()
        name = canonical_backend(backend)
        check_backend(manifest.precision, name)  # int8/fp8 graphs: who can run them (issue 22)
        if check_hashes if check_hashes is not None else name != "trt":
            export.verify_hashes()
        if graphs is None:
            eager = cache if cache is not None else name in ("trt", "cpp")
            graphs = export.sampling_graphs(cache=eager)
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
        return (
            f"{self.model_name} {self.image_size}px {self.precision} batch {self.batch} "
            f"on {self.backend.describe()}"
        )

    def request(self, labels: Sequence[int] | SampleRequest, **fields) -> SampleRequest:
        """A validated request for this export (labels below its class count, steps ≤ its chain)."""
        req = labels if isinstance(labels, SampleRequest) else SampleRequest(labels, **fields)  # type: ignore[arg-type]
        if isinstance(labels, SampleRequest) and fields:
            req = replace(req, **fields)
        return req.validate(self.num_classes, self.num_train_steps)

    def generate(
        self, request: SampleRequest, *, decode: bool = True, progress: bool = False
    ) -> SampleResult:
        """Final latents and (when `decode` and the export has a VAE) float images in ≈[-1, 1]."""
        req = self._checked(request)
        latents, images = self._generate(req, decode and self.has_vae, progress)
        return SampleResult(latents, images)

    def generate_many(
        self, requests: Sequence[SampleRequest], *, decode: bool = True, progress: bool = False
    ) -> list[SampleResult]:
        """One result per request, in order; rows of requests that share cfg scale, steps, sampler,
        cache settings and Philox noise are packed into shared engine runs (a server's concurrent
        requests). Each row keeps its own (seed, image index) noise, so every result equals
        `generate(request)`."""
        reqs = [self._checked(r) for r in requests]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            cache = (r.cache_interval, r.cache_order if r.cached else None)
            key = (r.cfg_scale, r.steps, r.sampler, cache) if r.noise == "philox" else ("alone", i)
            groups.setdefault(key, []).append(i)
        results: list[SampleResult | None] = [None] * len(reqs)
        for members in groups.values():
            first = reqs[members[0]]
            packed = replace(first, labels=sum((reqs[i].labels for i in members), ()), first_index=0)
            seeds = np.concatenate([np.full(len(reqs[i].labels), reqs[i].seed, np.uint64) for i in members])
            indices = np.concatenate(
                [reqs[i].first_index + np.arange(len(reqs[i].labels), dtype=np.int64) for i in members]
            )
            latents, images = self._generate(packed, decode and self.has_vae, progress, (seeds, indices))
            lo = 0
            for i in members:
                hi = lo + len(reqs[i].labels)
                results[i] = SampleResult(latents[lo:hi], None if images is None else images[lo:hi])
                lo = hi
        return [r for r in results if r is not None]

    def _checked(self, request: SampleRequest) -> SampleRequest:
        if not isinstance(request, SampleRequest):
            raise TypeError(
                f"generate takes a SampleRequest, got {type(request).__name__} (see Sampler.sample)"
            )
        req = request.validate(self.num_classes, self.num_train_steps)
        check_request(self.manifest, req)  # forecast graphs there, order within the export's
        return req

    def sample(
        self, labels: Sequence[int], *, return_latents: bool = False, progress: bool = False, **fields
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """uint8 images (M, H, W, 3) for M labels (and the final latents (M, C, L, L) on request).

        `fields`: the other `SampleRequest` fields (seed, cfg_scale, steps, sampler, noise,
        cache_interval, cache_order).
        """
        if not self.has_vae:
            raise UserError(
                "this export has no VAE decoder (exported with --vae none): use generate(request, decode=False)"
            )
        res = self.generate(self.request(labels, **fields), decode=True, progress=progress)
        assert res.images is not None
        images = to_uint8(res.images)
        return (images, res.latents) if return_latents else images

    def schedule(self, steps: int, sampler: str) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps int64 (S,), coefficient rows float32 (S, K)) of a sampler this folder records:
        its stored table (manifest or `schedules --add`), else the registry's rows in its layout."""
        return self.schedules.rows(sampler, int(steps))  # one line naming the fix when not supported

    def draws_noise(self, sampler: str) -> bool:
        """Whether `sampler` binds fresh noise at every step (the folder's record says)."""
        return self.schedules.draws_noise(sampler)

    def state_pairs(self) -> list[tuple[str, str]]:
        """(input, output) names of the solver-state tensors of this export's dit_step (maybe none)."""
        io = self.manifest.graph("dit_step")
        names = set(io.input_names)
        return [
            (n, state_output(n)) for n in STATE_NAMES if n in names and state_output(n) in io.output_names
        ]

    def close(self) -> None:
        self._bufs.clear()
        self.backend.close()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the loop (CppSampler overrides `_generate` with the C++ one) ---------------------------------
    def _generate(
        self,
        req: SampleRequest,
        decode: bool,
        progress: bool,
        rows: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        """(latents (M, C, L, L), images (M, 3, H, W) or None) for a validated request.

        `rows`: per-row (seeds, global image indices) of packed requests (`generate_many`);
        default: the request's seed and first_index + i."""
        labels = np.asarray(req.labels, dtype=np.int64)
        if rows is None:
            rows = (
                np.full(len(labels), req.seed, dtype=np.uint64),
                req.first_index + np.arange(len(labels), dtype=np.int64),
            )
        timesteps, coefs = self.schedule(req.steps, req.sampler)
        num_steps, n, m = len(timesteps), self.batch, len(labels)
        chunks = -(-m // n)
        ode = not self.draws_noise(req.sampler)  # only the initial latent is drawn
        src = ChunkNoise(req.noise, *rows, n, self.latent_shape, req.guided, 0 if ode else num_steps)
        be = self.backend
        block = max(1, min(num_steps, MAX_NOISE_TABLE_BYTES // (n * math.prod(self.latent_shape) * 4)))
        # the cache first: its memory check comes before anything else is allocated
        cache = (
            LoopCache(be, self.manifest, req, num_steps, self._buf, held=set(self._bufs))
            if req.cached
            else None
        )
        b = self._buffers(num_steps, 1 if ode else block, decode)
        be.write(b["t"], np.repeat(timesteps[:, None], n, axis=1))
        be.write(b["coef"], coefs)
        # Exactly 1.0 at cfg 1: the graph then selects the conditional ε (no guidance arithmetic).
        be.write(b["guidance"], np.array([1.0 if req.cfg_scale == 1.0 else req.cfg_scale], dtype=np.float32))

        latents = np.empty((m, *self.latent_shape), dtype=np.float32)
        images = None
        desc = f"{be.name} {req.sampler} {num_steps} steps"
        with tqdm(total=num_steps * chunks, desc=desc, unit="step", disable=not progress) as bar:
            for c in range(chunks):
                lo, hi = c * n, min(m, (c + 1) * n)
                be.write(b["y"], pad_rows(labels[lo:hi], n))  # pad rows: label 0, discarded
                final = self._chunk(c, src, num_steps, block, b, bar, ode=ode, cache=cache)
                assert isinstance(final, Buffer)
                lat = be.read(final)[: hi - lo]
                if not np.isfinite(lat).all():
                    self._report_nonfinite(
                        c, src, num_steps, block, b, timesteps, lo, hi, req.seed, ode, cache
                    )
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
        return latents, images

    # -- internals ---------------------------------------------------------------------------------
    def _coef_shape(self) -> tuple[int, ...]:
        return self.manifest.graph("dit_step").spec("coef").shape

    def _vae_out_shape(self) -> tuple[int, ...]:
        return self.manifest.graph("vae_decoder").outputs[0].shape

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
        b = {
            "x0": self._buf("x0", lat, "float32"),
            "x1": self._buf("x1", lat, "float32"),
            "y": self._buf("y", (n,), "int64"),
            "guidance": self._buf("guidance", (1,), "float32"),
            "t": self._buf("t", (steps, n), "int64", table=True),
            "coef": self._buf("coef", (steps, *self._coef_shape()), "float32", table=True),
            "noise": self._buf("noise", (block, *lat), "float32", table=True),
        }
        for name, _ in self.state_pairs():
            b[name + ":0"] = self._buf(name + ":0", lat, "float32")
            b[name + ":1"] = self._buf(name + ":1", lat, "float32")
        if decode:
            b["image"] = self._buf("image", self._vae_out_shape(), "float32")
        return b

    def _chunk(
        self,
        c: int,
        src: ChunkNoise,
        steps: int,
        block: int,
        b: dict[str, Buffer],
        bar,
        watch: int | None = None,
        ode: bool = False,
        cache: LoopCache | None = None,
    ) -> Buffer | int | None:
        """Run the whole step loop for chunk c; returns the buffer holding the final latents.

        With `watch` = number of real rows, reads the latents after every step instead and returns
        the first step whose output is not finite (None when none is): the slow path used only to
        name the step after a non-finite result. `ode`: bind one zero noise row (ODE samplers).
        `cache`: the forecast cache of a cached request (picks the graph per step).
        """
        be = self.backend
        be.write(b["x0"], src.initial(c))
        cur, nxt = b["x0"], b["x1"]
        state = self.state_pairs()
        zeros = np.zeros((self.batch, *self.latent_shape), dtype=np.float32)
        for name, _ in state:  # the history starts at zero (0 · stale memory could be NaN)
            be.write(b[name + ":0"], zeros)
        if cache is not None:
            cache.start()
        if ode:  # per-step noise is never used: one zero row, bound at every step
            block = steps
            be.write(b["noise"], zeros[None])
        for k0 in range(0, steps, block):
            k1 = min(steps, k0 + block)
            if not ode:
                be.write(b["noise"], src.steps(c, k0, k1))
            for k in range(k0, k1):
                io = {
                    "x": cur,
                    "t": b["t"].row(k),
                    "y": b["y"],
                    "noise": b["noise"].row(0 if ode else k - k0),
                    "guidance": b["guidance"],
                    "coef": b["coef"].row(k),
                    "x_next": nxt,
                }
                side = k % 2  # every state pair swaps with the latent
                for name, out in state:
                    io[name], io[out] = b[f"{name}:{side}"], b[f"{name}:{1 - side}"]
                graph = "dit_step" if cache is None else cache.bind(k, io)
                be.run(graph, io)
                if cache is not None:
                    cache.after(k)
                cur, nxt = nxt, cur
                if watch is not None and not np.isfinite(be.read(cur)[:watch]).all():
                    return k
            if bar is not None:
                bar.update(k1 - k0)
        return None if watch is not None else cur

    def _report_nonfinite(
        self, c, src, steps, block, b, timesteps, lo, hi, seed, ode=False, cache=None
    ) -> None:
        """Re-run the chunk step by step to name the first step that produced NaN/Inf; raises."""
        k = self._chunk(c, src, steps, block, b, None, watch=hi - lo, ode=ode, cache=cache)
        where = f"images {lo}..{hi - 1}, seed {seed}"
        if isinstance(k, int):
            graph = "dit_step" if cache is None else cache.plan.graph(k)
            raise UserError(
                f"{self.backend.describe()}: NaN/Inf in the {graph} output first at step {k + 1}/{steps} "
                f"(t={int(timesteps[k])}; {where})"
            )
        raise UserError(
            f"{self.backend.describe()}: NaN/Inf in the final latents ({where}), but not when the loop "
            "was re-run step by step: the backend is not deterministic"
        )
