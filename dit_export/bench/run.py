"""The benchmark itself: prepare exports, time every backend × batch × stage, derive the figures.

Order of work: every export first (so no export competes with a timing), then the torch
backends (the `torch-fp32` baseline first), then the runtime backends. Each (backend, batch)
runs alone: loaded, timed, closed. A backend that cannot run here is "skipped" with the reason;
one that fails on a batch is "failed" there with the reason (and larger batches are not tried).

Figures per (backend, batch): latency statistics of the denoiser forward (2N rows), one fused
step and the VAE decode; the whole sample of `steps` steps + decode, measured when it fits the
time budget and otherwise estimated as steps × step + VAE (labelled so); images/s; peak memory;
achieved TFLOP/s from the model config (2 FLOPs per MAC, 2N rows per guided forward) and the
share of the device's peak; every time ratio against `torch-fp32` at the same batch.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dit_export.bench import backends as bk
from dit_export.bench.machine import OtherLoad, device_peak, machine_info, versions
from dit_export.bench.timing import CpuClock, Stats
from dit_export.errors import UserError

SCHEMA = "dit_export.bench/1"
STAGES = ("denoiser", "step", "vae", "sample")


@dataclass
class BenchConfig:
    model: str | None = None
    ckpt: str | None = None
    random_weights: bool = False
    weights_seed: int = 0
    flavor: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    vae: str = "mse"
    backends: list[str] = field(default_factory=lambda: list(bk.DEFAULT_BACKENDS))
    batches: list[int] = field(default_factory=lambda: [1])
    steps: int = 50
    warmup: int = 5
    repeat: int = 20
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    quick: bool = False
    engines: str | None = None
    device: str = "auto"
    torch_attention: str = "sdpa"
    compile_mode: str = "default"
    max_sample_seconds: float = 120.0
    sample_repeat: int = 1
    export_jobs: int = 1
    threads: int = 0  # CPU threads for torch and ort (0: each library's default)

    def validate(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise UserError(f"--batch takes sizes ≥ 1, got {self.batches}")
        if self.steps < 1:
            raise UserError(f"--steps must be ≥ 1, got {self.steps}")
        if self.warmup < 1:
            raise UserError(f"--warmup must be ≥ 1 (the first call is never timed), got {self.warmup}")
        if self.repeat < 1:
            raise UserError(f"--repeat must be ≥ 1, got {self.repeat}")
        if self.threads < 0:
            raise UserError(f"--threads must be ≥ 0 (0 = library default), got {self.threads}")
        if self.export_jobs < 1:
            raise UserError(f"--export-jobs must be ≥ 1, got {self.export_jobs}")
        if self.sample_repeat < 1:
            raise UserError(f"--sample-repeat must be ≥ 1, got {self.sample_repeat}")
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise UserError(f"--stages takes {', '.join(STAGES)}; got {' '.join(self.stages) or 'nothing'}")
        if self.torch_attention not in ("sdpa", "explicit"):
            raise UserError(f"--torch-attention must be sdpa or explicit, got {self.torch_attention!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.ckpt and self.random_weights:
            raise UserError("give either --ckpt or --random-weights, not both")
        if self.random_weights and not self.model:
            raise UserError("--random-weights needs --model (e.g. --model XL/2)")
        if not self.ckpt and not self.random_weights and not self.model:
            raise UserError("give --model, --ckpt or both (e.g. --model XL/2 --random-weights)")
        bk.parse_backends(self.backends)


# ------------------------------------------------------------------------------ helpers


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0].strip()
    text = text if len(text) <= 300 else text[:297] + "..."
    return text if isinstance(e, UserError) else f"{type(e).__name__}: {text}"


def peak_class(spec: bk.BackendSpec, device: str) -> tuple[str | None, str]:
    """(fp16 | tf32 | fp32 | None, note): which column of the device peak applies."""
    if device != "cuda":
        return None, "CPU: no peak table"
    if spec.family == "torch":
        return {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16", "compile": "fp16"}[spec.precision], ""
    if spec.precision == "fp16":
        return "fp16", ""
    if spec.family == "ort":
        return "tf32", "fp32 graph; ONNX Runtime's CUDA EP allows TF32 unless use_tf32=0"
    return "tf32", "fp32 engine; TensorRT allows TF32 unless the TF32 builder flag is cleared"


def resolve_device(requested: str) -> str:
    import torch

    have = torch.cuda.is_available()
    if requested == "cuda" and not have:
        raise UserError(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    if requested == "auto":
        return "cuda" if have else "cpu"
    return requested


def export_folder_name(cfg: BenchConfig, precision: str, batch: int) -> str:
    from dit_export.engine.build import BuildConfig, default_out

    bc = BuildConfig(
        model=cfg.model, ckpt=cfg.ckpt, image_size=cfg.image_size, precision=precision, batch=batch
    )
    name = default_out(bc).name
    return f"{name}-random{cfg.weights_seed}" if cfg.random_weights else name


def _build_config(cfg: dict, out: Path, precision: str, batch: int, backend: str):
    from dit_export.engine.build import BuildConfig

    return BuildConfig(
        out=out,
        model=cfg["model"],
        ckpt=cfg["ckpt"],
        random_weights=cfg["random_weights"],
        weights_seed=cfg["weights_seed"],
        flavor=cfg["flavor"],
        num_classes=cfg["num_classes"],
        image_size=cfg["image_size"],
        vae=cfg["vae"],
        batch=batch,
        precision=precision,
        backend=backend,
        verify=False,
    )


def prepare_folder(task: dict) -> dict:
    """Export one folder (and build its TensorRT engines when asked); runs in a worker process.

    Returns {"families": {family: failure reason or None}, "seconds": s}. A throw-away folder
    (`task["quick"]`) is exported without the ONNX Runtime check, which costs as much as the
    export itself on a small model; every other folder goes through `build`, so it is checked,
    recorded and reused by later runs (and by `build` itself).
    """
    t0 = time.perf_counter()
    cfg, out, precision, batch = task["cfg"], Path(task["out"]), task["precision"], task["batch"]
    families: dict[str, str | None] = dict.fromkeys(task["families"])
    log = print if task["verbose"] else (lambda s: None)
    try:
        if task["quick"]:
            from dit_export.export.exporter import ExportOptions, export

            b = _build_config(cfg, out, precision, batch, "onnxruntime")
            fields = (
                "model",
                "ckpt",
                "random_weights",
                "weights_seed",
                "flavor",
                "num_classes",
                "image_size",
                "vae",
            )
            export(
                ExportOptions(
                    out=out,
                    batch=batch,
                    precision=precision,
                    check=False,
                    **{k: getattr(b, k) for k in fields},
                ),
                log=log,
            )
        else:
            from dit_export.engine.build import build

            build(_build_config(cfg, out, precision, batch, "onnxruntime"), log=log)
    except Exception as e:  # the export failed: every backend on this folder fails with it
        why = f"export failed: {_first_line(e)}"
        return {"families": dict.fromkeys(families, why), "seconds": time.perf_counter() - t0}
    if "trt" in families:
        try:
            from dit_export.engine.build import build

            build(_build_config(cfg, out, precision, batch, "tensorrt"), log=log)
        except Exception as e:
            families["trt"] = f"engine build failed: {_first_line(e)}"
    return {"families": families, "seconds": time.perf_counter() - t0}


def prepare_exports(
    cfg: BenchConfig,
    root: Path,
    wanted: list[tuple[str, str, int]],
    log: Callable[[str], None],
    throwaway: bool,
) -> tuple[dict[tuple[str, int], Path], dict[tuple[str, int], str], dict[tuple[str, int], float]]:
    """Export what the runtime backends need, in worker processes, reusing what is there.

    `wanted`: (family, precision, batch). One folder per (precision, batch), shared by ort and
    trt. Workers keep the exporter's memory and threads out of the timing process (its peak RSS
    stays the backends' own); `cfg.export_jobs` of them run at once. Returns folders and failure
    reasons keyed by ("family:precision", batch), and the seconds each folder took.
    """
    import concurrent.futures as cf
    import multiprocessing as mp

    tasks: dict[tuple[str, int], dict] = {}
    for family, precision, batch in wanted:
        t = tasks.setdefault(
            (precision, batch),
            {
                "cfg": asdict(cfg),
                "out": str(root / export_folder_name(cfg, precision, batch)),
                "precision": precision,
                "batch": batch,
                "families": [],
                "quick": throwaway and cfg.quick,
                "verbose": not cfg.quick and cfg.export_jobs == 1,
            },
        )
        t["families"].append(family)
    folders: dict[tuple[str, int], Path] = {}
    failures: dict[tuple[str, int], str] = {}
    seconds: dict[tuple[str, int], float] = {}
    if not tasks:
        return folders, failures, seconds
    jobs = max(1, min(cfg.export_jobs, len(tasks)))
    log(f"preparing {len(tasks)} export folder(s) under {root}, {jobs} at a time")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(prepare_folder, t): key for key, t in tasks.items()}
        for fut in cf.as_completed(futures):
            precision, batch = futures[fut]
            t = tasks[(precision, batch)]
            try:
                done = fut.result()
            except Exception as e:  # the worker died (out of memory, killed)
                done = {
                    "families": dict.fromkeys(t["families"], f"export worker died: {_first_line(e)}"),
                    "seconds": None,
                }
            for family, why in done["families"].items():
                key = (f"{family}:{precision}", batch)
                seconds[key] = done["seconds"]
                if why:
                    failures[key] = why
                else:
                    folders[key] = Path(t["out"])
            state = "; ".join(f"{f}: {w}" for f, w in done["families"].items() if w) or "ok"
            took = "" if done["seconds"] is None else f" in {done['seconds']:.0f} s"
            log(f"  {Path(t['out']).name}{took}: {state}")
    return folders, failures, seconds


def _stats_dict(seconds: list[float], flops: float | None, peak_tflops: float | None) -> dict:
    st = Stats.of(seconds)
    d = st.to_dict()
    if flops:
        tflops = flops / (st.median_ms / 1e3) / 1e12
        d["tflops"] = tflops
        d["pct_of_peak"] = 100.0 * tflops / peak_tflops if peak_tflops else None
    return d


# ------------------------------------------------------------------------------ one (backend, batch)


def measure(
    runner: bk.Runner,
    batch: int,
    cfg: BenchConfig,
    flops_forward: float,
    peak_tflops: float | None,
    log: Callable[[str], None],
) -> dict:
    """Time every requested stage of one backend at one batch; returns the row's figures."""
    row: dict = {"status": "measured"}
    runner.memory_begin()
    t0 = time.perf_counter()
    runner.open(batch)
    row["load_s"] = time.perf_counter() - t0
    runner.memory_sample()

    def timed(stage: bk.Stage, flops: float | None, sync) -> dict:
        first = CpuClock(sync).span(stage.fn)  # compile, lazy init, graph capture: never in the stats
        secs = stage.clock.time(stage.fn, cfg.warmup - 1, cfg.repeat)
        runner.memory_sample()
        d = _stats_dict(secs, flops, peak_tflops)
        d["first_call_ms"] = first * 1e3
        d["clock"] = stage.clock.kind
        return d

    sync = runner.sync
    if "denoiser" in cfg.stages:
        row["denoiser"] = timed(runner.denoiser(), flops_forward, sync)
    if "step" in cfg.stages or "sample" in cfg.stages:
        row["step"] = timed(runner.step(), flops_forward, sync)
        for name, st in runner.step_variants().items():
            row[name] = timed(st, flops_forward, sync)
    vae = runner.vae() if ("vae" in cfg.stages or "sample" in cfg.stages) else None
    row["vae"] = timed(vae, None, sync) if vae is not None else None

    step_s = row["step"]["median_ms"] / 1e3 if "step" in row else None
    vae_s = row["vae"]["median_ms"] / 1e3 if row.get("vae") else 0.0
    estimate = None if step_s is None else cfg.steps * step_s + vae_s
    sample: dict = {"steps": cfg.steps, "decode": row.get("vae") is not None}
    if "sample" in cfg.stages and (estimate is None or estimate <= cfg.max_sample_seconds):
        st = runner.sample(cfg.steps)
        secs = st.clock.time(st.fn, 0, cfg.sample_repeat)
        runner.memory_sample()
        total = Stats.of(secs).median_ms / 1e3
        sample.update(kind="measured", total_s=total, runs=len(secs), clock=st.clock.kind)
    elif estimate is not None:
        why = (
            f"a whole sample would take about {estimate:.0f} s (> --max-sample-seconds {cfg.max_sample_seconds:g})"
            if "sample" in cfg.stages
            else "sample stage not requested"
        )
        sample.update(kind="estimated", total_s=estimate, runs=0, why=why)
    if "total_s" in sample:
        total = sample["total_s"]
        sample["denoiser_x_steps_s"] = None if step_s is None else cfg.steps * step_s
        sample["vae_s"] = row["vae"]["median_ms"] / 1e3 if row.get("vae") else None
        if sample["kind"] == "measured" and step_s is not None:
            over = total - cfg.steps * step_s - vae_s
            sample["loop_overhead_s"] = over
            sample["loop_overhead_pct"] = 100.0 * over / total if total > 0 else None
        else:
            sample["loop_overhead_s"] = sample["loop_overhead_pct"] = None
        sample["images_per_s"] = batch / total if total > 0 else None
        row["sample"] = sample
    else:
        row["sample"] = None
    if "step_no_cuda_graph" in row and "step" in row:
        row["cuda_graph_step_speedup"] = row["step_no_cuda_graph"]["median_ms"] / row["step"]["median_ms"]
    row["memory"] = runner.memory_end()
    return row


# ------------------------------------------------------------------------------ the whole run


def _add_ratios(rows: list[dict]) -> None:
    """Every figure as a speed ratio to torch-fp32 at the same batch (> 1: faster than it)."""
    base = {r["batch"]: r for r in rows if r["backend"] == bk.BASELINE and r["status"] == "measured"}
    for r in rows:
        if r["status"] != "measured":
            r["ratio_to_torch_fp32"] = None
            continue
        b = base.get(r["batch"])
        out: dict = {}
        for stage in ("denoiser", "step", "vae"):
            mine, theirs = r.get(stage), (b or {}).get(stage)
            out[stage] = theirs["median_ms"] / mine["median_ms"] if mine and theirs else None
        ms, bs = r.get("sample"), (b or {}).get("sample")
        if ms and bs:
            out["images_per_s"] = ms["images_per_s"] / bs["images_per_s"]
            out["sample_basis"] = ms["kind"] if ms["kind"] == bs["kind"] else "mixed"
        else:
            out["images_per_s"] = out["sample_basis"] = None
        r["ratio_to_torch_fp32"] = out


def _model_facts(models: bk.TorchModels | None, cfg: BenchConfig) -> dict:
    if models is not None:
        mcfg = models.cfg
        params = sum(p.numel() for p in models.model.parameters())
    else:
        from dit_export.models.configs import model_config

        mcfg = model_config(cfg.model or "XL/2", cfg.image_size or 256)
        params = None
    macs = mcfg.macs_per_forward()
    return {
        "name": mcfg.name or "custom",
        "config": mcfg.to_dict(),
        "image_size": mcfg.input_size * 8,
        "parameters": params,
        "macs_per_image_forward": macs,
        "flops_per_image_forward": 2 * macs,
        "guided": True,
        "rows_per_forward": "2N (conditional + null label, guidance scale 4)",
        "flops_note": "DiT MACs from the config × 2 FLOPs × 2 rows per image (guidance); "
        "the step's elementwise math and the VAE are not counted",
    }


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark described by `cfg`; returns the whole result (the JSON document)."""
    cfg.validate()
    cfg.batches = sorted(set(cfg.batches))
    specs = bk.parse_backends(cfg.backends)
    notes: list[str] = []
    if bk.SPECS[bk.BASELINE] not in specs:
        specs.insert(0, bk.SPECS[bk.BASELINE])
        notes.append(f"{bk.BASELINE} added: every ratio is taken against it, measured in the same run")
    import torch

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = bk.Env(device=device, quick=cfg.quick, torch_version=torch.__version__)
    machine = machine_info()
    other_load = OtherLoad()
    gpu = machine["gpu"]
    peak = device_peak(gpu["name"]) if gpu and device == "cuda" else None
    started = _dt.datetime.now(_dt.timezone.utc)
    t_start = time.perf_counter()

    backends: list[dict] = []
    for s in specs:
        why = bk.skip_reason(s, env)
        backends.append(
            {"name": s.name, "summary": s.summary, "status": "skipped" if why else "measured", "reason": why}
        )
        log(f"{s.name:<14} {'skipped: ' + why if why else 'will run'}")
    active = [s for s, b in zip(specs, backends) if b["status"] == "measured"]

    tmp_root = None
    if cfg.engines:
        root = Path(cfg.engines)
    else:
        tmp_root = Path(tempfile.mkdtemp(prefix="dit_bench_"))
        root = tmp_root
    rows: list[dict] = []
    try:
        wanted: list[tuple[str, str, int]] = []
        for s in active:
            if s.family != "torch":
                for b in cfg.batches:
                    if (s.family, s.precision, b) not in wanted:
                        wanted.append((s.family, s.precision, b))
        folders, failures, prep_s = prepare_exports(cfg, root, wanted, log, throwaway=tmp_root is not None)

        models = None
        torch_specs = [s for s in active if s.family == "torch"]
        runtime_specs = [s for s in active if s.family != "torch"]
        model_facts = None
        if torch_specs:
            log(f"loading the PyTorch reference on {device}")
            models = bk.TorchModels(lambda: _load_dit(cfg), lambda: _load_vae(cfg), device)
            model_facts = _model_facts(models, cfg)
        flops_per_image = None
        for s in torch_specs + runtime_specs:
            if s.family == "torch":
                assert models is not None
                runner: bk.Runner = bk.TorchRunner(s, models, cfg.torch_attention == "sdpa", cfg.compile_mode)
            else:
                if models is not None:  # the runtime backends run without the torch model in memory
                    runner = None  # type: ignore[assignment]  # drop the last torch runner's compiled modules
                    models.close()
                    models = None
                fam_key = f"{s.family}:{s.precision}"
                runner = bk.RuntimeRunner(
                    s, {b: f for (k, b), f in folders.items() if k == fam_key}, threads=cfg.threads
                )
            if model_facts is None:
                model_facts = _model_facts(None, cfg)
            flops_per_image = model_facts["flops_per_image_forward"]
            pc, pc_note = peak_class(s, device if s.family == "torch" else bk.runtime_device(s))
            peak_tflops = peak["tflops"][pc] if peak and pc else None
            failed_at: str | None = None
            for b in cfg.batches:
                base = {"backend": s.name, "batch": b}
                fam_key = f"{s.family}:{s.precision}"
                if failed_at is not None:
                    rows.append({**base, "status": "failed", "reason": f"not run: {failed_at}"})
                    continue
                if s.family != "torch" and (fam_key, b) in failures:
                    rows.append({**base, "status": "failed", "reason": failures[(fam_key, b)]})
                    continue
                log(f"timing {s.name} batch {b} ...")
                try:
                    row = measure(runner, b, cfg, flops_per_image * 2 * b, peak_tflops, log)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # OOM, compile failure, provider error: this row failed
                    reason = _first_line(e)
                    rows.append({**base, "status": "failed", "reason": reason})
                    failed_at = f"batch {b} failed ({reason})"
                    log(f"  failed: {reason}")
                    continue
                finally:
                    try:
                        runner.close()
                    except Exception:  # closing after a failure must not hide the failure
                        pass
                row.update(base)
                row["info"] = dict(runner.info)
                row["peak_class"] = pc
                row["peak_class_note"] = pc_note or None
                row["peak_tflops"] = peak_tflops
                if s.family != "torch":
                    row["prepare_s"] = prep_s.get((fam_key, b))
                rows.append(row)
                log("  " + _one_line(row))
        if models is not None:
            models.close()
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)

    # every measured backend with no measured row at all is reported as failed, not measured
    for entry in backends:
        mine = [r for r in rows if r["backend"] == entry["name"]]
        if entry["status"] == "measured" and mine and all(r["status"] != "measured" for r in mine):
            entry["status"] = "failed"
            entry["reason"] = mine[0]["reason"]
    _add_ratios(rows)
    import os

    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    other = other_load.percent()
    machine["other_processes_cpu_pct"] = other
    if device == "cpu" and other is not None and other > 10.0:
        notes.append(
            f"other processes used {other:.0f}% of the CPUs during this run: CPU timings competed with "
            "them, and multi-threaded kernels (torch's OpenMP especially) slow down badly when a core is "
            "taken; rerun on an idle machine before trusting them"
        )
    order = {s.name: i for i, s in enumerate(specs)}
    rows.sort(key=lambda r: (order[r["backend"]], r["batch"]))
    return {
        "schema": SCHEMA,
        "created_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_s": time.perf_counter() - t_start,
        "command": "python -m dit_export " + " ".join(sys.argv[1:]) if sys.argv else None,
        "machine": machine,
        "versions": versions(),
        "config": {**asdict(cfg), "device": device, "sampler": "ddpm", "cfg_scale": bk.GUIDANCE},
        "model": model_facts or _model_facts(None, cfg),
        "device_peak": peak,
        "notes": notes,
        "backends": backends,
        "results": rows,
    }


def _one_line(row: dict) -> str:
    parts = []
    for k in ("denoiser", "step", "vae"):
        if row.get(k):
            parts.append(f"{k} {row[k]['median_ms']:.2f} ms")
    s = row.get("sample")
    if s:
        parts.append(f"sample {s['total_s']:.2f} s ({s['kind']}), {s['images_per_s']:.3g} img/s")
    return ", ".join(parts)


def _load_dit(cfg: BenchConfig):
    from dit_export.models.checkpoints import load_dit

    return load_dit(
        cfg.ckpt,
        model=cfg.model,
        image_size=cfg.image_size,
        flavor=cfg.flavor,
        random_weights=cfg.random_weights,
        weights_seed=cfg.weights_seed,
        num_classes=cfg.num_classes,
    )


def _load_vae(cfg: BenchConfig):
    """The same VAE the export uses (random-* variants seeded with the weights seed)."""
    if cfg.vae == "none":
        return None
    from dit_export.export.exporter import RANDOM_VAES
    from dit_export.models.vae import VAEDecode, load_vae, random_vae

    vae = (
        random_vae(cfg.vae.removeprefix("random-"), cfg.weights_seed)
        if cfg.vae in RANDOM_VAES
        else load_vae(cfg.vae)
    )
    return VAEDecode(vae)
