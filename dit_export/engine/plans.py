"""TensorRT plan files of an export: names, records, staleness, builds.

A plan is tied to its ONNX graph, the TensorRT version and the GPU. It lives in the export's
`plans/` folder; its file name carries the TensorRT major.minor and the GPU's compute capability
(`plans/dit_step.trt10.13.sm90.plan`), so plans for several TensorRT releases or GPUs sit side
by side; its record (`plans/dit_step.trt10.13.sm90.plan.json`, see `engine.records`) holds
everything staleness is decided from: the ONNX sha256, the full TensorRT version, the GPU name
and compute capability, the precision, the I/O shapes, the build options, and the plan's own
sha256. Anything that differs → rebuilt by `build`, refused by the runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dit_export.engine import cuda, trt_api
from dit_export.engine.records import (
    GraphSource,
    file_fields,
    file_problem,
    graph_source,
    read_export,
    read_record,
    records_in,
    relative,
    write_record,
)
from dit_export.errors import UserError
from dit_export.export.manifest import Manifest
from dit_export.export.precision import FP8, check_fp8_device
from dit_export.fileio import atomic_path, ensure_writable_dir
from dit_export.sampling.cache import CACHE_GRAPHS

SCHEMA = "dit_export.plan/1"
PLANS_DIR = "plans"
# sampling needs dit_step and the VAE (and the forecast cache's two step graphs when exported);
# verify uses dit
PLAN_GRAPHS = ("dit_step", "vae_decoder", "dit", *CACHE_GRAPHS)


@dataclass(frozen=True)
class Target:
    """The TensorRT release and GPU that plans are built for (or loaded on)."""

    tensorrt: str  # full version, "10.13.0.35"
    gpu_name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")

    @property
    def trt_short(self) -> str:
        return trt_api.short_version(self.tensorrt)

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt} on {self.gpu_name} ({self.sm})"

    @staticmethod
    def current() -> Target:
        v = trt_api.version()
        if cuda.gpu_count() == 0:
            raise UserError(f"TensorRT {v} is installed but no CUDA GPU is visible")
        g = cuda.gpu_info()
        return Target(v, g.name, g.compute_capability)


def plan_name(graph: str, target: Target) -> str:
    return f"{graph}.trt{target.trt_short}.{target.sm}.plan"


def plan_path(folder: Path, graph: str, target: Target) -> Path:
    """`<folder>/plans/<graph>.trt<M>.<m>.sm<cc>.plan` (its record: the same + ".json")."""
    return Path(folder) / PLANS_DIR / plan_name(graph, target)


def timing_cache_path(folder: Path, target: Target) -> Path:
    return Path(folder) / PLANS_DIR / f"timing.trt{target.trt_short}.{target.sm}.cache"


def list_plans(folder: Path) -> dict[Path, dict]:
    """{plan path: record} of every recorded plan in the folder (any TensorRT, any GPU)."""
    return records_in(folder, PLANS_DIR, ".plan")


def expected_record(source: GraphSource, precision: str, target: Target, options: dict | None) -> dict:
    """The record fields a fresh plan of `source` has (without its own file fields and build time)."""
    rec = {
        "schema": SCHEMA,
        "graph": source.name,
        "onnx_file": source.file,
        "onnx_sha256": source.sha256,
        "tensorrt": target.tensorrt,
        "gpu": target.gpu_name,
        "compute_capability": target.compute_capability,
        "precision": precision,
        "shapes": source.shapes,
    }
    if options is not None:
        rec["options"] = options
    return rec


def _mismatch(rec: dict, want: dict, target: Target, name: str, export_precision: str) -> str | None:
    labels = {
        "schema": f"record schema {rec.get('schema')!r} is not {SCHEMA!r}",
        "graph": f"recorded for graph {rec.get('graph')!r}",
        "onnx_sha256": f"{want['onnx_file']} changed since the engine was built",
        "tensorrt": f"built with TensorRT {rec.get('tensorrt')}, this is TensorRT {target.tensorrt}",
        "gpu": f"built on {rec.get('gpu')}, this GPU is {target.gpu_name}",
        "compute_capability": f"built for compute capability {rec.get('compute_capability')}, "
        f"this GPU has {target.compute_capability}",
        "precision": f"built from a {rec.get('precision')} graph, the export is {export_precision}",
        "shapes": "built for other tensor shapes",
        "options": "built with other build options",
    }
    for key, value in want.items():
        if key != "onnx_file" and rec.get(key) != value:
            return f"{name}: {labels.get(key, key + ' differs')}"
    return None


def plan_status(
    folder: Path,
    manifest: Manifest,
    graph: str,
    target: Target,
    options: dict | None = None,
    check_hash: bool = True,
) -> tuple[str, str]:
    """("fresh" | "missing" | "stale", why) for the plan of `graph` on `target`."""
    folder = Path(folder)
    path = plan_path(folder, graph, target)
    name = relative(folder, path)
    rec = read_record(path)
    if rec is None:
        others = sorted(p.name for p, r in list_plans(folder).items() if r.get("graph") == graph)
        extra = f" (the folder has {', '.join(others)})" if others else ""
        return "missing", f"no {graph} engine for {target.describe()}{extra}"
    source = graph_source(manifest, graph)
    if source is None:
        return "stale", f"{name}: the export has no {graph} graph"
    want = expected_record(source, manifest.precision, target, options)
    why = _mismatch(rec, want, target, name, manifest.precision)
    if why is None:
        why = file_problem(folder, path, rec, check_hash)
        if why is not None and not path.is_file():
            return "missing", why
    return ("stale", why) if why else ("fresh", path.name)


@dataclass
class PlanRow:
    graph: str
    file: str
    status: str  # "reused" | "built"
    why: str
    seconds: float
    bytes: int


def build_plan(folder: Path, source: GraphSource, export_precision: str, target: Target, options) -> Path:
    """Build one plan from its ONNX graph; the plan, then its record, land atomically."""
    path = plan_path(folder, source.name, target)
    ensure_writable_dir(path.parent)
    t0 = time.perf_counter()
    blob = trt_api.build_plan(
        Path(folder) / source.file, source.inputs, options, timing_cache=timing_cache_path(folder, target)
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    record = expected_record(source, export_precision, target, options.to_dict())
    record.update(
        file_fields(folder, path),
        build_seconds=round(time.perf_counter() - t0, 1),
        built=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        timing_cache=relative(folder, timing_cache_path(folder, target)),
    )
    write_record(path, record)
    return path


def build_plans(
    folder: Path,
    target: Target,
    options,
    graphs: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    manifest: Manifest | None = None,
) -> list[PlanRow]:
    """Build (or reuse) the plan of every graph of the export (`manifest`: the one already read)."""
    folder = Path(folder)
    manifest = read_export(folder) if manifest is None else manifest
    if manifest.precision == FP8:  # FP8 tensor cores or nothing (issue 22)
        cc = tuple(int(v) for v in target.compute_capability.split(".")[:2])
        check_fp8_device((cc[0], cc[1]), target.gpu_name)
    opts = options.to_dict()
    rows = []
    for graph in graphs or [g for g in PLAN_GRAPHS if manifest.graphs.get(g)]:
        source = graph_source(manifest, graph)
        if source is None:
            raise UserError(f"{folder}: the export has no {graph} graph")
        status, why = plan_status(folder, manifest, graph, target, opts)
        path = plan_path(folder, graph, target)
        if status == "fresh":
            rows.append(PlanRow(graph, path.name, "reused", "unchanged", 0.0, path.stat().st_size))
            continue
        log(f"building {path.name} ({why}) ...")
        t0 = time.perf_counter()
        build_plan(folder, source, manifest.precision, target, options)
        rows.append(PlanRow(graph, path.name, "built", why, time.perf_counter() - t0, path.stat().st_size))
    return rows


def find_plan(folder: Path, manifest: Manifest, graph: str, target: Target) -> Path:
    """The fresh plan of `graph` for this TensorRT and GPU; a one-line error saying what to do."""
    status, why = plan_status(folder, manifest, graph, target)
    if status != "fresh":
        raise UserError(
            f"{folder}: {why}; rebuild with: python -m dit_export build --backend trt --out {folder} "
            "(with the model flags used before)"
        )
    return plan_path(folder, graph, target)
