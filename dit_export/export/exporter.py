"""The export pipeline: load → reference outputs → (fp16 policy) → trace → check → manifest.

Everything is built in a hidden sibling folder and renamed into place only when every graph
passed its checks, so `--out` never holds a half-written or failing export.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dit_export.errors import UserError
from dit_export.export import trt_ops
from dit_export.export.precision import FP16, FP32, POLICY, PRECISIONS

RANDOM_VAES = ("random-sd", "random-small", "random-tiny")
NOISE_DOC = "docs/noise.md"
SCHEDULE_RULE = (
    "IDDPM linear betas 1e-4..0.02 over 1000 steps, respaced ('N': even sections with Python round; "
    "'ddimN': smallest integer stride giving N steps), coefficients recomputed on the kept chain in "
    "float64 and cast to float32; rows in loop order (t high → 0); see dit_export/sampling/schedule.py"
)


@dataclass
class ExportOptions:
    out: Path
    model: str | None = None
    ckpt: str | None = None
    random_weights: bool = False
    weights_seed: int = 0
    flavor: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    vae: str = "mse"
    batch: int = 1
    precision: str = FP32
    opset: int = trt_ops.DEFAULT_OPSET
    check: bool = True
    force: bool = False
    check_seed: int = 0
    external_data_threshold: int | None = None


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    rows: list = field(default_factory=list)
    stages: list[tuple[str, float]] = field(default_factory=list)


def validate_options(o: ExportOptions) -> None:
    """Cheap checks before anything heavy is loaded (one-line errors)."""
    if o.batch < 1:
        raise UserError(f"--batch must be ≥ 1 (images per call), got {o.batch}")
    if o.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {o.precision!r}")
    if not trt_ops.OPSET_MIN <= o.opset <= trt_ops.OPSET_MAX:
        raise UserError(
            f"--opset {o.opset} is outside {trt_ops.OPSET_MIN}–{trt_ops.OPSET_MAX} (what every TensorRT 10.x reads)"
        )
    if o.ckpt and o.random_weights:
        raise UserError("give either --ckpt or --random-weights, not both")
    if o.random_weights and not o.model:
        raise UserError("--random-weights needs --model (e.g. --model S/8)")
    if not o.ckpt and not o.random_weights and not o.model:
        raise UserError("give --model, --ckpt or both (e.g. --model S/8 --random-weights)")
    if o.image_size is not None and o.image_size <= 0:
        raise UserError(f"--image-size must be positive, got {o.image_size}")
    from dit_export.models.embedded import is_embedded

    if o.model and o.image_size is not None and not is_embedded(o.model):
        from dit_export.models.configs import model_config

        model_config(o.model, o.image_size)  # image size a multiple of 8·patch, known model name
    check_out_dir(Path(o.out), o.force)


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite an export (or any non-empty folder) without --force."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and not force:
        if (out / "manifest.json").exists():
            raise UserError(f"{out} already holds an export; pass --force to replace it")
        if any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not empty; pass --force to replace it")
    from dit_export.fileio import ensure_writable_dir

    ensure_writable_dir(out.parent if out.parent != Path("") else Path("."))


def _weights_source(o: ExportOptions, image_size: int) -> str:
    """What the torch backend reloads: a path / released name / hub id, or the random-weights text."""
    if o.random_weights:
        return f"random weights (seed {o.weights_seed}, adaLN-Zero perturbed)"
    if o.ckpt:
        return o.ckpt
    from dit_export.models import hub
    from dit_export.models.configs import canonical_name
    from dit_export.models.embedded import is_embedded, resolve_embedded

    if is_embedded(o.model):
        return str(resolve_embedded(str(o.model))[0])
    return hub.official_file_for(canonical_name(str(o.model)), image_size) or str(o.model)


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    from dit_export import __version__

    v = {
        "dit_export": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import onnxscript

        v["onnxscript"] = onnxscript.__version__
    except ModuleNotFoundError:
        pass
    return v


def _load_vae(spec: str, seed: int):
    from dit_export.models.vae import random_vae

    if spec in RANDOM_VAES:
        return random_vae(spec.removeprefix("random-"), seed), f"{spec} (seed {seed})"
    from dit_export.models.vae import load_vae, resolve_vae_spec

    return load_vae(spec), resolve_vae_spec(spec)


def _schedule_tables() -> dict:
    from dit_export.export.manifest import STORED_SCHEDULES
    from dit_export.sampling.schedule import COEF_NAMES, NUM_TRAIN_STEPS, make_schedule

    tables: dict = {}
    for sampler, counts in STORED_SCHEDULES.items():
        tables[sampler] = {}
        for steps in counts:
            s = make_schedule(steps, sampler)
            tables[sampler][str(steps)] = {
                "spec": s.spec,
                "timesteps": [int(t) for t in s.timesteps],
                "coefs": [[float(v) for v in row] for row in s.coefs],
            }
    return {
        "coef_names": list(COEF_NAMES),
        "num_train_steps": NUM_TRAIN_STEPS,
        "rule": SCHEDULE_RULE,
        "tables": tables,
    }


def export(
    o: ExportOptions,
    log: Callable[[str], None] = print,
    on_stage: Callable[[str, float], None] | None = None,
) -> ExportResult:
    """Run the whole export into `o.out`; raises UserError (nothing written) on any failure.

    `on_stage(name, seconds)` is called as each stage ends (the XL benchmark samples memory there).
    """
    validate_options(o)
    import torch

    from dit_export.export import analysis, check, graphs, mixed
    from dit_export.export.manifest import GRAPH_NAMES, SCHEMA, file_entry, write_manifest
    from dit_export.fileio import atomic_dir
    from dit_export.models.checkpoints import load_dit
    from dit_export.sampling.schedule import NUM_COEFS
    from dit_export.sampling.step import SamplerStep

    stages: list[tuple[str, float]] = []
    clock = [time.perf_counter()]

    def stage(name: str) -> None:
        now = time.perf_counter()
        stages.append((name, now - clock[0]))
        if on_stage is not None:
            on_stage(name, now - clock[0])
        clock[0] = time.perf_counter()

    out = Path(o.out)
    model, cfg = load_dit(
        o.ckpt,
        model=o.model,
        image_size=o.image_size,
        flavor=o.flavor,
        random_weights=o.random_weights,
        weights_seed=o.weights_seed,
        num_classes=o.num_classes,
    )
    model.eval().requires_grad_(False)
    model.set_fused_attention(False)
    vae = vae_source = None
    decode: torch.nn.Module | None = None
    vae_scaling = 0.0
    if o.vae != "none":
        from dit_export.models.embedded import is_embedded
        from dit_export.models.vae import VAEDecode, vae_factor

        spec = o.model if is_embedded(o.model) and o.vae == "mse" else o.vae  # a shipped model's own VAE
        vae, vae_source = _load_vae(spec, o.weights_seed)
        if vae_factor(vae) != 8:
            raise UserError(f"VAE {vae_source} scales by {vae_factor(vae)}, but DiT latents are image/8")
        decode = VAEDecode(vae).eval()
        vae_scaling = float(decode.scaling_factor)
        decode.set_fused_attention(True)  # SDPA: exported as one uniformly typed matmul/softmax region
    image_size = cfg.input_size * 8
    if o.image_size is not None and o.image_size != image_size:
        raise UserError(f"--image-size {o.image_size} does not match the checkpoint's {image_size}")
    n, b, c, size = o.batch, 2 * o.batch, cfg.in_channels, cfg.input_size
    stage("load")

    cases: dict[str, list] = {}
    if o.check:
        cases.update(check.model_cases(model, n, o.check_seed))
        if decode is not None:
            cases["vae_decoder"] = check.vae_cases(decode, n, c, size, o.check_seed)
        stage("torch reference")

    if o.precision == FP16:
        mixed.apply_dit_policy(model)
        if decode is not None:
            decode = mixed.apply_vae_policy(decode)

    f32, i64 = torch.float32, torch.int64
    specs = {
        "dit": (
            model,
            (torch.zeros(b, c, size, size, dtype=f32), torch.zeros(b, dtype=i64), torch.zeros(b, dtype=i64)),
            ("x", "t", "y"),
            ("out",),
        ),
        "dit_step": (
            SamplerStep(model, guided=True),
            (
                torch.zeros(n, c, size, size, dtype=f32),
                torch.zeros(n, dtype=i64),
                torch.zeros(n, dtype=i64),
                torch.zeros(n, c, size, size, dtype=f32),
                torch.ones(1, dtype=f32),
                torch.zeros(NUM_COEFS, dtype=f32),
            ),
            ("x", "t", "y", "noise", "guidance", "coef"),
            ("x_next",),
        ),
    }
    if decode is not None:
        specs["vae_decoder"] = (decode, (torch.zeros(n, c, size, size, dtype=f32),), ("latent",), ("image",))

    with atomic_dir(out) as tmp:
        reports: dict[str, analysis.GraphReport] = {}
        saved: dict[str, graphs.SavedGraph] = {}
        for name in GRAPH_NAMES:
            if name not in specs:
                continue
            module, args, ins, outs = specs.pop(name)
            log(f"exporting {name}.onnx ...")
            ir_model = graphs.trace(module, args, ins, outs, o.opset)
            graphs.cleanup(ir_model)
            saved[name] = graphs.save(ir_model, tmp / f"{name}.onnx", o.external_data_threshold)
            del ir_model, module, args
            gc.collect()
            reports[name] = analysis.analyze(saved[name].path, o.precision)
            stage(f"export {name}")
            failed = [ch for ch in reports[name].checks if not ch.ok]
            if failed:
                raise UserError(f"{name}.onnx fails the static check '{failed[0].name}': {failed[0].detail}")
        del model, decode, vae
        gc.collect()

        rows: list[check.Row] = []
        if o.check:
            for name, graph_cases in cases.items():
                rows += check.run_cases(saved[name].path, graph_cases, o.precision)
                stage(f"check {name}")
            log(check.format_table(rows))
            bad = [r for r in rows if not r.ok]
            if bad:
                r = bad[0]
                what = f"{r.value:.3e}" if r.metric == "rel_l2" else f"{r.value:.2f} dB"
                cmp = "above" if r.metric == "rel_l2" else "below"
                raise UserError(
                    f"{r.graph}.onnx failed its check ({r.case}): {r.metric} {what} is {cmp} the limit {r.limit:g}"
                    f"{f' (+{len(bad) - 1} more failing rows)' if len(bad) > 1 else ''}; nothing written"
                )

        graph_entries: dict = {}
        for name in GRAPH_NAMES:
            if name not in saved:
                graph_entries[name] = None
                continue
            rep = reports[name]
            entry = file_entry(tmp, saved[name].path.name)
            entry["external_data"] = [file_entry(tmp, f) for f in saved[name].external_data]
            entry["inputs"] = [t.to_dict() for t in rep.inputs]
            entry["outputs"] = [t.to_dict() for t in rep.outputs]
            entry["precision"] = o.precision
            entry["param_bytes"] = rep.param_bytes
            entry["fp16_flop_share"] = rep.fp16_flop_share
            entry["fp32_islands"] = rep.fp32_islands
            entry["static_checks"] = [ch.to_dict() for ch in rep.checks]
            graph_entries[name] = entry

        manifest = {
            "schema": SCHEMA,
            "versions": _versions(),
            "model": {
                "name": cfg.name or "custom",
                "config": cfg.to_dict(),
                "flavor": cfg.flavor,
                "cfg_channels": cfg.cfg_channels,
                "null_class": cfg.null_class,
                "source": _weights_source(o, image_size),
            },
            "image_size": image_size,
            "latent_size": size,
            "latent_channels": c,
            "vae": None
            if vae_source is None
            else {"source": vae_source, "scaling_factor": vae_scaling, "factor": 8},
            "batch": n,
            "precision": o.precision,
            "precision_policy": POLICY.describe() if o.precision == FP16 else None,
            "opset": o.opset,
            "graphs": graph_entries,
            "schedule": _schedule_tables(),
            "noise": {"default": "philox", "doc": NOISE_DOC},
            "checks": {
                "run": bool(o.check),
                "passed": all(r.ok for r in rows) if o.check else None,
                "backend": "onnxruntime CPUExecutionProvider (basic graph optimisations)",
                "reference": "PyTorch fp32 modules, same inputs",
                "seed": o.check_seed,
                "tolerances": {
                    g: {p: {"metric": m, "limit": v} for p, (m, v) in t.items()}
                    for g, t in check.TOLERANCES.items()
                },
                "rows": [r.to_dict() for r in rows],
            },
        }
        write_manifest(tmp, manifest)
        stage("manifest")
    return ExportResult(out=out, manifest=manifest, rows=rows, stages=stages)
