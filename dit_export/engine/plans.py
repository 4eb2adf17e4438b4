"""TensorRT plan files in an exported folder: names, manifest records, staleness, builds.

A plan is tied to its ONNX graph, the TensorRT version and the GPU. Its file name carries the
TensorRT major.minor and the GPU's compute capability (`dit_step.trt10.13.sm90.plan`), so plans
for several TensorRT releases or GPUs can sit side by side; its record under manifest
`"engines"` holds everything staleness is decided from: the ONNX sha256, the full TensorRT
version, the GPU name and compute capability, the precision, the I/O shapes, the build options,
and the plan's own sha256. Anything that differs → rebuilt by `build`, refused by the runtime.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dit_export.errors import UserError
from dit_export.export.manifest import FILENAME, read_manifest, sha256_file
from dit_export.fileio import atomic_path

PLAN_GRAPHS = ("dit_step", "vae_decoder", "dit")  # sampling needs the first two; verify uses dit


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
        return ".".join(self.tensorrt.split(".")[:2])

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt} on {self.gpu_name} ({self.sm})"

    @staticmethod
    def current() -> Target:
        from dit_export.engine import trt_api
        from dit_export.engine.cuda import gpu_count, gpu_info

        v = trt_api.version()
        if gpu_count() == 0:
            raise UserError(f"TensorRT {v} is installed but no CUDA GPU is visible")
        g = gpu_info()
        return Target(v, g.name, g.compute_capability)


def plan_name(graph: str, target: Target) -> str:
    return f"{graph}.trt{target.trt_short}.{target.sm}.plan"


def timing_cache_name(target: Target) -> str:
    return f"timing.trt{target.trt_short}.{target.sm}.cache"


def graph_shapes(manifest: dict, graph: str) -> dict[str, list[int]]:
    g = manifest["graphs"][graph]
    return {t["name"]: list(t["shape"]) for t in g["inputs"] + g["outputs"]}


def expected_record(manifest: dict, graph: str, target: Target, options: dict | None) -> dict:
    """The record a fresh plan of `graph` has (without its own file hash and build time)."""
    rec = {
        "graph": graph,
        "onnx_file": manifest["graphs"][graph]["file"],
        "onnx_sha256": manifest["graphs"][graph]["sha256"],
        "tensorrt": target.tensorrt,
        "gpu": target.gpu_name,
        "compute_capability": target.compute_capability,
        "precision": manifest["precision"],
        "shapes": graph_shapes(manifest, graph),
    }
    if options is not None:
        rec["options"] = options
    return rec


def plan_status(
    folder: Path,
    manifest: dict,
    graph: str,
    target: Target,
    options: dict | None = None,
    check_hash: bool = True,
) -> tuple[str, str]:
    """("fresh" | "missing" | "stale", why) for the plan of `graph` on `target`."""
    name = plan_name(graph, target)
    rec = manifest.get("engines", {}).get(name)
    if not isinstance(rec, dict):
        others = sorted(
            k
            for k, r in manifest.get("engines", {}).items()
            if isinstance(r, dict) and r.get("graph") == graph
        )
        extra = f" (the folder has {', '.join(others)})" if others else ""
        return "missing", f"no {graph} engine for {target.describe()}{extra}"
    path = Path(folder) / name
    if not path.is_file():
        return "missing", f"{name} is recorded in the manifest but the file is missing"
    want = expected_record(manifest, graph, target, options)
    labels = {
        "onnx_sha256": f"{want['onnx_file']} changed since the engine was built",
        "tensorrt": f"built with TensorRT {rec.get('tensorrt')}, this is TensorRT {target.tensorrt}",
        "gpu": f"built on {rec.get('gpu')}, this GPU is {target.gpu_name}",
        "compute_capability": f"built for compute capability {rec.get('compute_capability')}, this GPU has {target.compute_capability}",
        "precision": f"built from a {rec.get('precision')} graph, the export is {manifest['precision']}",
        "shapes": "built for other tensor shapes",
        "options": "built with other build options",
    }
    for key, value in want.items():
        if rec.get(key) != value:
            return "stale", f"{name}: {labels.get(key, key + ' differs')}"
    if path.stat().st_size != rec.get("bytes"):
        return (
            "stale",
            f"{name} has {path.stat().st_size} bytes, the manifest says {rec.get('bytes')} (truncated or replaced)",
        )
    if check_hash and sha256_file(path) != rec.get("sha256"):
        return "stale", f"{name} does not match its sha256 in the manifest (corrupt or replaced)"
    return "fresh", name


def update_manifest(folder: Path, update: Callable[[dict], None]) -> dict:
    """Read the manifest, apply `update` in place, write it back atomically; returns it."""
    folder = Path(folder)
    m = read_manifest(folder)
    update(m)
    with atomic_path(folder / FILENAME) as tmp:
        tmp.write_text(json.dumps(m, indent=1, allow_nan=False) + "\n")
    return m


@dataclass
class PlanRow:
    graph: str
    file: str
    status: str  # "reused" | "built"
    why: str
    seconds: float
    bytes: int


def build_plans(
    folder: Path,
    target: Target,
    options,
    graphs: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[PlanRow]:
    """Build (or reuse) the plan of every graph; each plan and its record land atomically."""
    from dit_export.engine import trt_api

    folder = Path(folder)
    manifest = read_manifest(folder)
    opts = options.to_dict()
    rows = []
    cache = folder / timing_cache_name(target)
    for graph in graphs or [g for g in PLAN_GRAPHS if manifest["graphs"].get(g)]:
        status, why = plan_status(folder, manifest, graph, target, opts)
        name = plan_name(graph, target)
        if status == "fresh":
            rows.append(PlanRow(graph, name, "reused", "unchanged", 0.0, (folder / name).stat().st_size))
            continue
        log(f"building {name} ({why}) ...")
        t0 = time.perf_counter()
        onnx_path = folder / manifest["graphs"][graph]["file"]
        shapes = {t["name"]: t["shape"] for t in manifest["graphs"][graph]["inputs"]}
        blob = trt_api.build_plan(onnx_path, shapes, options, timing_cache=cache)
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(blob)
        seconds = time.perf_counter() - t0
        record = expected_record(manifest, graph, target, opts)
        record.update(
            file=name,
            sha256=sha256_file(folder / name),
            bytes=(folder / name).stat().st_size,
            build_seconds=round(seconds, 1),
            built=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            timing_cache=cache.name,
        )

        def add(m: dict, name: str = name, record: dict = record) -> None:
            m.setdefault("engines", {})[name] = record

        manifest = update_manifest(folder, add)
        rows.append(PlanRow(graph, name, "built", why, seconds, len(blob)))
    return rows


def find_plan(folder: Path, manifest: dict, graph: str, target: Target) -> Path:
    """The fresh plan of `graph` for this TensorRT and GPU; a one-line error saying what to do."""
    status, why = plan_status(folder, manifest, graph, target)
    if status != "fresh":
        raise UserError(
            f"{folder}: {why}; rebuild with: python -m dit_export build --backend tensorrt --out {folder} "
            "(with the model flags used before)"
        )
    return Path(folder) / plan_name(graph, target)
