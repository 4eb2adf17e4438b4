"""The bench's export folders: one per (precision, batch), exported in worker processes, reused.

Every export comes first, so no export competes with a timing; `export_jobs` workers keep the
exporter's memory and threads out of the timing process. A folder is reused by the one rule of
`runtime.folder.ExportFolder.why_stale` (what `build` uses too: a folder `build` made for the same
request is reused by `bench --engines`, and the other way round). Bench exports only the forecast
cache graphs it times (none without `--cache-interval`) and reuses a folder that has more.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dit_export.bench import backends as bk
from dit_export.engine import trt_api
from dit_export.engine.plans import Target, build_plans
from dit_export.errors import UserError, first_line
from dit_export.export.exporter import ExportOptions, export
from dit_export.export.trt_ops import DEFAULT_OPSET
from dit_export.models.spec import ModelSpec
from dit_export.runtime.folder import ExportFolder, export_request, record_request

if TYPE_CHECKING:
    from dit_export.bench.run import BenchConfig

Log = Callable[[str], None]


def _first_line(e: BaseException) -> str:
    """The error's first line; its type named too unless it is a UserError (already our words)."""
    return first_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}"


def folder_name(model: ModelSpec, precision: str, batch: int) -> str:
    name = model.folder_name(precision, batch)
    return f"{name}-random{model.weights_seed}" if model.random_weights else name


def _ensure_export(
    model: ModelSpec, out: Path, precision: str, batch: int, checked: bool, cache: int | None, log: Log
) -> None:
    """Reuse `out` when it holds this export, by `build`'s rule (`ExportFolder.why_stale`: the same
    request in build.json, hashes checked; with cache graphs of order ≥ `cache`, the ones timed),
    else export into it (only the cache graphs timed: none when uncached) and record the request."""
    request = export_request(model, batch, precision, DEFAULT_OPSET, cache)
    try:
        why = ExportFolder(out).why_stale(request, force=True, more_cache_ok=True)
    except UserError as e:  # not a folder of ours: the export refuses it with its own line
        why = str(e)
    if why is None:
        log(f"  reusing {out.name}")
        return
    log(f"  exporting {out.name} ({why})")
    opts = ExportOptions(
        model=model,
        out=out,
        batch=batch,
        precision=precision,
        max_cache_order=cache,
        check=checked,
        force=True,
    )
    export(opts, log=log)
    record_request(out, request)


def prepare_folder(task: dict) -> dict:
    """Export one folder (and build its TensorRT plans when asked); runs in a worker process.

    Returns {"families": {family: failure reason or None}, "seconds": s}. A throw-away folder
    (`task["quick"]`) is exported without the ONNX Runtime check, which costs as much as the
    export itself on a small model; a kept folder is checked. `task["max_cache_order"]`: the
    forecast cache graphs to export (absent or None: none; the timings without the cache).
    """
    t0 = time.perf_counter()
    out, precision, batch = Path(task["out"]), task["precision"], task["batch"]
    families: dict[str, str | None] = dict.fromkeys(task["families"])
    log = print if task["verbose"] else (lambda s: None)
    try:
        model = ModelSpec.from_dict(task["model"])
        _ensure_export(model, out, precision, batch, not task["quick"], task.get("max_cache_order"), log)
    except Exception as e:  # the export failed: every backend on this folder fails with it
        why = f"export failed: {_first_line(e)}"
        return {"families": dict.fromkeys(families, why), "seconds": time.perf_counter() - t0}
    if "trt" in families:
        try:
            build_plans(out, Target.current(), trt_api.BuildOptions(), log=log)
        except Exception as e:
            families["trt"] = f"engine build failed: {_first_line(e)}"
    return {"families": families, "seconds": time.perf_counter() - t0}


@dataclass
class Exports:
    """Prepared folders by (precision, batch); failures by (family, precision, batch)."""

    folders: dict[tuple[str, int], Path] = field(default_factory=dict)
    failures: dict[tuple[str, str, int], str] = field(default_factory=dict)
    seconds: dict[tuple[str, int], float | None] = field(default_factory=dict)

    def folder(self, spec: bk.BackendSpec, batch: int) -> Path | str:
        """The folder of a backend at a batch, or why there is none."""
        key = (spec.export_precision, batch)
        why = self.failures.get((spec.family, *key))
        return why if why else self.folders.get(key, f"no export for batch {batch}")


def prepare_exports(
    cfg: BenchConfig, root: Path, specs: list[bk.BackendSpec], log: Log, throwaway: bool
) -> Exports:
    """Export what the backends need, in worker processes, reusing what is there.

    One folder per (precision, batch), shared by every backend on it (the torch modes rebuild
    their modules from the fp32 one). Workers keep the exporter's memory and threads out of the
    timing process (its peak RSS stays the backends' own); `cfg.export_jobs` of them run at once.
    """
    tasks: dict[tuple[str, int], dict] = {}
    for s in specs:
        for b in cfg.batches:
            t = tasks.setdefault(
                (s.export_precision, b),
                {
                    "model": cfg.model.to_dict(),
                    "out": str(root / folder_name(cfg.model, s.export_precision, b)),
                    "precision": s.export_precision,
                    "batch": b,
                    "families": [],
                    "quick": throwaway and cfg.quick,
                    "max_cache_order": cfg.cache_order if cfg.cached else None,  # the cache graphs timed
                    "verbose": not cfg.quick and cfg.export_jobs == 1,
                },
            )
            if s.family not in t["families"]:
                t["families"].append(s.family)
    done = Exports()
    if not tasks:
        return done
    jobs = max(1, min(cfg.export_jobs, len(tasks)))
    log(f"preparing {len(tasks)} export folder(s) under {root}, {jobs} at a time")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(prepare_folder, t): key for key, t in tasks.items()}
        for fut in cf.as_completed(futures):
            key, t = futures[fut], tasks[futures[fut]]
            try:
                res = fut.result()
            except Exception as e:  # the worker died (out of memory, killed)
                res = {
                    "families": dict.fromkeys(t["families"], f"export worker died: {_first_line(e)}"),
                    "seconds": None,
                }
            done.seconds[key] = res["seconds"]
            done.folders[key] = Path(t["out"])
            for family, why in res["families"].items():
                if why:
                    done.failures[(family, *key)] = why
            state = "; ".join(f"{f}: {w}" for f, w in res["families"].items() if w) or "ok"
            took = "" if res["seconds"] is None else f" in {res['seconds']:.0f} s"
            log(f"  {Path(t['out']).name}{took}: {state}")
    return done
