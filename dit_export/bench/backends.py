"""What each `bench` backend is, whether it can run here, and how its stages are called.

Two families:

- ``torch-*``: the PyTorch reference model (official-equivalent DiT, eager unless compiled) and
  the `SamplerStep` / `VAEDecode` modules, run directly so that the precision settings are the
  ones a user of the official code would pick:
  fp32 (TF32 off), tf32 (TF32 on for matmul and cuDNN, as the official ``sample.py`` sets),
  fp16 (``torch.autocast`` float16), compile (``torch.compile`` of the DiT and the VAE; fp16
  autocast on a GPU, fp32 on a CPU).
- runtime backends (``ort``, ``ort-fp16``, ``trt``, ``trt-fp32``): an exported folder per batch
  and precision, run through the runtime's `Backend` interface for single graphs and through
  `Sampler.generate` for the whole sample, exactly as a user of the runtime would.

Every runner offers the same stages: the denoiser forward (``dit``: 2N rows, the guided
batch), one fused step (``dit_step``: N images, guidance inside), the VAE decode, and a whole
sample (steps × step + decode, with noise generation and the loop's own overhead).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dit_export.bench.timing import (
    Clock,
    CpuClock,
    CudartEventClock,
    PeakRss,
    TorchEventClock,
    cuda_used_bytes,
)
from dit_export.errors import UserError

if TYPE_CHECKING:
    from dit_export.runtime.sampler import Sampler

GUIDANCE = 4.0  # the official sample.py scale; guided steps run 2N rows
MID_STEP_T = 500


@dataclass(frozen=True)
class BackendSpec:
    name: str
    family: str  # "torch" | "ort" | "trt"
    precision: str  # fp32 | tf32 | fp16 | compile (torch) ; fp32 | fp16 (exports)
    summary: str


SPECS: dict[str, BackendSpec] = {
    s.name: s
    for s in (
        BackendSpec("torch-fp32", "torch", "fp32", "PyTorch eager, fp32, TF32 off"),
        BackendSpec(
            "torch-tf32", "torch", "tf32", "PyTorch eager, fp32 with TF32 matmul/cuDNN (official sample.py)"
        ),
        BackendSpec("torch-fp16", "torch", "fp16", "PyTorch eager, torch.autocast float16"),
        BackendSpec("torch-compile", "torch", "compile", "torch.compile (inductor) of the DiT and the VAE"),
        BackendSpec("ort", "ort", "fp32", "ONNX Runtime, fp32 export"),
        BackendSpec("ort-fp16", "ort", "fp16", "ONNX Runtime, mixed-fp16 export"),
        BackendSpec("trt", "trt", "fp16", "TensorRT, mixed-fp16 strongly typed engines, CUDA graph steps"),
        BackendSpec("trt-fp32", "trt", "fp32", "TensorRT, fp32 export (TF32 allowed), CUDA graph steps"),
    )
}
DEFAULT_BACKENDS = ("torch-fp32", "torch-tf32", "torch-fp16", "torch-compile", "ort", "ort-fp16", "trt")
# --quick: one export precision (each export costs ~20 s of CPU even for S/8)
QUICK_BACKENDS = ("torch-fp32", "torch-tf32", "torch-fp16", "torch-compile", "ort", "trt")
BASELINE = "torch-fp32"


def parse_backends(names: list[str]) -> list[BackendSpec]:
    out: list[BackendSpec] = []
    for n in names:
        spec = SPECS.get(n.strip().lower())
        if spec is None:
            raise UserError(f"unknown bench backend {n!r}; choose from {', '.join(SPECS)}")
        if spec not in out:
            out.append(spec)
    return out


@dataclass
class Env:
    """What this machine offers; `device` is where the torch backends run."""

    device: str  # "cuda" | "cpu"
    quick: bool
    torch_version: str


def skip_reason(spec: BackendSpec, env: Env) -> str | None:
    """Why `spec` cannot run here, or None. Checked before anything is exported or loaded."""
    if spec.family == "torch":
        if spec.precision == "tf32" and env.device != "cuda":
            return f"TF32 is a CUDA tensor-core math mode; torch {env.torch_version} sees no CUDA device"
        if spec.precision == "compile" and env.quick:
            return "--quick: torch.compile takes longer to compile than the whole quick run may"
        if spec.precision == "fp16" and env.device == "cpu" and env.quick:
            from dit_export.bench.machine import cpu_has_fp16_math

            if not cpu_has_fp16_math():
                return (
                    "--quick: float16 autocast on a CPU without fp16 math units converts every op "
                    "(seconds per VAE call); run without --quick to measure it anyway"
                )
        return None
    if spec.family == "ort":
        try:
            import onnxruntime  # noqa: F401
        except ModuleNotFoundError:
            return "onnxruntime is not installed (pip install 'dit_export[export]')"
        return None
    from dit_export.engine import trt_api

    ok, why = trt_api.probe()
    return None if ok else why


def runtime_device(spec: BackendSpec) -> str:
    """Where a runtime backend will run: trt on the GPU; ort on CUDA when onnxruntime-gpu has it."""
    if spec.family == "trt":
        return "cuda"
    from dit_export.runtime.ort_backend import default_providers

    return "cuda" if default_providers()[0] == "CUDAExecutionProvider" else "cpu"


# ------------------------------------------------------------------------------ measured stages


@dataclass
class Stage:
    """A callable that launches one unit of work, and the clock that times it."""

    fn: Callable[[], None]
    clock: Clock


class Runner:
    """One backend at one batch: `open(batch)` then stages, `close()`."""

    spec: BackendSpec
    device: str = "cpu"
    info: dict

    def open(self, batch: int) -> None:
        raise NotImplementedError

    def denoiser(self) -> Stage:
        raise NotImplementedError

    def step(self) -> Stage:
        raise NotImplementedError

    def step_variants(self) -> dict[str, Stage]:
        """Extra step timings (e.g. TensorRT without CUDA graphs), by name."""
        return {}

    def vae(self) -> Stage | None:
        raise NotImplementedError

    def sample(self, steps: int) -> Stage:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for all work this runner launched (a no-op for synchronous backends)."""

    def memory_begin(self) -> None:
        self._rss = PeakRss() if self.device == "cpu" else None
        self._dev_base = cuda_used_bytes() if self.device == "cuda" else None
        self._dev_peak = self._dev_base

    def memory_sample(self) -> None:
        if self.device == "cuda":
            now = cuda_used_bytes()
            if now is not None:
                self._dev_peak = max(self._dev_peak or 0, now)

    def memory_end(self) -> dict:
        if self._rss is not None:
            peak = self._rss.peak()
            base = self._rss.baseline
            return {
                "kind": "peak RSS",
                "method": self._rss.kind,
                "peak_bytes": peak,
                "baseline_bytes": base,
                "delta_bytes": None if peak is None or base is None else max(0, peak - base),
            }
        self.memory_sample()
        return {
            "kind": "device memory in use",
            "method": "cudaMemGetInfo (whole GPU), sampled after each stage",
            "peak_bytes": self._dev_peak,
            "baseline_bytes": self._dev_base,
            "delta_bytes": None
            if self._dev_peak is None or self._dev_base is None
            else max(0, self._dev_peak - self._dev_base),
        }

    def close(self) -> None:
        """Free what `open` allocated."""


# ------------------------------------------------------------------------------ torch


class TorchModels:
    """The reference DiT and VAE decoder, loaded once and shared by every torch backend."""

    def __init__(self, load_model: Callable[[], tuple], load_vae: Callable[[], Any], device: str):
        import torch

        self.device = torch.device(device)
        model, cfg = load_model()
        self.cfg = cfg
        self.model = model.eval().requires_grad_(False).to(self.device)
        vae = load_vae()
        self.vae = None if vae is None else vae.eval().requires_grad_(False).to(self.device)

    def set_attention(self, sdpa: bool) -> None:
        self.model.set_fused_attention(sdpa)
        if self.vae is not None:
            self.vae.set_fused_attention(True)  # diffusers' default processor (SDPA)

    def close(self) -> None:
        import torch

        self.model = self.vae = None  # type: ignore[assignment]
        torch._dynamo.reset()  # compiled graphs hold the modules (and their device memory)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class TorchRunner(Runner):
    def __init__(self, spec: BackendSpec, models: TorchModels, sdpa: bool, compile_mode: str) -> None:
        import torch

        self.spec, self.models, self.sdpa, self.compile_mode = spec, models, sdpa, compile_mode
        self.torch = torch
        self.device = models.device.type
        self.gpu = self.device == "cuda"
        p = spec.precision
        self.fp16 = p == "fp16" or (p == "compile" and self.gpu)
        self.tf32 = p == "tf32" or (p == "compile" and self.gpu)
        attention = "SDPA (F.scaled_dot_product_attention)" if sdpa else "explicit matmul + softmax"
        if p == "fp16" and not self.gpu:
            from dit_export.bench.machine import cpu_has_fp16_math

            math = (
                "this CPU has AVX512-FP16/AMX-FP16"
                if cpu_has_fp16_math()
                else "this CPU has no fp16 math units: kernels convert to/from fp32, so expect it to be slower"
            )
            precision = f"CPU torch.autocast float16 ({math}); not a deployment option"
        elif p == "compile":
            precision = (
                f"torch.compile(mode={compile_mode!r}) with fp16 autocast and TF32"
                if self.gpu
                else f"torch.compile(mode={compile_mode!r}), fp32"
            )
        else:
            precision = {
                "fp32": "fp32, TF32 off (torch.backends.cuda.matmul/cudnn.allow_tf32 = False)"
                if self.gpu
                else "fp32",
                "tf32": "fp32 storage, TF32 matmul and cuDNN (allow_tf32 = True), as the official sample.py",
                "fp16": "torch.autocast(float16), fp32 weights",
            }[p]
        self.info = {
            "engine": f"torch {torch.__version__} eager" if p != "compile" else f"torch {torch.__version__}",
            "device": torch.cuda.get_device_name(0) if self.gpu else "CPU",
            "precision": precision,
            "attention": attention,
            "threads": None if self.gpu else torch.get_num_threads(),
            "model": "dit_export DiT (official-equivalent state dict and math), VAEDecode(diffusers AutoencoderKL)",
        }
        self._compiled: dict[str, object] = {}

    # -- context -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _mode(self) -> Iterator[None]:
        torch = self.torch
        with torch.inference_mode():
            if self.fp16:
                with torch.autocast(device_type=self.device, dtype=torch.float16):
                    yield
            else:
                yield

    def _set_math(self) -> None:
        if self.gpu:
            self.torch.backends.cuda.matmul.allow_tf32 = self.tf32
            self.torch.backends.cudnn.allow_tf32 = self.tf32

    def _modules(self):
        from dit_export.sampling.step import SamplerStep

        model, vae = self.models.model, self.models.vae
        if self.spec.precision == "compile":
            if "model" not in self._compiled:
                self._compiled["model"] = self.torch.compile(model, mode=self.compile_mode, dynamic=False)
                self._compiled["vae"] = (
                    None if vae is None else self.torch.compile(vae, mode=self.compile_mode, dynamic=False)
                )
            model, vae = self._compiled["model"], self._compiled["vae"]
        return model, SamplerStep(model, guided=True).eval(), vae  # type: ignore[arg-type]

    def _clock(self) -> Clock:
        if self.gpu:
            return TorchEventClock()
        return CpuClock()

    def sync(self) -> None:
        if self.gpu:
            self.torch.cuda.synchronize()

    # -- stages --------------------------------------------------------------------------------
    def open(self, batch: int) -> None:
        self.models.set_attention(self.sdpa)
        self._set_math()
        # Inputs are inference tensors like everything the loop makes, so a compiled module's
        # guards (which include the dispatch keys) match in every stage: no recompilation.
        with self.torch.inference_mode():
            self._inputs(batch)
        self.model, self.step_mod, self.vae_mod = self._modules()

    def _inputs(self, batch: int) -> None:
        torch = self.torch
        cfg = self.models.cfg
        self.n = n = batch
        dev = self.models.device
        g = torch.Generator(device="cpu").manual_seed(0)
        c, size = cfg.in_channels, cfg.input_size
        self.labels = torch.randint(0, cfg.num_classes, (n,), generator=g)
        y2 = torch.cat([self.labels, torch.full((n,), cfg.null_class)])
        self.dit_in = (
            torch.randn(2 * n, c, size, size, generator=g).to(dev),
            torch.full((2 * n,), MID_STEP_T, dtype=torch.int64, device=dev),
            y2.to(dev),
        )
        from dit_export.sampling.schedule import make_schedule

        sched = make_schedule(50, "ddpm")
        mid = len(sched.timesteps) // 2
        self.step_in = (
            torch.randn(n, c, size, size, generator=g).to(dev),
            torch.full((n,), int(sched.timesteps[mid]), dtype=torch.int64, device=dev),
            self.labels.to(dev),
            torch.randn(n, c, size, size, generator=g).to(dev),
            torch.tensor([GUIDANCE], dtype=torch.float32, device=dev),
            torch.from_numpy(sched.coefs[mid]).to(dev),
        )
        self.vae_in = torch.randn(n, c, size, size, generator=g).to(dev)

    def denoiser(self) -> Stage:
        model, args = self.model, self.dit_in

        def fn() -> None:
            with self._mode():
                model(*args)

        return Stage(fn, self._clock())

    def step(self) -> Stage:
        step, args = self.step_mod, self.step_in

        def fn() -> None:
            with self._mode():
                step(*args)

        return Stage(fn, self._clock())

    def vae(self) -> Stage | None:
        if self.vae_mod is None:
            return None
        vae, z = self.vae_mod, self.vae_in

        def fn() -> None:
            with self._mode():
                vae(z)

        return Stage(fn, self._clock())

    def sample(self, steps: int) -> Stage:
        """The official loop shape: fresh noise every step (drawn on the device), then decode."""
        from dit_export.sampling.schedule import make_schedule

        torch = self.torch
        sched = make_schedule(steps, "ddpm")
        dev = self.models.device
        n, cfg = self.n, self.models.cfg
        shape = (n, cfg.in_channels, cfg.input_size, cfg.input_size)
        with torch.inference_mode():
            ts = [torch.full((n,), int(t), dtype=torch.int64, device=dev) for t in sched.timesteps]
            coefs = torch.from_numpy(sched.coefs).to(dev)
            y = self.labels.to(dev)
            guidance = torch.tensor([GUIDANCE], dtype=torch.float32, device=dev)
        step, vae = self.step_mod, self.vae_mod
        gen = torch.Generator(device=dev)

        def fn() -> None:
            gen.manual_seed(0)
            with self._mode():
                x = torch.randn(shape, generator=gen, device=dev)
                for k in range(len(ts)):
                    noise = torch.randn(shape, generator=gen, device=dev)
                    x = step(x, ts[k], y, noise, guidance, coefs[k])
                if vae is not None:
                    vae(x.float())

        sync = torch.cuda.synchronize if self.gpu else None
        return Stage(fn, TorchEventClock() if self.gpu else CpuClock(sync))

    def memory_begin(self) -> None:
        super().memory_begin()
        if self.gpu:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self._alloc_base = int(self.torch.cuda.memory_allocated())

    def memory_end(self) -> dict:
        if not self.gpu:
            return super().memory_end()
        whole_gpu = super().memory_end()
        peak = int(self.torch.cuda.max_memory_allocated())
        return {
            "kind": "device memory",
            "method": "torch.cuda.max_memory_allocated (this process: weights + activations)",
            "peak_bytes": peak,
            "baseline_bytes": self._alloc_base,
            "delta_bytes": max(0, peak - self._alloc_base),
            "gpu_in_use_peak_bytes": whole_gpu["peak_bytes"],
        }

    def close(self) -> None:
        self.dit_in = self.step_in = self.vae_in = None  # type: ignore[assignment]
        self.model = self.step_mod = self.vae_mod = None
        gc.collect()
        if self.gpu:
            self.torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ runtime backends


class RuntimeRunner(Runner):
    """ort / trt on an exported folder (one per batch and precision), via the runtime."""

    def __init__(self, spec: BackendSpec, folders: dict[int, Path], threads: int = 0) -> None:
        self.spec, self.folders, self.threads = spec, folders, threads
        self.sampler: Sampler | None = None
        self.info = {"engine": "", "device": "", "precision": "", "attention": "as exported (explicit)"}

    def open(self, batch: int) -> None:
        from dit_export.runtime import Sampler

        folder = self.folders.get(batch)
        if folder is None:
            raise UserError(f"no export for batch {batch}")
        import json

        manifest = json.loads((folder / "manifest.json").read_text())
        graphs = ["dit", "dit_step"] + (["vae_decoder"] if manifest["graphs"].get("vae_decoder") else [])
        options: dict = {"cuda_graph": True} if self.spec.family == "trt" else {}
        if self.spec.family == "ort" and self.threads:
            options["threads"] = self.threads
        self.sampler = s = Sampler.load(
            folder, backend=self.spec.family, graphs=graphs, check_hashes=False, **options
        )
        be = s.backend
        self.device = "cuda" if self.spec.family == "trt" else getattr(be, "device", "cpu")
        self.info = {
            "engine": be.describe(),
            "device": self.device,
            "precision": f"{s.manifest['precision']} export"
            + (" (fp32 islands per the precision policy)" if s.manifest["precision"] == "fp16" else ""),
            "attention": "explicit matmul + softmax, as exported",
            "threads": None,
            "folder": str(folder),
        }
        if self.spec.family == "ort" and self.device == "cpu":
            self.info["threads"] = self.threads or "ORT default (one per physical core)"
        self.n = n = s.batch
        c, size = s.latent_shape[0], s.latent_shape[1]
        rng = np.random.default_rng(0)
        num_classes = s.num_classes
        labels = rng.integers(0, num_classes, n).astype(np.int64)
        self.labels = [int(v) for v in labels]

        def buf(graph: str, name: str, value: np.ndarray | None = None):
            spec = be.graphs[graph].spec(name)
            b = be.alloc(spec.shape, spec.dtype)
            if value is not None:
                be.write(b, np.asarray(value, dtype=spec.np_dtype).reshape(spec.shape))
            return b

        self._dit = {
            "x": buf("dit", "x", rng.standard_normal((2 * n, c, size, size))),
            "t": buf("dit", "t", np.full(2 * n, MID_STEP_T)),
            "y": buf("dit", "y", np.concatenate([labels, np.full(n, num_classes)])),
            "out": buf("dit", "out"),
        }
        ts, coefs = s.schedule(50, "ddpm")
        mid = len(ts) // 2
        self._step = {
            "x": buf("dit_step", "x", rng.standard_normal((n, c, size, size))),
            "t": buf("dit_step", "t", np.full(n, int(ts[mid]))),
            "y": buf("dit_step", "y", labels),
            "noise": buf("dit_step", "noise", rng.standard_normal((n, c, size, size))),
            "guidance": buf("dit_step", "guidance", np.array([GUIDANCE])),
            "coef": buf("dit_step", "coef", coefs[mid]),
            "x_next": buf("dit_step", "x_next"),
        }
        self._vae = None
        if s.has_vae:
            self._vae = {
                "latent": buf("vae_decoder", "latent", rng.standard_normal((n, c, size, size))),
                "image": buf("vae_decoder", "image"),
            }

    def sync(self) -> None:
        if self.spec.family == "trt" and self.sampler is not None:
            self.sampler.backend.stream.synchronize()  # type: ignore[attr-defined]

    def _sampler(self) -> Sampler:
        if self.sampler is None:
            raise RuntimeError("open() first")
        return self.sampler

    def _clock(self) -> Clock:
        be = self._sampler().backend
        if self.spec.family == "trt":
            return CudartEventClock(be.stream.stream, be.stream.synchronize)  # type: ignore[attr-defined]
        return CpuClock()  # ORT's run_with_iobinding returns when the outputs are ready

    def _run(self, graph: str, bindings: dict) -> Callable[[], None]:
        be = self._sampler().backend
        return lambda: be.run(graph, bindings)

    def denoiser(self) -> Stage:
        return Stage(self._run("dit", self._dit), self._clock())

    def step(self) -> Stage:
        return Stage(self._run("dit_step", self._step), self._clock())

    def step_variants(self) -> dict[str, Stage]:
        if self.spec.family != "trt":
            return {}
        be = self._sampler().backend
        run = self._run("dit_step", self._step)

        def no_graph() -> None:
            be.cuda_graph = False  # type: ignore[attr-defined]
            try:
                run()
            finally:
                be.cuda_graph = True  # type: ignore[attr-defined]

        return {"step_no_cuda_graph": Stage(no_graph, self._clock())}

    def vae(self) -> Stage | None:
        return None if self._vae is None else Stage(self._run("vae_decoder", self._vae), self._clock())

    def sample(self, steps: int) -> Stage:
        s = self.sampler
        assert s is not None
        labels = self.labels

        def fn() -> None:
            s.generate(labels, seed=0, cfg_scale=GUIDANCE, steps=steps, decode=s.has_vae, progress=False)

        return Stage(fn, CpuClock())  # generate() ends with a device→host read: synchronous

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        self.sampler = None
        self._dit = self._step = self._vae = None  # type: ignore[assignment]
        gc.collect()
