"""One export folder as one object: `manifest.json` and its sidecars, each read at most once.

    folder = ExportFolder.open("engines/DiT-XL-2-256-fp16-b4")   # reads manifest.json (Manifest.read)
    backend, why = folder.choose_backend("auto")
    sampler = Sampler.load(folder, backend)                         # no second read

`ExportFolder(path)` reads nothing; `manifest` is read on first use with `Manifest.read` (the one
reader), each sidecar the first time it is asked for (`SIDECARS`), the graph files are hashed at
most once. Every stage above engine/ (the runtime's `Sampler.load`, verify, bench, serve, the
pipeline, the CLI) passes this object on instead of re-reading the folder, so one command reads
the manifest once. It owns three decisions, each stated here and nowhere else:

Reuse (`why_stale`, asked by `build` and `bench`): an existing export is reused as is when
  1. `manifest.json` is there (a non-empty folder without one is refused unless --force),
  2. every graph file still matches its size and sha256 and its I/O the manifest's,
  3. `build.json` (written by `build` and `bench` after their export) records a request — model
     spec, the weights' size/mtime, batch, precision, opset, cache order — equal to this one
     (`bench` asks `more_cache_ok`: a folder with the cache graphs of a higher order than it
     times, or any when it times none, is reused too; `build` wants the very request).
  A folder without `build.json` is an interrupted build (re-exported) or an export made by hand
  with `export` (refused unless --force, then re-exported). Plans and AOTI packages are reused
  while their own records match (`engine.plans`, `engine.aoti`); a re-export keeps those whose
  ONNX graph did not change. Whether a folder may be overwritten at all is the exporter's own
  check (`export.exporter.check_out_dir`).

Backend `auto` (`choose_backend`; cpp/src/runtime.cpp's DIT_BACKEND_AUTO follows the same rule):
  TensorRT when TensorRT works on the machine that runs the folder (it imports and sees a CUDA
  GPU) and the folder holds a plan of every graph it runs (the forecast cache's step graphs
  too, when exported) for that TensorRT release and GPU;
  otherwise the CPU runtime: ONNX Runtime in Python, the AOTInductor packages in C++ (which has no
  ONNX Runtime). A plan that is there but stale (its ONNX, TensorRT or build options changed) is
  not a reason to fall back: the load fails with the rebuild command. `build` makes the plans, so
  `build --backend auto` asks only the first half; the folder it leaves then answers `auto` the
  same way. A runtime on another machine (`triton-repo`: the Triton server) cannot be probed from
  here: there `auto` is TensorRT when the folder holds plans of every graph it runs, for any GPU.

Sidecars are the files beside `manifest.json` that later stages write (the manifest is written
once and never rewritten): `build.json`, `plans/*.plan.json`, `aoti/*.pt2.json`. A new sidecar is
one entry in `SIDECARS` (name → reader of the folder path; None when absent, a one-line UserError
when present but bad) and is then `folder.sidecar(name)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dit_export.backends import BACKENDS, LONG_NAMES, canonical_backend, default_ort_providers
from dit_export.engine import aoti, trt_api
from dit_export.engine.plans import PLANS_DIR, Target, find_plan, list_plans, plan_status
from dit_export.errors import UserError
from dit_export.export.manifest import FILENAME, CacheInfo, Manifest
from dit_export.export.manifest.rules import no_cache_message
from dit_export.fileio import read_json_or_none, write_json
from dit_export.models.spec import ModelSpec
from dit_export.sampling.cache import CACHE_GRAPHS, DEFAULT_ORDER, check_cache

BUILD_RECORD = "build.json"
BUILD_SCHEMA = "dit_export.build/1"
COMPILED_DIRS = (PLANS_DIR, aoti.AOTI_DIR)  # engine/'s artifacts: kept across a re-export
SAMPLING_GRAPHS = ("dit_step", "vae_decoder")  # what a sampler runs (the VAE when exported)


def read_build_record(folder: Path) -> dict | None:
    """The folder's build.json ({"schema", "request", "verify"}), None when no build or bench made it."""
    rec = read_json_or_none(Path(folder) / BUILD_RECORD)
    return rec if isinstance(rec, dict) and rec.get("schema") == BUILD_SCHEMA else None


# name → reader(folder path): the hook for sidecars (read lazily, once per ExportFolder)
SIDECARS: dict[str, Callable[[Path], Any]] = {
    "build": read_build_record,
    "plans": list_plans,  # {plan path: record}, any TensorRT release and GPU
    "aoti": aoti.read_packages,  # {graph: record}
}


# ------------------------------------------------------------------------------ the request


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


def export_request(
    model: ModelSpec, batch: int, precision: str, opset: int, max_cache_order: int | None = DEFAULT_ORDER
) -> dict:
    """Everything an export depends on, normalised (what build.json records as "request")."""
    spec = model.validate()
    return {
        **spec.to_dict(),
        "ckpt_file": _fingerprint(spec.ckpt),
        "vae_file": _fingerprint(spec.vae),
        "batch": int(batch),
        "precision": precision,
        "opset": int(opset),
        "max_cache_order": max_cache_order,
    }


def _covers_cache(prev: Mapping, request: Mapping) -> bool:
    """`prev` asked for all of `request` and cache graphs of at least its order (None: no cache)."""
    order = "max_cache_order"
    rank = [-1 if r.get(order) is None else int(r[order]) for r in (prev, request)]
    return {**prev, order: None} == {**request, order: None} and rank[0] >= rank[1]


def pending_record(out: Path) -> Path:
    """Written beside the folder before a (re-)export, moved into it after: a kill in between is ours."""
    out = Path(out)
    return out.with_name(f".{out.name}.{BUILD_RECORD}")


def record_request(out: Path, request: dict, **extra: Any) -> None:
    """Write build.json after an export (atomically): the request the reuse rule compares against."""
    write_json(Path(out) / BUILD_RECORD, {"schema": BUILD_SCHEMA, "request": request, **extra})


# ------------------------------------------------------------------------------ the folder


class ExportFolder:
    """An export/engines folder: its manifest, sidecars and compiled artifacts, each read once."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest | None = None) -> None:
        self.path = Path(path)
        self._manifest = manifest
        self._sidecars: dict[str, Any] = {}
        self._hashed = self._graphs_checked = False

    @classmethod
    def open(cls, path: str | os.PathLike | ExportFolder) -> ExportFolder:
        """The folder, its manifest read and validated now (one-line UserError when absent or bad)."""
        folder = path if isinstance(path, ExportFolder) else cls(path)
        folder.manifest  # noqa: B018 (read now: a bad folder fails here, before anything loads)
        return folder

    @classmethod
    def of(
        cls, folder: str | os.PathLike | ExportFolder, manifest: Manifest | dict | ExportFolder | None = None
    ) -> ExportFolder:
        """Pass an ExportFolder through; make one of a path (with a manifest already read, if any)."""
        if isinstance(folder, ExportFolder):
            return folder
        if isinstance(manifest, ExportFolder):
            return manifest
        if isinstance(manifest, dict):
            manifest = Manifest.from_dict(manifest, Path(folder))
        return cls(folder, manifest)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"ExportFolder({str(self.path)!r})"

    # -- what the folder holds ------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        """The typed manifest (read on first use; the graphs' I/O is checked by `verify` or by the
        backend against what it loads)."""
        if self._manifest is None:
            self._manifest = Manifest.read(self.path, check_graphs=False)
        elif self._manifest.folder is None:
            self._manifest = replace(self._manifest, folder=self.path)
        return self._manifest

    @property
    def has_export(self) -> bool:
        return self._manifest is not None or (self.path / FILENAME).exists()

    def sidecar(self, name: str) -> Any:
        """A sidecar by its `SIDECARS` name, read on first use."""
        if name not in self._sidecars:
            if name not in SIDECARS:
                raise KeyError(f"no sidecar {name!r}; known: {', '.join(SIDECARS)}")
            self._sidecars[name] = SIDECARS[name](self.path)
        return self._sidecars[name]

    def forget(self, *names: str) -> None:
        """Drop cached sidecars (after this process changed them: plans built, artifacts dropped)."""
        for name in names or tuple(self._sidecars):
            self._sidecars.pop(name, None)

    @property
    def build_record(self) -> dict | None:
        return self.sidecar("build")

    @property
    def plans(self) -> dict[Path, dict]:
        return self.sidecar("plans")

    @property
    def aoti_packages(self) -> dict[str, dict]:
        return self.sidecar("aoti")

    def sampling_graphs(self, cache: bool = False) -> list[str]:
        """The graphs a sampler runs: the step, and the VAE decoder when exported; with `cache`,
        also the forecast cache's full and forecast steps when exported."""
        names = SAMPLING_GRAPHS + (CACHE_GRAPHS if cache else ())
        return [g for g in names if self.manifest.graphs.get(g) is not None]

    # -- the forecast step cache (issue 21) -----------------------------------------------------
    @property
    def has_cache(self) -> bool:
        """The export holds dit_step_full and dit_step_forecast (and their `cache` record)."""
        return self.manifest.has_cache

    @property
    def cache_record(self) -> CacheInfo | None:
        """The manifest's `cache` record (max_order, slots, shape, dtype, bytes_per_image, ...)."""
        return self.manifest.cache

    def require_cache(self, order: int = DEFAULT_ORDER) -> CacheInfo:
        """The cache record for sampling with Taylor order `order`; one-line UserError when the
        export has no forecast graphs, or graphs for a smaller order (both: re-export)."""
        check_cache(2, order)  # the order itself first (0..MAX_ORDER)
        rec = self.manifest.cache
        if rec is None:
            raise UserError(no_cache_message(self.path, max(order, DEFAULT_ORDER)))
        check_cache(2, order, rec.max_order)  # "... re-export with --max-cache-order O"
        return rec

    # -- checks (each at most once per object) --------------------------------------------------
    def check_files(self) -> None:
        """Every graph file the manifest lists is present (cheap: no hashing)."""
        self.manifest.check_files_exist()

    def verify_hashes(self) -> None:
        """Every graph file matches its recorded size and sha256 (hashed once per object)."""
        if not self._hashed:
            self.manifest.verify_hashes()
            self._hashed = True

    def verify(self) -> None:
        """The export is intact: files present, ONNX I/O equal to the manifest's (where onnx
        imports), hashes equal (one-line UserError on the first difference)."""
        if not self._graphs_checked:
            self.manifest.check_graph_files()
            self._graphs_checked = True
        self.verify_hashes()

    # -- compiled artifacts ---------------------------------------------------------------------
    def plan_status(self, graph: str, target: Target, options: dict | None = None, check_hash: bool = True):
        """("fresh" | "missing" | "stale", why) of the plan of `graph` for `target` (engine.plans)."""
        return plan_status(self.path, self.manifest, graph, target, options, check_hash)

    def plan(self, graph: str, target: Target) -> Path:
        """The fresh plan of `graph` for this TensorRT and GPU; one line naming the rebuild otherwise."""
        return find_plan(self.path, self.manifest, graph, target)

    def aoti_package(self, graph: str, check_hash: bool = True) -> tuple[Path, dict]:
        """The AOTI package of `graph` and its record, checked against the export (engine.aoti)."""
        return aoti.find_package(self.path, self.manifest, graph, check_hash)

    # -- reuse ----------------------------------------------------------------------------------
    def why_stale(self, request: Mapping, force: bool, more_cache_ok: bool = False) -> str | None:
        """None when the export can be reused as is for `request`; else the reason to (re-)export
        (the rule in the module docstring). One-line UserError for a folder that is not ours."""
        out = self.path
        if not self.has_export:
            if out.exists() and not out.is_dir():
                raise UserError(f"--out {out} exists and is not a folder")
            if out.is_dir() and any(out.iterdir()) and not force:
                raise UserError(
                    f"--out {out} is not empty and holds no export; pass --force to use it anyway"
                )
            return "no export yet"
        try:
            self.verify()
        except UserError as e:
            return f"the existing export is not valid ({e})"
        record = self.build_record
        if record is None:
            if pending_record(out).is_file():
                return "an interrupted build"
            if not force:
                raise UserError(
                    f"{out} holds an export that `build` did not make; pass --force to rebuild it, "
                    "or choose another --out"
                )
            return "--force on an export made by `export`"
        prev = record.get("request") or {}
        if more_cache_ok and _covers_cache(prev, request):
            return None
        if prev != request:
            changed = sorted(k for k in set(prev) | set(request) if prev.get(k) != request.get(k))
            return "changed: " + ", ".join(changed)
        return None

    # -- backend `auto` -------------------------------------------------------------------------
    def choose_backend(
        self, requested: str = "auto", *, allowed: Sequence[str] = BACKENDS, elsewhere: bool = False
    ) -> tuple[str, str]:
        """(canonical backend, one line saying which and why) for running this folder."""
        return choose_backend(requested, self, allowed=allowed, elsewhere=elsewhere)


def choose_backend(
    requested: str = "auto",
    folder: ExportFolder | None = None,
    *,
    allowed: Sequence[str] = BACKENDS,
    elsewhere: bool = False,
) -> tuple[str, str]:
    """(canonical backend, one line) by the module's `auto` rule.

    `folder` None: building (the plans are made next, so TensorRT wins whenever it works here;
    `--backend trt` without a working TensorRT is a one-line error). `elsewhere`: the folder runs
    on another machine (its GPU cannot be probed). Any other word is returned canonical.
    """
    word = canonical_backend(requested, allow_auto=True, allowed=tuple(allowed))
    building = folder is None
    if word != "auto":
        if word == "trt" and building:
            ok, why = trt_api.probe()
            if not ok:
                raise UserError(f"--backend tensorrt: {why}")
            return "trt", f"backend: tensorrt ({why})"
        return word, f"backend: {_describe(word)}, as requested"
    if elsewhere:
        assert folder is not None
        have = {rec.get("graph") for rec in folder.plans.values()}
        missing = [g for g in folder.sampling_graphs(cache=True) if g not in have]
        if not missing:
            return "trt", "backend auto → tensorrt: the folder holds TensorRT plans of every graph"
        return "ort", f"backend auto → onnxruntime: the folder has no TensorRT plan of {', '.join(missing)}"
    if not building and not folder.plans:  # cheap first: no TensorRT import for a CPU-only folder
        return "ort", f"backend auto → {_describe('ort')}: {folder.path} holds no TensorRT plans"
    ok, why = trt_api.probe()
    if not ok:
        return "ort", f"backend auto → {_describe('ort')}: {why}"
    if building:
        return "trt", f"backend auto → tensorrt: {why}"
    target = Target.current()
    for graph in folder.sampling_graphs(cache=True):
        status, reason = folder.plan_status(graph, target, check_hash=False)
        if status == "missing":  # stale plans are not a fallback: the load names the rebuild
            return "ort", f"backend auto → {_describe('ort')}: {reason}"
    return "trt", f"backend auto → tensorrt: {why}; plans for {target.describe()}"


def _describe(word: str) -> str:
    if word == "ort":
        try:
            return f"{LONG_NAMES['ort']} ({default_ort_providers()[0]})"
        except UserError:
            return LONG_NAMES["ort"]
    return LONG_NAMES.get(word, word)


__all__ = [
    "BUILD_RECORD",
    "BUILD_SCHEMA",
    "COMPILED_DIRS",
    "SIDECARS",
    "ExportFolder",
    "choose_backend",
    "export_request",
    "pending_record",
    "read_build_record",
    "record_request",
]
