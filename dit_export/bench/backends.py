"""What each `bench` backend is, whether it can run here, and how it is opened and fed.

Every bench backend is a runtime backend (`dit_export.runtime`) on an exported folder:

- ``torch-*``: the runtime's torch backend (the PyTorch reference modules rebuilt from the
  manifest) in one of its modes: fp32 (TF32 off), tf32 (TF32 matmul/cuDNN, as the official
  ``sample.py`` sets), fp16 (``torch.autocast`` float16), compile (``torch.compile``); they share
  the fp32 export's folder and one loaded copy of the modules.
- ``ort``, ``ort-fp16``, ``trt``, ``trt-fp32``: ONNX Runtime / TensorRT on an fp32 or mixed-fp16
  export.

bench times `Backend.run` on bound example feeds (`export.feeds`) for single graphs and
`Sampler.generate` for the whole sample, for every backend alike; it keeps only its clocks. With
`--cache-interval N` above 1 it also loads and times the forecast cache's two step graphs.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dit_export.bench.machine import cpu_has_fp16_math
from dit_export.bench.timing import Clock, CpuClock, CudartEventClock, TorchEventClock
from dit_export.engine import trt_api
from dit_export.errors import UserError
from dit_export.export.feeds import example_feeds
from dit_export.lazy import optional_import
from dit_export.runtime.backend import Buffer
from dit_export.runtime.folder import ExportFolder
from dit_export.runtime.ort_backend import default_providers
from dit_export.runtime.sampler import Sampler
from dit_export.sampling.cache import CACHE_GRAPHS, FORECAST_GRAPH, FULL_GRAPH, cache_plan, full_steps

GUIDANCE = 4.0  # the official sample.py scale; guided steps run 2N rows
MID_STEP_T = 500


@dataclass(frozen=True)
class BackendSpec:
    name: str
    family: str  # "torch" | "ort" | "trt": the runtime backend
    precision: str  # torch: its mode fp32 | tf32 | fp16 | compile ; ort/trt: the export's fp32 | fp16
    summary: str

    @property
    def export_precision(self) -> str:
        """The export folder it runs on (torch modes rebuild their modules from the fp32 one)."""
        return "fp32" if self.family == "torch" else self.precision


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
        BackendSpec("trt-fp32", "trt", "fp32", "TensorRT, fp32 export (TF32 off), CUDA graph steps"),
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
        if spec.precision == "fp16" and env.device == "cpu" and env.quick and not cpu_has_fp16_math():
            return (
                "--quick: float16 autocast on a CPU without fp16 math units converts every op "
                "(seconds per VAE call); run without --quick to measure it anyway"
            )
        return None
    if spec.family == "ort":
        try:
            optional_import("onnxruntime")
        except UserError as e:
            return str(e)
        return None
    ok, why = trt_api.probe()
    return None if ok else why


def runtime_device(spec: BackendSpec, torch_device: str) -> str:
    """Where a backend runs: torch on `torch_device`, trt on the GPU, ort on CUDA with onnxruntime-gpu."""
    if spec.family == "torch":
        return torch_device
    if spec.family == "trt":
        return "cuda"
    return "cuda" if default_providers()[0] == "CUDAExecutionProvider" else "cpu"


def peak_class(spec: BackendSpec, device: str) -> tuple[str | None, str]:
    """(fp16 | tf32 | fp32 | None, note): which column of the device's peak a backend is scored on.

    TensorRT builds keep TF32 off (trt_api: tf32 False), so `trt-fp32` runs on the fp32 (CUDA-core)
    peak, not the TF32 tensor-core one.
    """
    if device != "cuda":
        return None, "CPU: no peak table"
    if spec.family == "torch":
        return {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16", "compile": "fp16"}[spec.precision], ""
    if spec.precision == "fp16":
        return "fp16", ""
    if spec.family == "ort":
        return "tf32", "fp32 graph; ONNX Runtime's CUDA EP allows TF32 unless use_tf32=0"
    return "fp32", "fp32 engine built with TF32 off: CUDA-core fp32 peak"


# ------------------------------------------------------------------------------ one opened backend


def open_sampler(
    spec: BackendSpec,
    folder: Path | ExportFolder,
    *,
    threads: int = 0,
    torch: dict | None = None,
    cache_order: int | None = None,
) -> Sampler:
    """The runtime sampler of a bench backend on its folder, with every graph it times loaded.

    `torch`: the torch backend's options (device, sdpa, compile_mode, modules). `cache_order`: also the
    forecast cache's step graphs (one line when the folder has none, or for a smaller order).
    """
    options: dict = {}
    if spec.family == "torch":
        options = {**(torch or {}), "mode": spec.precision}
    elif spec.family == "trt":
        options = {"cuda_graph": True}
    elif threads:
        options = {"threads": threads}
    export = ExportFolder.of(folder)  # the manifest read once, for the sampler too
    if cache_order is not None:
        export.require_cache(cache_order)
    graphs = ["dit", *export.sampling_graphs(cache=cache_order is not None)]
    return Sampler.load(export, backend=spec.family, graphs=graphs, check_hashes=False, **options)


def clock(sampler: Sampler) -> Clock:
    """The clock that times one backend's calls: CUDA events on its stream, else perf_counter."""
    be = sampler.backend
    if be.name == "trt":
        return CudartEventClock(be.stream.handle, be.stream.synchronize)  # type: ignore[attr-defined]
    if be.name == "torch" and be.gpu:  # type: ignore[attr-defined]
        return TorchEventClock()
    return CpuClock(getattr(be, "sync", None))  # ORT's run with I/O binding returns when outputs are ready


def sync(sampler: Sampler) -> None:
    """Wait for the work a backend launched (a no-op for synchronous ones)."""
    be = sampler.backend
    if be.name == "trt":
        be.stream.synchronize()  # type: ignore[attr-defined]
    elif hasattr(be, "sync"):
        be.sync()


def bind(sampler: Sampler, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, Buffer]:
    """Buffers of one graph call on the backend: inputs written from `feeds`, the output allocated."""
    be = sampler.backend
    io = be.graphs[graph]
    out: dict[str, Buffer] = {}
    for t in io.inputs:
        out[t.name] = be.alloc(t.shape, t.np_dtype)
        be.write(out[t.name], feeds[t.name])
    for t in io.outputs:
        out[t.name] = be.alloc(t.shape, t.np_dtype)
    return out


def stage_bindings(sampler: Sampler) -> dict[str, dict[str, Buffer]]:
    """Bound example feeds of every graph at the engine batch: `dit` at t = 500 (2N rows), the
    50-step DDPM step nearest t = 500 with guidance 4, the VAE on latent-like input."""
    c, size, _ = sampler.latent_shape
    shape = {"batch": sampler.batch, "channels": c, "size": size, "num_classes": sampler.num_classes}
    out = {
        "dit": bind(sampler, "dit", example_feeds("dit", **shape, seed=[0, 1], t=MID_STEP_T)),
        "dit_step": bind(
            sampler,
            "dit_step",
            example_feeds("dit_step", **shape, seed=[0, 2], t=MID_STEP_T, guidance=GUIDANCE, state=True),
        ),
    }
    if sampler.has_vae:
        out["vae_decoder"] = bind(sampler, "vae_decoder", example_feeds("vae_decoder", **shape, seed=[0, 3]))
    layout = sampler.cache_layout
    if layout is not None and all(sampler.backend.has_graph(g) for g in CACHE_GRAPHS):
        # a 50-step plan at N = 3 with the export's largest order: rows of a full and a forecast step
        plan = cache_plan(50, 3, layout.max_order, layout.slots)
        for i, graph in enumerate(CACHE_GRAPHS):
            k = max(k for k in range(plan.steps) if plan.graph(k) == graph and k <= 25)
            feeds = example_feeds(graph, **shape, seed=[0, 4 + i], t=MID_STEP_T, guidance=GUIDANCE,
                                  cache_shape=layout.shape, cache_coef=plan.coefs[k])  # fmt: skip
            out[graph] = bind(sampler, graph, feeds)
    return out


def cache_figures(
    sampler: Sampler, steps: int, interval: int, order: int, row: dict, uncached: float | None
) -> dict:
    """The cached sample's step counts, its steps' time (full × full steps + forecast × the others),
    the uncached estimate beside it, and the cache's memory (one tensor per image; two are held)."""
    full = int(full_steps(steps, interval).sum())
    ms = {g: row[g]["median_ms"] / 1e3 for g in CACHE_GRAPHS}
    layout = sampler.cache_layout
    assert layout is not None  # open_sampler refused a folder without the cache graphs
    return {
        "interval": interval,
        "order": order,
        "full_steps": full,
        "forecast_steps": steps - full,
        "steps_s": full * ms[FULL_GRAPH] + (steps - full) * ms[FORECAST_GRAPH],
        "uncached_estimate_s": uncached,
        "dtype": layout.dtype.name,  # float16 in mixed-fp16 exports (precision.cache_dtype)
        "bytes_per_image": layout.bytes_per_image(sampler.batch),
        "held_bytes": 2 * layout.nbytes,
    }


def close_sampler(sampler: Sampler | None) -> None:
    if sampler is not None:
        sampler.close()
    gc.collect()
