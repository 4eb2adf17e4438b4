"""`build`: export → TensorRT plans → a short verify → a summary, reusing whatever is unchanged.

    result = build(BuildConfig(model=ModelSpec(model="XL/2", random_weights=True)))
    print(result.summary())

The pipeline sits above every stage and reads top to bottom: `build` takes the lock and runs
three steps, each a small callable (polygraphy's loader shape: arguments stored in `__init__`,
the work in `__call__`, each testable on its own): `EnsureExport`, `EnsurePlans`, `VerifyBuild`.
`AddAotiPackages` compiles the C++ runtime's CPU packages the same way.

Reuse: the export is reused when the folder's `build.json` request (model spec, the weights'
file size/mtime, VAE, batch, precision, opset) equals this request and every graph still matches
its sha256; plans are reused when their own records match (`engine.plans`). The export's
manifest is never rewritten: plans and AOTI packages carry their own records in `plans/` and
`aoti/`, and a re-export moves those two folders aside (one rename each, under the lock) and back.

Interruptions: the export builds in a hidden sibling and swaps in whole; every file is written
under a temporary name and renamed; a lock beside the folder stops a second build of it. After
Ctrl-C or kill the folder holds only complete files, and the next build picks up from there.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from dit_export.backends import LONG_NAMES, canonical_backend
from dit_export.engine import aoti, trt_api
from dit_export.engine.lock import BuildLock
from dit_export.engine.plans import PLANS_DIR, Target, build_plans
from dit_export.engine.records import drop_stale, graph_names, graph_source, read_export, verify_export
from dit_export.errors import UserError
from dit_export.export import exporter
from dit_export.export.manifest import FILENAME
from dit_export.export.trt_ops import DEFAULT_OPSET, OPSET_MAX, OPSET_MIN
from dit_export.fileio import ensure_writable_dir, read_json_or_none, write_json
from dit_export.models.spec import ModelSpec
from dit_export.runtime.ort_backend import default_providers
from dit_export.sampling.request import MAX_SEED, NUM_TRAIN_STEPS
from dit_export.verify.run import format_table, summary_line, verify

BUILD_RECORD = "build.json"
BUILD_SCHEMA = "dit_export.build/1"
COMPILED_DIRS = (PLANS_DIR, aoti.AOTI_DIR)  # engine/'s artifacts: kept across a re-export
PRECISIONS = ("fp16", "fp32")

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

    def validate(self) -> BuildConfig:
        """The normalised config (canonical backend word, default out, tuple seeds); one-line UserError."""
        _int_in("--batch", self.batch, 1, 4096)
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.opset is not None:
            _int_in("--opset", self.opset, OPSET_MIN, OPSET_MAX)
        backend = canonical_backend(self.backend, allow_auto=True, allowed=("ort", "trt"))
        seeds = tuple(self.verify_seeds) if isinstance(self.verify_seeds, (list, tuple)) else None
        if not seeds:
            raise UserError(f"--verify-seeds needs at least one seed, got {self.verify_seeds!r}")
        for s in seeds:
            _int_in("--verify-seeds", s, 0, MAX_SEED)
        _int_in("--verify-steps", self.verify_steps, 1, NUM_TRAIN_STEPS)
        _int_in("--opt-level", self.opt_level, 0, 5)
        gib = self.workspace_gib
        if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not math.isfinite(gib) or gib <= 0:
            raise UserError(f"--workspace-gib must be a positive number, got {gib!r}")
        spec = self.model.validate()
        out = Path(self.out) if self.out else Path("engines") / spec.folder_name(self.precision, self.batch)
        return dataclasses.replace(self, model=spec, out=out, backend=backend, verify_seeds=seeds)

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
    log(line)
    out = Path(cfg.out)  # type: ignore[arg-type]  (validate() sets it)
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    with BuildLock(out):
        rows = [EnsureExport(cfg, out, log)()]
        if backend == "trt":
            rows += EnsurePlans(out, cfg.trt_options(), log)()
        else:
            rows.append(StageRow("engines", "none", None, "onnxruntime runs the ONNX graphs directly"))
        verify_row = VerifyBuild(cfg, out, backend, log)()
        rows.append(verify_row)
    return BuildResult(rows, verify_row.result != "FAILED", out, backend)


def choose_backend(requested: str) -> tuple[str, str]:
    """("trt" | "ort", one line saying which and why); `trt` without TensorRT → one-line error."""
    requested = canonical_backend(requested, allow_auto=True, allowed=("ort", "trt"))
    ort = f"{LONG_NAMES['ort']} ({default_providers()[0]})"
    if requested == "ort":
        return "ort", f"backend: {ort}, as requested"
    ok, why = trt_api.probe()
    if requested == "trt":
        if not ok:
            raise UserError(f"--backend tensorrt: {why}")
        return "trt", f"backend: tensorrt ({why})"
    if ok:
        return "trt", f"backend auto → tensorrt: {why}"
    return "ort", f"backend auto → {ort}: {why}"


def default_out(model: ModelSpec, precision: str = "fp16", batch: int = 1) -> Path:
    """engines/<model>-<image size>-<precision>-b<N> (named from the spec, never from the weights)."""
    return Path("engines") / model.validate().folder_name(precision, batch)


# ------------------------------------------------------------------------------ step 1: the export


def _fingerprint(spec: str | None) -> dict | None:
    """Size and mtime of a local weights file or folder (None for hub ids and shorthands)."""
    if not spec:
        return None
    p = Path(spec).expanduser()
    if p.is_file():
        st = p.stat()
        return {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return {
            "path": str(p.resolve()),
            "bytes": sum(f.stat().st_size for f in files),
            "mtime_ns": max((f.stat().st_mtime_ns for f in files), default=0),
            "files": len(files),
        }
    return None


def export_request(cfg: BuildConfig) -> dict:
    """Everything the export depends on, normalised (recorded in build.json as "request")."""
    spec = cfg.model.validate()
    return {
        **spec.to_dict(),
        "ckpt_file": _fingerprint(spec.ckpt),
        "vae_file": _fingerprint(spec.vae),
        "batch": int(cfg.batch),
        "precision": cfg.precision,
        "opset": int(cfg.opset or DEFAULT_OPSET),
    }


def read_build_record(folder: Path) -> dict | None:
    """The folder's build.json ({"schema", "request", "verify"}), None when `build` did not make it."""
    rec = read_json_or_none(Path(folder) / BUILD_RECORD)
    return rec if isinstance(rec, dict) and rec.get("schema") == BUILD_SCHEMA else None


def _pending_record(out: Path) -> Path:
    """Written beside the folder before a (re-)export, moved into it after: a kill in between is ours."""
    return out.with_name(f".{out.name}.{BUILD_RECORD}")


def why_stale(out: Path, request: dict, force: bool) -> str | None:
    """None when the existing export can be reused as is; else the reason to (re-)export."""
    if not (out / FILENAME).exists():
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise UserError(f"--out {out} is not empty and holds no export; pass --force to use it anyway")
        return "no export yet"
    try:
        verify_export(out, read_export(out))
    except UserError as e:
        return f"the existing export is not valid ({e})"
    record = read_build_record(out)
    if record is None:
        if _pending_record(out).is_file():
            return "an interrupted build"
        if not force:
            raise UserError(
                f"{out} holds an export that `build` did not make; pass --force to rebuild it, "
                "or choose another --out"
            )
        return "--force on an export made by `export`"
    prev = record.get("request") or {}
    if prev != request:
        changed = sorted(k for k in set(prev) | set(request) if prev.get(k) != request.get(k))
        return "changed: " + ", ".join(changed)
    return None


class EnsureExport:
    """Reuse the folder's export when its request and hashes match, else export (keeping plans/ and aoti/)."""

    def __init__(self, cfg: BuildConfig, out: Path, log: Log = print) -> None:
        self.cfg, self.out, self.log = cfg, Path(out), log

    def __call__(self) -> StageRow:
        t0 = time.perf_counter()
        self._recover()
        request = export_request(self.cfg)
        why = why_stale(self.out, request, self.cfg.force)
        if why is None:
            detail = graph_sizes(self.out) + " (unchanged, sha256 checked)"
            return StageRow("export", "reused", time.perf_counter() - t0, detail)
        self.log(f"exporting to {self.out} ({why}) ...")
        write_json(_pending_record(self.out), {"schema": BUILD_SCHEMA, "request": request})
        set_aside = self._set_aside()
        export_in_child(self._options(), log=self.log)
        kept = self._bring_back(set_aside)
        write_json(self.out / BUILD_RECORD, {"schema": BUILD_SCHEMA, "request": request})
        _pending_record(self.out).unlink(missing_ok=True)
        extra = f"; {kept} compiled artifact(s) kept" if kept else ""
        detail = f"{graph_sizes(self.out)} ({why}{extra})"
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
        manifest = read_export(self.out)
        kept = drop_stale(self.out, manifest, PLANS_DIR, ".plan")[0]
        return kept + drop_stale(self.out, manifest, aoti.AOTI_DIR, aoti.SUFFIX)[0]

    def _recover(self) -> None:
        """Clean what a killed build left: a killed export's scratch folders (by the export's own
        clean-up under the export's lock: a live plain `export` of this folder keeps its scratch),
        compiled folders set aside."""
        with contextlib.suppress(UserError):  # "another export of … is running": nothing here is stale
            with exporter.export_lock(self.out):
                exporter.remove_stale_partials(self.out)
        if (self.out / BUILD_RECORD).exists():  # killed after the export was recorded
            _pending_record(self.out).unlink(missing_ok=True)
        if (self.out / FILENAME).exists():
            self._bring_back([n for n in COMPILED_DIRS if self._aside(n).is_dir()])
        else:
            for name in COMPILED_DIRS:
                shutil.rmtree(self._aside(name), ignore_errors=True)


def export_in_child(options: exporter.ExportOptions, log: Log = print) -> None:
    """`exporter.export` in a fresh interpreter, so that all its memory goes back to the OS before
    verify loads the reference: torch.export and onnxscript keep the last traced graph in module
    globals, and the heap stays fragmented (XL/2 fp16 build on CPU: 8.7 GB peak RSS in one
    process). Progress lines come back through a pipe; errors are raised here as they were there.
    A plain subprocess, not multiprocessing's spawn: that would re-run the caller's script.
    """
    r, w = os.pipe()
    code = (  # our import path first (dit_export is found however we found it), then the options
        "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
        "from dit_export.pipeline import _export_child; _export_child(*map(int, sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(w), str(os.getpid())], stdin=subprocess.PIPE, pass_fds=(w,)
    )
    os.close(w)
    recv = Connection(r)
    try:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: reported below
            pickle.dump(sys.path, proc.stdin)
            pickle.dump(options, proc.stdin)
            proc.stdin.close()
        while True:
            try:
                kind, payload = recv.recv()
            except EOFError:  # it died without a word: killed, out of memory
                kind, payload = "died", None
            if kind != "log":
                break
            log(payload)
    except BaseException:  # Ctrl-C here (or a failing log): the export stops too and cleans up
        try:  # a terminal's Ctrl-C reached it too; a second SIGINT could cut its clean-up short
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        raise
    finally:
        proc.wait()
        recv.close()
    if kind == "died":
        raise UserError(f"the export process died (exit status {proc.returncode}); out of memory?")
    if kind == "error":
        raise payload


def _export_child(fd: int, parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent (kill -9)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        return
    send = Connection(fd)
    try:
        options = pickle.load(sys.stdin.buffer)
        exporter.export(options, log=lambda line: send.send(("log", line)))
        send.send(("done", None))
    except KeyboardInterrupt:
        pass  # the parent was interrupted too and reports it
    except Exception as e:
        try:
            send.send(("error", e))
        except Exception:  # an exception that does not pickle: its type and text
            send.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))


def graph_sizes(out: Path) -> str:
    manifest = read_export(out)
    sources = [graph_source(manifest, name) for name in graph_names(manifest)]
    return ", ".join(f"{g.file} {g.bytes / 1e6:.1f} MB" for g in sources if g is not None)


# ------------------------------------------------------------------------------ step 2: plans


class EnsurePlans:
    """Build (or reuse) the TensorRT plan of every graph for this TensorRT release and GPU."""

    def __init__(self, out: Path, options: trt_api.BuildOptions, log: Log = print) -> None:
        self.out, self.options, self.log = Path(out), options, log

    def __call__(self) -> list[StageRow]:
        target = Target.current()
        return [
            StageRow(
                f"engine {r.graph}",
                r.status,
                r.seconds if r.status == "built" else 0.0,
                f"{r.file} {r.bytes / 1e6:.1f} MB ({r.why}; {target.describe()})",
            )
            for r in build_plans(self.out, target, self.options, log=self.log)
        ]


# ------------------------------------------------------------------------------ step 3: verify


class VerifyBuild:
    """A short verify of the chosen backend against PyTorch fp32; the report goes into build.json."""

    def __init__(self, cfg: BuildConfig, out: Path, backend: str, log: Log = print) -> None:
        self.cfg, self.out, self.backend, self.log = cfg, Path(out), backend, log

    def __call__(self) -> StageRow:
        cfg = self.cfg
        if not cfg.verify:
            return StageRow("verify", "skipped", None, "--no-verify")
        t0 = time.perf_counter()
        seeds = list(cfg.verify_seeds)
        report = verify(self.out, backend=self.backend, seeds=seeds, steps=cfg.verify_steps, log=self.log,
                        progress=sys.stderr.isatty())  # fmt: skip
        self.log(format_table(report))
        record = read_build_record(self.out) or {"schema": BUILD_SCHEMA}
        write_json(self.out / BUILD_RECORD, {**record, "verify": report.to_dict()})
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
