"""The export pipeline: check → load → reference outputs → (fp16 policy) → trace → check → manifest.

Everything is built in a hidden sibling folder (`.<name>.XXXX.partial`) and renamed into place
only when every graph passed its checks, so `--out` never holds a half-written or failing
export. One export per folder at a time (a lock beside it); a killed export's staging folder is
removed by the next export of the same folder. `--force` replaces only what dit_export wrote.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dit_export import __version__, compare
from dit_export.errors import UserError
from dit_export.export import analysis, check, graphs, mixed, quantize, trt_ops
from dit_export.export.manifest import (
    CACHE_SCHEDULE,
    GRAPH_NAMES,
    CacheInfo,
    FileRecord,
    GraphSpec,
    Manifest,
    ModelInfo,
    TensorSpec,
    VaeInfo,
)
from dit_export.export.outdir import (  # re-exported: the exporter's own API since round one
    check_out_dir,
    disk_errors,
    export_lock,
    lock_path,
    remove_stale_partials,
)
from dit_export.export.precision import FP16, FP32, POLICY, PRECISIONS, cache_dtype
from dit_export.export.schedule_tables import export_tables
from dit_export.fileio import atomic_dir, ensure_writable_dir
from dit_export.lazy import optional_import
from dit_export.models import hub
from dit_export.models.embedded import embedded_model, is_embedded
from dit_export.models.spec import RANDOM_VAES, ModelSpec
from dit_export.models.vae import VAEDecode, vae_factor
from dit_export.sampling import cache as step_cache
from dit_export.sampling.schedule import NUM_COEFS
from dit_export.sampling.step import (
    STEP_INPUTS,
    STEP_OUTPUTS,
    CachedSamplerStep,
    SamplerStep,
    cached_example_inputs,
    cached_step_io,
)
from dit_export.sampling.step import example_inputs as step_example_inputs

__all__ = [
    "RANDOM_VAES",
    "ExportOptions",
    "ExportResult",
    "check_out_dir",
    "export",
    "export_lock",
    "lock_path",
    "remove_stale_partials",
]

NOISE_DOC = "docs/noise.md"
SHARED_WEIGHTS = "dit.onnx.data"  # the DiT weights file every DiT graph references (dit, the steps)
MAX_CACHE_ORDERS = tuple(range(step_cache.MAX_ORDER + 1))  # --max-cache-order (or None: no cache graphs)


@dataclass(frozen=True)
class ExportOptions:
    model: ModelSpec
    out: Path
    batch: int = 1
    precision: str = FP32
    opset: int = trt_ops.DEFAULT_OPSET
    check: bool = True
    force: bool = False
    check_seed: int = 0
    external_data_threshold: int | None = None
    schedules: tuple[tuple[str, int], ...] = ()  # extra (sampler, steps) tables to store (--schedules)
    calibration: object = None  # int8/fp8: calibrate.CalibSettings (None: ddpm-50, seeds 0 1; issue 22)
    # the forecast step cache's graphs hold Taylor orders ≤ this (slots = order + 1); None: no cache graphs
    max_cache_order: int | None = step_cache.DEFAULT_ORDER
    cache_dtype: str | None = None  # None: the precision policy's (precision.cache_dtype); set to compare

    @property
    def cache_slots(self) -> int:
        """Cache slots of dit_step_full / dit_step_forecast (0: not exported)."""
        return 0 if self.max_cache_order is None else step_cache.slots_for(self.max_cache_order)

    @property
    def cache_storage(self) -> str:
        """The cache graphs' `cache` / `cache_next` dtype ("float32" | "float16")."""
        return cache_dtype(self.precision, self.cache_dtype)


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    rows: list = field(default_factory=list)
    stages: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Models:
    """The torch modules an export traces, and what the manifest says about them."""

    dit: torch.nn.Module
    cfg: object  # DiTConfig
    decode: torch.nn.Module | None
    vae: VaeInfo | None


class Stages:
    """Times each stage; says what is happening, with elapsed time (XL/2 stages take minutes)."""

    def __init__(self, log: Callable[[str], None], on_stage: Callable[[str, float], None] | None) -> None:
        self.log, self.on_stage = log, on_stage
        self.done: list[tuple[str, float]] = []
        self.start = self.last = time.perf_counter()

    def begin(self, what: str) -> None:
        self.log(f"[{time.perf_counter() - self.start:6.1f} s] {what} ...")

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self.done.append((name, now - self.last))
        if self.on_stage is not None:
            self.on_stage(name, now - self.last)
        self.last = time.perf_counter()


# --------------------------------------------------------------------------- the pipeline


def export(
    o: ExportOptions,
    log: Callable[[str], None] = print,
    on_stage: Callable[[str, float], None] | None = None,
) -> ExportResult:
    """Run the whole export into `o.out`; raises UserError (nothing written) on any failure.

    `on_stage(name, seconds)` is called as each stage ends (the XL benchmark samples memory there).
    """
    o = quantize.export_options(o)  # int8/fp8 (issue 22): fp8 opset ≥ 19
    spec = validate_options(o)
    out = Path(o.out)
    with export_lock(out), disk_errors(out):
        remove_stale_partials(out)
        check_out_dir(out, o.force)
        stages = Stages(log, on_stage)
        models = load_models(spec, o, stages)
        cases = reference_cases(models, o, stages)
        calib = quantize.prepare(models.dit, o, spec, stages)  # None unless int8/fp8
        if o.precision == FP16:
            mixed.apply_dit_policy(models.dit)
            if models.decode is not None:
                models.decode = mixed.apply_vae_policy(models.decode)
        with atomic_dir(out) as tmp:
            saved, reports = export_graphs(models, quantize.traced(o), tmp, stages, log)
            saved, reports = quantize.apply(saved, reports, calib, o, tmp, stages, log)
            cfg, vae = models.cfg, models.vae
            del models
            gc.collect()
            rows = check_graphs(saved, cases, o.precision, stages, log)
            stages.begin("writing manifest.json")
            manifest = make_manifest(o, spec, cfg, vae, saved, reports, rows, tmp)
            manifest.write(tmp)
            stages.end("manifest")
    return ExportResult(
        out=out, manifest=Manifest.read(out, check_graphs=False), rows=rows, stages=stages.done
    )


def validate_options(o: ExportOptions) -> ModelSpec:
    """Cheap checks before anything heavy is loaded (one-line errors); the normalised model spec.

    The DiT weights and the VAE are located (downloaded when allowed) here, before the DiT is
    built: a missing VAE is found in a second, not after XL/2 was built.
    """
    if not isinstance(o.model, ModelSpec):
        raise UserError(f"ExportOptions.model must be a ModelSpec, got {type(o.model).__name__}")
    if isinstance(o.batch, bool) or not isinstance(o.batch, int) or o.batch < 1:
        raise UserError(f"--batch must be ≥ 1 (images per call), got {o.batch}")
    if o.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {o.precision!r}")
    if not trt_ops.OPSET_MIN <= o.opset <= trt_ops.OPSET_MAX:
        raise UserError(
            f"--opset {o.opset} is outside {trt_ops.OPSET_MIN}–{trt_ops.OPSET_MAX} (what every TensorRT 10.x reads)"
        )
    cache_dtype(o.precision, o.cache_dtype)  # a bad ExportOptions.cache_dtype: one line
    m = o.max_cache_order
    if m is not None and (isinstance(m, bool) or m not in MAX_CACHE_ORDERS):
        raise UserError(
            f"--max-cache-order must be one of {', '.join(map(str, MAX_CACHE_ORDERS))} or none, got {m!r}"
        )
    out = Path(o.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    ensure_writable_dir(out.parent if out.parent != Path("") else Path("."))
    check_out_dir(out, o.force)
    return o.model.check_available()


def load_models(spec: ModelSpec, o: ExportOptions, stages: Stages) -> Models:
    stages.begin(f"loading {spec.model or spec.ckpt}")
    model, cfg = spec.load_dit()
    model.eval().requires_grad_(False)
    model.set_fused_attention(False)
    image_size = cfg.input_size * 8
    if spec.image_size is not None and spec.image_size != image_size:
        raise UserError(f"--image-size {spec.image_size} does not match the checkpoint's {image_size}")
    decode, vae = None, None
    if spec.has_vae:
        autoencoder = spec.load_vae()
        if vae_factor(autoencoder) != 8:
            raise UserError(
                f"VAE {spec.vae_source} scales by {vae_factor(autoencoder)}, but DiT latents are image/8"
            )
        decode = VAEDecode(autoencoder).eval()
        decode.set_fused_attention(True)  # SDPA: exported as one uniformly typed matmul/softmax region
        vae = VaeInfo(source=spec.vae_source, scaling_factor=float(decode.scaling_factor), factor=8)
    stages.end("load")
    return Models(dit=model, cfg=cfg, decode=decode, vae=vae)


def reference_cases(models: Models, o: ExportOptions, stages: Stages) -> dict[str, list]:
    """The fp32 PyTorch outputs the graphs are checked against (before any fp16 policy)."""
    if not o.check:
        return {}
    stages.begin("PyTorch fp32 reference outputs")
    cfg = models.cfg
    cases = dict(check.model_cases(models.dit, o.batch, o.check_seed))
    if o.cache_slots:
        cases.update(check.cached_cases(models.dit, o.batch, o.cache_slots, o.check_seed))
    if models.decode is not None:
        cases["vae_decoder"] = check.vae_cases(
            models.decode, o.batch, cfg.in_channels, cfg.input_size, o.check_seed
        )
    stages.end("torch reference")
    return cases


def trace_specs(models: Models, batch: int, slots: int = 0, cache_dtype: str = "float32") -> dict[str, tuple]:
    """graph name → (module, example inputs, input names, output names), static shapes; with
    `slots`, also the forecast cache's full and forecast steps (`CachedSamplerStep`)."""
    n, c, size = batch, models.cfg.in_channels, models.cfg.input_size
    f32, i64 = torch.float32, torch.int64
    x, x2 = torch.zeros(n, c, size, size, dtype=f32), torch.zeros(2 * n, c, size, size, dtype=f32)
    specs = {
        "dit": (models.dit, (x2, torch.zeros(2 * n, dtype=i64), torch.zeros(2 * n, dtype=i64)), ("x", "t", "y"), ("out",)),
        "dit_step": (  # with the multistep solvers' state I/O (sampling.step.STEP_INPUTS / STEP_OUTPUTS)
            SamplerStep(models.dit, guided=True, with_state=True),
            step_example_inputs(n, c, size, NUM_COEFS),
            STEP_INPUTS,
            STEP_OUTPUTS,
        ),
    }  # fmt: skip
    if slots:
        shape = step_cache.config_cache_shape(models.cfg, batch, slots)
        for mode, name in (("full", step_cache.FULL_GRAPH), ("forecast", step_cache.FORECAST_GRAPH)):
            ins, outs = cached_step_io(mode)
            args = cached_example_inputs(n, c, size, shape, NUM_COEFS)
            args = (*args[:-2], args[-2].to(getattr(torch, cache_dtype)), args[-1])  # cache I/O dtype
            specs[name] = (CachedSamplerStep(models.dit, mode), args, ins, outs)
    if models.decode is not None:
        specs["vae_decoder"] = (models.decode, (x.clone(),), ("latent",), ("image",))
    return specs


def cache_info(o: ExportOptions, cfg) -> CacheInfo | None:
    """The manifest's `cache` record (None without cache graphs)."""
    if not o.cache_slots:
        return None
    assert o.max_cache_order is not None
    return CacheInfo(
        max_order=o.max_cache_order,
        slots=o.cache_slots,
        shape=step_cache.config_cache_shape(cfg, o.batch, o.cache_slots),
        dtype=o.cache_storage,
        bytes_per_image=step_cache.cache_bytes(
            cfg.depth, 1, cfg.num_tokens, cfg.hidden_size, o.cache_slots, o.cache_storage
        ),
        schedule=CACHE_SCHEDULE,
        first_full=step_cache.FIRST_FULL,
    )


def export_graphs(
    models: Models,
    o: ExportOptions,
    tmp: Path,
    stages: Stages,
    log: Callable[[str], None],
    only: Collection[str] | None = None,
) -> tuple[dict[str, graphs.SavedGraph], dict[str, analysis.GraphReport]]:
    """Trace, clean up, save and statically check each graph (`only`: those named, e.g. a test's
    one source graph); the DiT pair shares one weights file."""
    specs = trace_specs(models, o.batch, o.cache_slots, o.cache_storage)
    shared_bytes = graphs.param_bytes_of(models.dit)
    share = shared_bytes > graphs.shared_data_threshold(o.external_data_threshold)
    weights = graphs.SharedWeights(SHARED_WEIGHTS) if share else None
    saved: dict[str, graphs.SavedGraph] = {}
    reports: dict[str, analysis.GraphReport] = {}
    for name in GRAPH_NAMES:
        if name not in specs or (only is not None and name not in only):
            continue
        module, args, ins, outs = specs.pop(name)
        stages.begin(f"exporting {name}.onnx")
        ir_model = graphs.trace(module, args, ins, outs, o.opset)
        graphs.cleanup(ir_model)
        # every DiT graph (dit, dit_step, the cached steps) references the one shared weights file
        threshold = 0 if (share and name != "vae_decoder") else o.external_data_threshold
        shared = weights if name != "vae_decoder" else None
        saved[name] = graphs.save(ir_model, tmp / f"{name}.onnx", threshold, shared=shared)
        del ir_model, module, args
        gc.collect()
        reports[name] = analysis.analyze(saved[name].path, o.precision)
        stages.end(f"export {name}")
        failed = [ch for ch in reports[name].checks if not ch.ok]
        if failed:
            raise UserError(f"{name}.onnx fails the static check '{failed[0].name}': {failed[0].detail}")
    return saved, reports


def check_graphs(
    saved: dict[str, graphs.SavedGraph], cases: dict[str, list], precision: str, stages: Stages, log
) -> list:
    """Each graph in ONNX Runtime against the fp32 PyTorch reference; UserError on a failing row."""
    rows: list = []
    for name, graph_cases in cases.items():
        stages.begin(f"checking {name}.onnx in ONNX Runtime")
        rows += check.run_cases(saved[name].path, graph_cases, precision)
        stages.end(f"check {name}")
    if cases:
        log(check.format_table(rows))
    message = check.failure_message(rows)
    if message:
        raise UserError(message)
    return rows


# --------------------------------------------------------------------------- the manifest


def make_manifest(o, spec: ModelSpec, cfg, vae, saved, reports, rows, tmp: Path) -> Manifest:
    size = cfg.input_size
    return Manifest(
        versions=_versions(),
        model=ModelInfo(
            name=cfg.name or "custom",
            config=cfg.to_dict(),
            flavor=cfg.flavor,
            cfg_channels=cfg.cfg_channels,
            null_class=cfg.null_class,
            source=weights_source(spec, size * 8),
            spec=spec.to_dict(),
        ),
        image_size=size * 8,
        latent_size=size,
        latent_channels=cfg.in_channels,
        batch=o.batch,
        precision=o.precision,
        opset=o.opset,
        vae=vae,
        graphs={name: _graph_spec(name, saved, reports, tmp, o.precision) for name in GRAPH_NAMES},
        schedule=export_tables(o.schedules),  # every registered sampler, plus --schedules
        cache=cache_info(o, cfg),
        noise_default="philox",
        noise_doc=NOISE_DOC,
        # int8/fp8: the quantization policy, library and calibration set (issue 22)
        precision_policy=quantize.policy_record(o.precision, tmp) or _fp16_policy(o.precision),
        checks={
            "run": bool(o.check),
            "passed": all(bool(r) for r in rows) if o.check else None,
            "backend": "onnxruntime CPUExecutionProvider (basic graph optimisations)",
            "reference": "PyTorch fp32 modules, same inputs",
            "seed": o.check_seed,
            "tolerances": compare.limits_dict(),
            "rows": [r.to_dict() for r in rows],
        },
    )


def _fp16_policy(precision: str) -> dict | None:
    return POLICY.describe() if precision == FP16 else None


def _graph_spec(name: str, saved, reports, tmp: Path, precision: str) -> GraphSpec | None:
    if name not in saved:
        return None
    rep = reports[name]
    return GraphSpec(
        name=name,
        file=FileRecord.of(tmp, saved[name].path.name),
        external_data=tuple(FileRecord.of(tmp, f) for f in saved[name].external_data),
        inputs=tuple(TensorSpec(t.name, tuple(t.shape), t.dtype) for t in rep.inputs),
        outputs=tuple(TensorSpec(t.name, tuple(t.shape), t.dtype) for t in rep.outputs),
        precision=quantize.graph_precision(name, precision),  # int8/fp8 folders: the VAE stays fp32
        info={
            "param_bytes": rep.param_bytes,
            "fp16_flop_share": rep.fp16_flop_share,
            "fp32_islands": rep.fp32_islands,
            "static_checks": [ch.to_dict() for ch in rep.checks],
        },
    )


def weights_source(spec: ModelSpec, image_size: int) -> str:
    """The weights in words (what `info`/`inspect` print); `spec` is the same thing as data."""
    if spec.random_weights:
        return f"random weights (seed {spec.weights_seed}, adaLN-Zero perturbed)"
    if spec.ckpt:
        return spec.ckpt
    if is_embedded(spec.model):  # its name, not a path into wherever the package is installed
        return embedded_model(str(spec.model)).name
    return hub.official_file_for(spec.model, image_size) or str(spec.model)


def _versions() -> dict:
    v = {"dit_export": __version__, "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            v[name] = optional_import(name).__version__
        except UserError:
            if name == "onnx":
                raise
    return v
