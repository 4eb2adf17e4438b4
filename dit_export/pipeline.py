"""`build`: export → TensorRT plans → a short verify → a summary, reusing whatever is unchanged.

    result = build(BuildConfig(model=ModelSpec(model="XL/2", random_weights=True)))
    print(result.summary())

The pipeline sits above every stage and reads top to bottom: `build` takes the lock and runs
three steps, each a small callable (polygraphy's loader shape: arguments stored in `__init__`,
the work in `__call__`, each testable on its own): `EnsureExport`, `EnsurePlans`, `VerifyBuild`.
`AddAotiPackages` compiles the C++ runtime's CPU packages the same way.

Reuse and the `auto` backend are the folder's decisions (`runtime.folder.ExportFolder`: the rules
are stated there once, and `bench`, `serve`, `verify` and the runtime ask the same object). One
ExportFolder goes through the three steps, so a build reads manifest.json once (twice when it
re-exports: the old one, then the new one). The export's manifest is never rewritten: plans and
AOTI packages carry their own records in `plans/` and `aoti/`, and a re-export moves those two
folders aside (one rename each, under the lock) and back.

Interruptions: the export builds in a hidden sibling and swaps in whole; every file is written
under a temporary name and renamed; a lock beside the folder stops a second build of it. After
Ctrl-C or kill the folder holds only complete files, and the next build picks up from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dit_export.backends import canonical_backend
from dit_export.engine import aoti, trt_api
from dit_export.engine.lock import BuildLock
from dit_export.engine.plans import PLANS_DIR, Target, build_plans
from dit_export.engine.records import drop_stale, graph_names, graph_source
from dit_export.errors import UserError
from dit_export.export import exporter
from dit_export.export.child import export_in_child
from dit_export.export.manifest import FILENAME
from dit_export.export.precision import check_backend
from dit_export.export.schedule_tables import add_tables
from dit_export.export.trt_ops import DEFAULT_OPSET, OPSET_MAX, OPSET_MIN
from dit_export.fileio import ensure_writable_dir, write_json
from dit_export.models.spec import ModelSpec
from dit_export.runtime import folder as folders
from dit_export.runtime.folder import (
    BUILD_RECORD,
    BUILD_SCHEMA,
    COMPILED_DIRS,
    ExportFolder,
    pending_record,
    read_build_record,
    record_request,
)
from dit_export.sampling import samplers
from dit_export.sampling.cache import DEFAULT_ORDER as DEFAULT_CACHE_ORDER
from dit_export.sampling.cache import MAX_ORDER as MAX_CACHE_ORDER
from dit_export.sampling.request import MAX_SEED, NUM_TRAIN_STEPS
from dit_export.verify.run import format_table, summary_line, verify

PRECISIONS = ("fp16", "fp32", "int8", "fp8")  # export.precision.PRECISIONS (int8/fp8: issue 22)
BUILD_BACKENDS = ("ort", "trt")  # what build can make: TensorRT plans, or the graphs for ONNX Runtime

Log = Callable[[str], None]


# ------------------------------------------------------------------------------ config and result


@dataclass(frozen=True)
class BuildConfig:
    """Which model (`ModelSpec`) and the build's own fields; `validate()` makes every check once."""

    model: ModelSpec
    out: Path | None = None  # default: engines/<ModelSpec.folder_name(precision, batch)>
    batch: int = 1
    precision: str = "fp16"
    opset: int | None = None  # default DEFAULT_OPSET
    backend: str = "auto"  # ort | trt | auto (onnxruntime / tensorrt accepted)
    force: bool = False
    verify: bool = True
    verify_seeds: tuple[int, ...] = (0,)
    verify_steps: int = 10
    workspace_gib: float = 4.0
    opt_level: int = 3
    schedules: tuple[tuple[str, int], ...] = ()  # extra (sampler, steps) tables to store (--schedules)
    max_cache_order: int | None = DEFAULT_CACHE_ORDER  # forecast-cache graphs' largest order (None: none)

    def validate(self) -> BuildConfig:
        """The normalised config (canonical backend word, default out, tuple seeds); one-line UserError."""
        _int_in("--batch", self.batch, 1, 4096)
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.opset is not None:
            _int_in("--opset", self.opset, OPSET_MIN, OPSET_MAX)
        backend = canonical_backend(self.backend, allow_auto=True, allowed=BUILD_BACKENDS)
        seeds = tuple(self.verify_seeds) if isinstance(self.verify_seeds, (list, tuple)) else None
        if not seeds:
            raise UserError(f"--verify-seeds needs at least one seed, got {self.verify_seeds!r}")
        for s in seeds:
            _int_in("--verify-seeds", s, 0, MAX_SEED)
        _int_in("--verify-steps", self.verify_steps, 1, NUM_TRAIN_STEPS)
        _int_in("--opt-level", self.opt_level, 0, 5)
        if self.max_cache_order is not None:
            _int_in("--max-cache-order", self.max_cache_order, 0, MAX_CACHE_ORDER)
        gib = self.workspace_gib
        if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not math.isfinite(gib) or gib <= 0:
            raise UserError(f"--workspace-gib must be a positive number, got {gib!r}")
        spec = self.model.validate()
        out = Path(self.out) if self.out else Path("engines") / spec.folder_name(self.precision, self.batch)
        schedules = tuple(
            (samplers.get(s).name, int(samplers.get(s).check_steps(n))) for s, n in self.schedules
        )
        return dataclasses.replace(
            self, model=spec, out=out, backend=backend, verify_seeds=seeds, schedules=schedules
        )

    def trt_options(self) -> trt_api.BuildOptions:
        return trt_api.BuildOptions(
            workspace_bytes=int(self.workspace_gib * 2**30), optimization_level=self.opt_level
        )


def _int_in(flag: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise UserError(f"{flag} must be in {lo}..{hi}, got {value}")


@dataclass
class StageRow:
    stage: str
    result: str
    seconds: float | None
    detail: str


@dataclass
class BuildResult:
    rows: list[StageRow]
    passed: bool
    out: Path
    backend: str  # "trt" | "ort"

    def __iter__(self) -> Iterator[Any]:  # rows, passed, out = build(cfg)
        return iter((self.rows, self.passed, self.out))

    def summary(self) -> str:
        return format_summary(self.rows, self.out)


# ------------------------------------------------------------------------------ the pipeline


def build(config: BuildConfig, log: Log = print) -> BuildResult:
    """Export → plans → verify, reusing what is unchanged; returns the summary rows."""
    cfg = config.validate()
    backend, line = choose_backend(cfg.backend)
    check_backend(cfg.precision, backend)  # e.g. fp8 on a CPU machine: one line (issue 22)
    log(line)
    out = Path(cfg.out)  # type: ignore[arg-type]  (validate() sets it)
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    with BuildLock(out):
        ensure = EnsureExport(cfg, out, log)
        rows = [ensure()]
        folder = ensure.folder  # the export as it now is, its manifest read once
        if backend == "trt":
            rows += EnsurePlans(folder, cfg.trt_options(), log)()
        else:
            rows.append(StageRow("engines", "none", None, "onnxruntime runs the ONNX graphs directly"))
        verify_row = VerifyBuild(cfg, folder, backend, log)()
        rows.append(verify_row)
    return BuildResult(rows, verify_row.result != "FAILED", out, backend)


def choose_backend(requested: str) -> tuple[str, str]:
    """("trt" | "ort", one line saying which and why) for a build: the folder's `auto` rule
    (`runtime.folder`) before the plans exist; `trt` without TensorRT → one-line error."""
    return folders.choose_backend(requested, allowed=BUILD_BACKENDS)


def default_out(model: ModelSpec, precision: str = "fp16", batch: int = 1) -> Path:
    """engines/<model>-<image size>-<precision>-b<N> (named from the spec, never from the weights)."""
    return Path("engines") / model.validate().folder_name(precision, batch)


# ------------------------------------------------------------------------------ step 1: the export


def export_request(cfg: BuildConfig) -> dict:
    """Everything the export depends on, normalised (recorded in build.json as "request")."""
    return folders.export_request(
        cfg.model, cfg.batch, cfg.precision, cfg.opset or DEFAULT_OPSET, cfg.max_cache_order
    )


def why_stale(out: Path, request: dict, force: bool) -> str | None:
    """None when the existing export can be reused as is; else the reason to (re-)export
    (`ExportFolder.why_stale`: the one reuse rule)."""
    return ExportFolder(out).why_stale(request, force)


class EnsureExport:
    """Reuse the folder's export when its request and hashes match, else export (keeping plans/ and aoti/).

    After the call, `folder` is the export as it now is (one ExportFolder: the manifest read once).
    """

    def __init__(self, cfg: BuildConfig, out: Path, log: Log = print) -> None:
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.folder = ExportFolder(self.out)

    def __call__(self) -> StageRow:
        t0 = time.perf_counter()
        self._recover()
        request = export_request(self.cfg)
        why = self.folder.why_stale(request, self.cfg.force)
        if why is None:
            detail = graph_sizes(self.folder) + " (unchanged, sha256 checked)"
            if self.cfg.schedules:  # tables the reused export lacks go to its schedules sidecar
                added = add_tables(self.out, self.cfg.schedules)
                detail += f"; {len(added)} schedule table(s) added" if added else ""
            return StageRow("export", "reused", time.perf_counter() - t0, detail)
        self.log(f"exporting to {self.out} ({why}) ...")
        write_json(pending_record(self.out), {"schema": BUILD_SCHEMA, "request": request})
        set_aside = self._set_aside()
        export_in_child(self._options(), log=self.log)
        self.folder = ExportFolder(self.out)  # the new export: read once from here on
        kept = self._bring_back(set_aside)
        record_request(self.out, request)
        pending_record(self.out).unlink(missing_ok=True)
        extra = f"; {kept} compiled artifact(s) kept" if kept else ""
        detail = f"{graph_sizes(self.folder)} ({why}{extra})"
        return StageRow("export", "exported", time.perf_counter() - t0, detail)

    def _options(self) -> exporter.ExportOptions:
        cfg = self.cfg
        return exporter.ExportOptions(
            model=cfg.model,
            out=self.out,
            batch=cfg.batch,
            precision=cfg.precision,
            opset=cfg.opset or DEFAULT_OPSET,
            check=True,
            force=True,
            schedules=tuple(cfg.schedules),
            max_cache_order=cfg.max_cache_order,
        )

    def _aside(self, name: str) -> Path:
        return self.out.with_name(f".{self.out.name}.{name}")

    def _set_aside(self) -> list[str]:
        """Move plans/ and aoti/ beside the folder (the export swaps the folder whole)."""
        moved = []
        for name in COMPILED_DIRS:
            if (self.out / name).is_dir():
                shutil.rmtree(self._aside(name), ignore_errors=True)
                os.replace(self.out / name, self._aside(name))
                moved.append(name)
        return moved

    def _bring_back(self, names: list[str]) -> int:
        """Put them back, dropping artifacts whose ONNX graph changed; returns how many were kept."""
        for name in names:
            if self._aside(name).is_dir() and not (self.out / name).exists():
                os.replace(self._aside(name), self.out / name)
            shutil.rmtree(self._aside(name), ignore_errors=True)
        manifest = self.folder.manifest
        kept = drop_stale(self.out, manifest, PLANS_DIR, ".plan")[0]
        kept += drop_stale(self.out, manifest, aoti.AOTI_DIR, aoti.SUFFIX)[0]
        self.folder.forget("plans", "aoti")
        return kept

    def _recover(self) -> None:
        """Clean what a killed build left: a killed export's scratch folders (by the export's own
        clean-up under the export's lock: a live plain `export` of this folder keeps its scratch),
        compiled folders set aside."""
        with contextlib.suppress(UserError):  # "another export of … is running": nothing here is stale
            with exporter.export_lock(self.out):
                exporter.remove_stale_partials(self.out)
        if (self.out / BUILD_RECORD).exists():  # killed after the export was recorded
            pending_record(self.out).unlink(missing_ok=True)
        if (self.out / FILENAME).exists():
            self._bring_back([n for n in COMPILED_DIRS if self._aside(n).is_dir()])
        else:
            for name in COMPILED_DIRS:
                shutil.rmtree(self._aside(name), ignore_errors=True)


def graph_sizes(folder: Path | ExportFolder) -> str:
    manifest = ExportFolder.of(folder).manifest
    sources = [graph_source(manifest, name) for name in graph_names(manifest)]
    return ", ".join(f"{g.file} {g.bytes / 1e6:.1f} MB" for g in sources if g is not None)


# ------------------------------------------------------------------------------ step 2: plans


class EnsurePlans:
    """Build (or reuse) the TensorRT plan of every graph for this TensorRT release and GPU."""

    def __init__(self, out: Path | ExportFolder, options: trt_api.BuildOptions, log: Log = print) -> None:
        self.folder, self.options, self.log = ExportFolder.of(out), options, log

    def __call__(self) -> list[StageRow]:
        target = Target.current()
        built = build_plans(
            self.folder.path, target, self.options, log=self.log, manifest=self.folder.manifest
        )
        self.folder.forget("plans")
        return [
            StageRow(
                f"engine {r.graph}",
                r.status,
                r.seconds if r.status == "built" else 0.0,
                f"{r.file} {r.bytes / 1e6:.1f} MB ({r.why}; {target.describe()})",
            )
            for r in built
        ]


# ------------------------------------------------------------------------------ step 3: verify


class VerifyBuild:
    """A short verify of the chosen backend against PyTorch fp32; the report goes into build.json."""

    def __init__(self, cfg: BuildConfig, out: Path | ExportFolder, backend: str, log: Log = print) -> None:
        self.cfg, self.folder, self.backend, self.log = cfg, ExportFolder.of(out), backend, log
        self.out = self.folder.path

    def __call__(self) -> StageRow:
        cfg = self.cfg
        if not cfg.verify:
            return StageRow("verify", "skipped", None, "--no-verify")
        t0 = time.perf_counter()
        seeds = list(cfg.verify_seeds)
        report = verify(self.folder, backend=self.backend, seeds=seeds, steps=cfg.verify_steps, log=self.log,
                        progress=sys.stderr.isatty())  # fmt: skip
        self.log(format_table(report))
        record = self.folder.build_record or {"schema": BUILD_SCHEMA}
        write_json(self.out / BUILD_RECORD, {**record, "verify": report.to_dict()})
        self.folder.forget("build")
        detail = f"{self.backend} vs torch fp32, seeds {' '.join(map(str, seeds))}, {cfg.verify_steps} steps"
        worst = report.worst("latents")
        if not report.passed:
            detail += ": " + summary_line(report).removeprefix("verify ")
        elif worst is not None:
            detail += f": final latents rel-L2 {worst.value:.1e} (≤ {worst.limit:g})"
        return StageRow("verify", "passed" if report.passed else "FAILED", time.perf_counter() - t0, detail)


# ------------------------------------------------------------------------------ AOTI packages


class AddAotiPackages:
    """Compile the C++ runtime's CPU packages into an export (`engine.aoti`), under the build lock."""

    def __init__(self, folder: Path, graphs: tuple[str, ...] | None = None, log: Log = print) -> None:
        self.folder, self.graphs, self.log = Path(folder), graphs, log

    def __call__(self) -> dict[str, dict]:
        with BuildLock(self.folder):
            return aoti.add_aoti_packages(self.folder, self.graphs, log=self.log)


def add_aoti_packages(folder: Path, graphs: tuple[str, ...] | None = None, log: Log = print) -> dict:
    """{graph: record} of the packages now in `folder/aoti/`."""
    return AddAotiPackages(folder, graphs, log)()


# ------------------------------------------------------------------------------ summary


def format_summary(rows: list[StageRow] | BuildResult, out: Path | None = None) -> str:
    """The summary table (stage, result, time, detail) and the folder; takes a BuildResult or its rows."""
    if isinstance(rows, BuildResult):
        rows, out = rows.rows, rows.out
    w = max(len(r.stage) for r in rows)
    lines = [f"{'stage':<{w}}  {'result':<8} {'time':>8}  detail"]
    for r in rows:
        t = "" if r.seconds is None else f"{r.seconds:.1f} s"
        lines.append(f"{r.stage:<{w}}  {r.result:<8} {t:>8}  {r.detail}")
    lines.append(f"folder: {out}")
    return "\n".join(lines)


__all__ = [
    "AddAotiPackages",
    "BuildConfig",
    "BuildResult",
    "EnsureExport",
    "EnsurePlans",
    "StageRow",
    "VerifyBuild",
    "add_aoti_packages",
    "build",
    "choose_backend",
    "default_out",
    "export_in_child",
    "export_request",
    "format_summary",
    "read_build_record",
    "why_stale",
]
