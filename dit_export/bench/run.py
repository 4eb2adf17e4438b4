"""The benchmark itself: prepare exports, time every backend × batch × stage, derive the figures.

Order of work: every export first (so no export competes with a timing), then each backend in
the order asked (the `torch-fp32` baseline first). Each (backend, batch) runs alone: opened
through the runtime (`Sampler.load`), timed, closed. A backend that cannot run here is "skipped"
with the reason; one that fails on a batch is "failed" there with the reason (and larger batches
are not tried).

What is timed, for every backend alike: `Backend.run` of the denoiser (`dit`, 2N rows), of one
fused step (`dit_step`) and of the VAE decode on bound example feeds, and `Sampler.generate` for
the whole sample (measured when it fits the time budget, else estimated as steps × step + VAE,
labelled so). Derived: images/s, peak memory, achieved TFLOP/s from the model config (2 FLOPs per
MAC, 2N rows per guided forward) and the share of the device's peak, and every time ratio against
`torch-fp32` at the same batch. With the forecast cache (`cache_interval` > 1) the two cached step
graphs are timed as well, the whole sample runs cached (estimated as full × its steps + forecast ×
the others + VAE), beside the uncached estimate, and the cache's memory per image is reported.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dit_export.bench import backends as bk
from dit_export.bench.exports import Exports, _first_line, prepare_exports
from dit_export.bench.machine import OtherLoad, device_peak, machine_info, versions
from dit_export.bench.timing import CpuClock, Memory, Stats
from dit_export.errors import UserError
from dit_export.lazy import optional_import
from dit_export.models.configs import DiTConfig, model_config
from dit_export.models.spec import ModelSpec
from dit_export.runtime.folder import ExportFolder
from dit_export.runtime.sampler import Sampler
from dit_export.sampling.cache import CACHE_GRAPHS, FULL_GRAPH, check_cache
from dit_export.sampling.request import DEFAULT_CACHE_ORDER, SampleRequest

SCHEMA = "dit_export.bench/1"
STAGES = ("denoiser", "step", "vae", "sample")
Log = Callable[[str], None]


@dataclass
class BenchConfig:
    """Which model (`ModelSpec`) and the bench's own fields."""

    model: ModelSpec
    backends: list[str] = field(default_factory=lambda: list(bk.DEFAULT_BACKENDS))
    batches: list[int] = field(default_factory=lambda: [1])
    steps: int = 50
    warmup: int = 5
    repeat: int = 20
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    quick: bool = False
    engines: str | None = None  # work folder: exports kept and reused there (default: a temporary one)
    device: str = "auto"  # the torch backends' device
    torch_attention: str = "sdpa"
    compile_mode: str = "default"
    max_sample_seconds: float = 120.0
    sample_repeat: int = 1
    export_jobs: int = 1
    threads: int = 0  # CPU threads for torch and ort (0: each library's default)
    cache_interval: int = 1  # the forecast step cache of the whole sample (1: none)
    cache_order: int = DEFAULT_CACHE_ORDER

    @property
    def cached(self) -> bool:
        return self.cache_interval > 1

    def validate(self) -> BenchConfig:
        """The normalised config (validated model spec, sorted batches); one-line UserError."""
        checks = [
            (
                bool(self.batches) and all(b >= 1 for b in self.batches),
                f"--batch takes sizes ≥ 1, got {self.batches}",
            ),
            (self.steps >= 1, f"--steps must be ≥ 1, got {self.steps}"),
            (self.warmup >= 1, f"--warmup must be ≥ 1 (the first call is never timed), got {self.warmup}"),
            (self.repeat >= 1, f"--repeat must be ≥ 1, got {self.repeat}"),
            (self.threads >= 0, f"--threads must be ≥ 0 (0 = library default), got {self.threads}"),
            (self.export_jobs >= 1, f"--export-jobs must be ≥ 1, got {self.export_jobs}"),
            (self.sample_repeat >= 1, f"--sample-repeat must be ≥ 1, got {self.sample_repeat}"),
            (
                self.torch_attention in ("sdpa", "explicit"),
                f"--torch-attention must be sdpa or explicit, got {self.torch_attention!r}",
            ),
            (
                self.device in ("auto", "cpu", "cuda"),
                f"--device must be auto, cpu or cuda, got {self.device!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise UserError(f"--stages takes {', '.join(STAGES)}; got {' '.join(self.stages) or 'nothing'}")
        bk.parse_backends(self.backends)
        check_cache(self.cache_interval, self.cache_order)
        return dataclasses.replace(self, model=self.model.validate(), batches=sorted(set(self.batches)))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model": self.model.to_dict()}


def resolve_device(requested: str) -> tuple[str, str | None]:
    """(cpu | cuda, torch version or None) for the torch backends."""
    try:
        torch = optional_import("torch")
    except UserError:
        if requested == "cuda":
            raise
        return "cpu", None
    have = torch.cuda.is_available()
    if requested == "cuda" and not have:
        raise UserError(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    return ("cuda" if have else "cpu") if requested == "auto" else requested, torch.__version__


# ------------------------------------------------------------------------------ one (backend, batch)


def _stats_dict(seconds: list[float], flops: float | None, peak_tflops: float | None) -> dict:
    st = Stats.of(seconds)
    d = st.to_dict()
    if flops:
        tflops = flops / (st.median_ms / 1e3) / 1e12
        d["tflops"] = tflops
        d["pct_of_peak"] = 100.0 * tflops / peak_tflops if peak_tflops else None
    return d


def _timed(sampler: Sampler, graph: str, bindings: dict, cfg: BenchConfig, flops, peak, mem: Memory) -> dict:
    """Latency statistics of `Backend.run(graph)`; the first call (compile, lazy init, graph capture)
    is timed apart and never enters the statistics."""
    be, clk = sampler.backend, bk.clock(sampler)

    def fn() -> None:
        be.run(graph, bindings)

    first = CpuClock(lambda: bk.sync(sampler)).span(fn)
    secs = clk.time(fn, cfg.warmup - 1, cfg.repeat)
    mem.sample()
    return {**_stats_dict(secs, flops, peak), "first_call_ms": first * 1e3, "clock": clk.kind}


def _time_graphs(sampler: Sampler, cfg: BenchConfig, flops: float, peak: float | None, mem: Memory) -> dict:
    binds = bk.stage_bindings(sampler)
    row: dict = {}
    if "denoiser" in cfg.stages:
        row["denoiser"] = _timed(sampler, "dit", binds["dit"], cfg, flops, peak, mem)
    if "step" in cfg.stages or "sample" in cfg.stages:
        row["step"] = _timed(sampler, "dit_step", binds["dit_step"], cfg, flops, peak, mem)
        for graph in CACHE_GRAPHS if cfg.cached else ():
            work = flops if graph == FULL_GRAPH else None  # the forecast step's FLOPs are not counted
            row[graph] = _timed(sampler, graph, binds[graph], cfg, work, peak, mem)
        if sampler.backend.name == "trt":  # the same step replayed without its CUDA graph
            be = sampler.backend
            be.cuda_graph = False  # type: ignore[attr-defined]
            try:
                row["step_no_cuda_graph"] = _timed(
                    sampler, "dit_step", binds["dit_step"], cfg, flops, peak, mem
                )
            finally:
                be.cuda_graph = True  # type: ignore[attr-defined]
            row["cuda_graph_step_speedup"] = row["step_no_cuda_graph"]["median_ms"] / row["step"]["median_ms"]
    wants_vae = ("vae" in cfg.stages or "sample" in cfg.stages) and sampler.has_vae
    row["vae"] = (
        _timed(sampler, "vae_decoder", binds["vae_decoder"], cfg, None, None, mem) if wants_vae else None
    )
    return row


def _time_sample(sampler: Sampler, cfg: BenchConfig, row: dict, mem: Memory) -> dict | None:
    """The whole sample through `Sampler.generate` (ends with a device→host read: synchronous),
    or its estimate steps × step + VAE when that exceeds the budget."""
    step_s = row["step"]["median_ms"] / 1e3 if "step" in row else None
    vae_s = row["vae"]["median_ms"] / 1e3 if row.get("vae") else 0.0
    estimate = None if step_s is None else cfg.steps * step_s + vae_s
    sample: dict = {"steps": cfg.steps, "decode": row.get("vae") is not None}
    steps_s = None if step_s is None else cfg.steps * step_s  # the denoiser's share of the total
    if cfg.cached and step_s is not None:
        sample["cache"] = cache = bk.cache_figures(
            sampler, cfg.steps, cfg.cache_interval, cfg.cache_order, row, estimate
        )
        steps_s = cache["steps_s"]
        estimate = steps_s + vae_s
    if "sample" in cfg.stages and (estimate is None or estimate <= cfg.max_sample_seconds):
        labels = np.random.default_rng(0).integers(0, sampler.num_classes, sampler.batch)
        req = SampleRequest(tuple(int(v) for v in labels), 0, bk.GUIDANCE, cfg.steps, "ddpm",
                            cache_interval=cfg.cache_interval, cache_order=cfg.cache_order)  # fmt: skip
        secs = CpuClock().time(lambda: sampler.generate(req, decode=sample["decode"]), 0, cfg.sample_repeat)
        mem.sample()
        sample.update(
            kind="measured", total_s=Stats.of(secs).median_ms / 1e3, runs=len(secs), clock="perf_counter"
        )
    elif estimate is not None:
        limit = f"--max-sample-seconds {cfg.max_sample_seconds:g}"
        budget = f"a whole sample would take about {estimate:.0f} s (> {limit})"
        why = budget if "sample" in cfg.stages else "sample stage not requested"
        sample.update(kind="estimated", total_s=estimate, runs=0, why=why)
    else:
        return None
    total = sample["total_s"]
    sample["denoiser_x_steps_s"] = steps_s
    sample["vae_s"] = vae_s if row.get("vae") else None
    over = total - steps_s - vae_s if sample["kind"] == "measured" and steps_s is not None else None
    sample["loop_overhead_s"] = over
    sample["loop_overhead_pct"] = None if over is None or total <= 0 else 100.0 * over / total
    sample["images_per_s"] = sampler.batch / total if total > 0 else None
    if "cache" in sample and sample["cache"]["uncached_estimate_s"]:
        sample["cache"]["speedup_vs_uncached_estimate"] = sample["cache"]["uncached_estimate_s"] / total
    return sample


def _info(spec: bk.BackendSpec, sampler: Sampler, folder: Path, cfg: BenchConfig) -> dict:
    be = sampler.backend
    info = {"engine": be.describe(), "device": str(getattr(be, "device", "cpu")), "folder": str(folder)}
    if spec.family == "torch":
        info["precision"] = be.describe()
        sdpa = cfg.torch_attention == "sdpa"
        info["attention"] = "SDPA (F.scaled_dot_product_attention)" if sdpa else "explicit matmul + softmax"
    else:
        policy = " (fp32 islands per the precision policy)" if sampler.precision == "fp16" else ""
        info["precision"] = f"{sampler.precision} export{policy}"
        info["attention"] = "explicit matmul + softmax, as exported"
    if spec.family == "ort" and info["device"] == "cpu":
        info["threads"] = cfg.threads or "ORT default (one per physical core)"
    return info


def measure(spec: bk.BackendSpec, folder: Path, cfg: BenchConfig, ctx: dict, flops: float, peak) -> dict:
    """Open one backend on one folder, time every requested stage, close it; returns the row's figures."""
    device = bk.runtime_device(spec, ctx["device"])
    mem = Memory(device, torch_gpu=spec.family == "torch" and device == "cuda")
    t0 = time.perf_counter()
    sampler = bk.open_sampler(
        spec,
        folder,
        threads=cfg.threads,
        torch=ctx["torch"],
        cache_order=cfg.cache_order if cfg.cached else None,
    )
    try:
        row: dict = {"status": "measured", "load_s": time.perf_counter() - t0}
        mem.sample()
        if spec.family == "torch" and spec.precision != "compile" and "modules" not in ctx["torch"]:
            mods = sampler.backend.modules  # type: ignore[attr-defined]  # reused by later torch modes/batches
            ctx["torch"]["modules"] = (mods["dit"], mods.get("vae_decoder"))
        row.update(_time_graphs(sampler, cfg, flops, peak, mem))
        row["sample"] = _time_sample(sampler, cfg, row, mem)
        row["memory"] = mem.result()
        row["info"] = _info(spec, sampler, folder, cfg)
        return row
    finally:
        bk.close_sampler(sampler)


# ------------------------------------------------------------------------------ the whole run


def _bench_backend(
    spec: bk.BackendSpec, cfg: BenchConfig, exports: Exports, ctx: dict, log: Log
) -> list[dict]:
    """Every batch of one backend; after a failed batch the larger ones are not tried."""
    pc, pc_note = bk.peak_class(spec, bk.runtime_device(spec, ctx["device"]))
    peak = ctx["peak"]["tflops"][pc] if ctx["peak"] and pc else None
    rows, failed_at = [], None
    for b in cfg.batches:
        base = {"backend": spec.name, "batch": b}
        folder = exports.folder(spec, b)
        if failed_at is not None or not isinstance(folder, Path):
            rows.append(
                {**base, "status": "failed", "reason": f"not run: {failed_at}" if failed_at else folder}
            )
            continue
        log(f"timing {spec.name} batch {b} ...")
        try:
            row = measure(spec, folder, cfg, ctx, ctx["flops_per_image"] * 2 * b, peak)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # OOM, compile failure, provider error: this row failed
            failed_at = f"batch {b} failed ({_first_line(e)})"
            rows.append({**base, "status": "failed", "reason": _first_line(e)})
            log(f"  failed: {_first_line(e)}")
            continue
        row.update(base, peak_class=pc, peak_class_note=pc_note or None, peak_tflops=peak)
        if spec.family != "torch":
            row["prepare_s"] = exports.seconds.get((spec.export_precision, b))
        rows.append(row)
        log("  " + _one_line(row))
    return rows


def _add_ratios(rows: list[dict]) -> None:
    """Every figure as a speed ratio to torch-fp32 at the same batch (> 1: faster than it)."""
    base = {r["batch"]: r for r in rows if r["backend"] == bk.BASELINE and r["status"] == "measured"}
    for r in rows:
        if r["status"] != "measured":
            r["ratio_to_torch_fp32"] = None
            continue
        b = base.get(r["batch"]) or {}
        out: dict = {}
        for stage in ("denoiser", "step", "vae"):
            mine, theirs = r.get(stage), b.get(stage)
            out[stage] = theirs["median_ms"] / mine["median_ms"] if mine and theirs else None
        ms, bs = r.get("sample"), b.get("sample")
        if ms and bs:
            out["images_per_s"] = ms["images_per_s"] / bs["images_per_s"]
            out["sample_basis"] = ms["kind"] if ms["kind"] == bs["kind"] else "mixed"
        else:
            out["images_per_s"] = out["sample_basis"] = None
        r["ratio_to_torch_fp32"] = out


def model_facts(cfg: BenchConfig, exports: Exports) -> dict:
    """FLOPs and size of the model, from an export's recorded config (else from its name)."""
    folder = next(iter(exports.folders.values()), None)
    try:
        mcfg = DiTConfig.from_dict(dict(ExportFolder(folder).manifest.model.config)) if folder else None
    except UserError:
        mcfg = None
    if mcfg is None:
        mcfg = model_config(cfg.model.model or "XL/2", cfg.model.image_size or 256)
    macs = mcfg.macs_per_forward()
    return {
        "name": mcfg.name or "custom",
        "config": mcfg.to_dict(),
        "image_size": mcfg.input_size * 8,
        "parameters": mcfg.num_params(),
        "macs_per_image_forward": macs,
        "flops_per_image_forward": 2 * macs,
        "guided": True,
        "rows_per_forward": "2N (conditional + null label, guidance scale 4)",
        "flops_note": "DiT MACs from the config × 2 FLOPs × 2 rows per image (guidance); "
        "the step's elementwise math and the VAE are not counted",
    }


def _plan(cfg: BenchConfig, env: bk.Env, log: Log) -> tuple[list[bk.BackendSpec], list[dict], list[str]]:
    """Which backends run (the baseline first) and which are skipped, with the reason."""
    specs, notes = bk.parse_backends(cfg.backends), []
    if bk.SPECS[bk.BASELINE] not in specs:
        specs.insert(0, bk.SPECS[bk.BASELINE])
        notes.append(f"{bk.BASELINE} added: every ratio is taken against it, measured in the same run")
    entries = []
    for s in specs:
        why = bk.skip_reason(s, env)
        entries.append(
            {"name": s.name, "summary": s.summary, "status": "skipped" if why else "measured", "reason": why}
        )
        log(f"{s.name:<14} {'skipped: ' + why if why else 'will run'}")
    return specs, entries, notes


def _load_note(device: str, other: float | None) -> list[str]:
    if device != "cpu" or other is None or other <= 10.0:
        return []
    return [
        f"other processes used {other:.0f}% of the CPUs during this run: CPU timings competed with them, and "
        "multi-threaded kernels (torch's OpenMP especially) slow down badly when a core is taken; "
        "rerun on an idle machine before trusting them"
    ]


def run_bench(cfg: BenchConfig, log: Log = print) -> dict:
    """Run the benchmark described by `cfg`; returns the whole result (the JSON document)."""
    cfg = cfg.validate()
    device, torch_version = resolve_device(cfg.device)
    if cfg.threads and torch_version:
        optional_import("torch").set_num_threads(cfg.threads)
    specs, entries, notes = _plan(cfg, bk.Env(device, cfg.quick, torch_version or "(not installed)"), log)
    machine, other_load = machine_info(), OtherLoad()
    peak = device_peak(machine["gpu"]["name"]) if machine["gpu"] and device == "cuda" else None
    started, t_start = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    active = [s for s, e in zip(specs, entries) if e["status"] == "measured"]
    tmp_root = None if cfg.engines else Path(tempfile.mkdtemp(prefix="dit_bench_"))
    rows: list[dict] = []
    try:
        exports = prepare_exports(
            cfg, Path(cfg.engines or tmp_root), active, log, throwaway=tmp_root is not None
        )
        facts = model_facts(cfg, exports)
        torch_opts = {
            "device": device,
            "sdpa": cfg.torch_attention == "sdpa",
            "compile_mode": cfg.compile_mode,
        }
        ctx = {
            "device": device,
            "torch": torch_opts,
            "peak": peak,
            "flops_per_image": facts["flops_per_image_forward"],
        }
        for s in active:
            rows += _bench_backend(s, cfg, exports, ctx, log)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)
    for entry in entries:  # a backend with no measured row at all is reported as failed
        mine = [r for r in rows if r["backend"] == entry["name"]]
        if entry["status"] == "measured" and mine and all(r["status"] != "measured" for r in mine):
            entry.update(status="failed", reason=mine[0]["reason"])
    _add_ratios(rows)
    other = other_load.percent()
    machine.update(load_average_end=machine_info()["load_average"], other_processes_cpu_pct=other)
    order = {s.name: i for i, s in enumerate(specs)}
    rows.sort(key=lambda r: (order[r["backend"]], r["batch"]))
    return {
        "schema": SCHEMA,
        "created_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_s": time.perf_counter() - t_start,
        "command": "python -m dit_export " + " ".join(sys.argv[1:]) if sys.argv else None,
        "machine": machine,
        "versions": versions(),
        "config": {**cfg.to_dict(), "device": device, "sampler": "ddpm", "cfg_scale": bk.GUIDANCE},
        "model": facts,
        "device_peak": peak,
        "notes": notes + _load_note(device, other),
        "backends": entries,
        "results": rows,
    }


def _one_line(row: dict) -> str:
    parts = [f"{k} {row[k]['median_ms']:.2f} ms" for k in ("denoiser", "step", "vae") if row.get(k)]
    s = row.get("sample")
    if s:
        parts.append(f"sample {s['total_s']:.2f} s ({s['kind']}), {s['images_per_s']:.3g} img/s")
    return ", ".join(parts)
