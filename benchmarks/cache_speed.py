"""Time per finished image with the forecast step cache on ONNX Runtime CPU: cached vs uncached.

    python benchmarks/cache_speed.py --models tiny-digits --run dpm++2m-sde:20 --grid
    python benchmarks/cache_speed.py --models S/2 --run ddim:50 --settings 1:0 3:2 --loop-only
    python benchmarks/cache_speed.py --models B/2 --run ddim:50 --settings 1:0 3:2 --loop-only --repeat 2
    python benchmarks/cache_speed.py --models S/2 --run ddim:50 ddpm:250 --settings 1:0 3:2 --finished-only
        [--threads 1] [--work-dir /tmp/cache_speed_engines] [--json benchmarks/results/cache_speed.json]
        [--out benchmarks/results/cache_speed.md]

Per model, one folder exported with the cache graphs (`--max-cache-order 2`, fp32; tiny-digits with
its own VAE at batch 10 as the demo builds it, S/2 and B/2 with random weights and the random SD
VAE at 256 px, batch 1; reused when already in `--work-dir`), then two measurements:

1. Graphs: `dit_step` (plain), `dit_step_full`, `dit_step_forecast` and `vae_decoder` run directly
   in ONNX Runtime sessions (inputs and outputs bound by pointer, as the runtime binds them),
   interleaved, `--graph-repeat` rounds: a full and a forecast step's cost over a plain step's
   (F, R), the decode's, and from them the time per finished image of every setting (the loop does
   no arithmetic: steps × graph + decode).
2. End to end: the runtime's `Sampler` on ONNX Runtime samples one full batch per setting `N:O`
   (N = 1: uncached) through `Sampler.generate(SampleRequest(..., cache_interval=N,
   cache_order=O))` — a finished image (latents + VAE decode) and, for uncached and N=3, O=2, the
   sampling loop alone; `--loop-only`: the loop alone for every setting (on a loaded 2-core machine
   a B/2 finished image takes minutes; the decode is the same for every setting and comes from 1.).
   Settings interleaved (one call each per round, the order rotated every round) after an untimed
   warm-up call of each at 4 steps, `--repeat` rounds, medians.

`--run` takes several SAMPLER:STEPS, timed side by side in the same rounds (e.g. `--run ddim:50
ddpm:250`: TaylorSeer's setting and DiT's sample.py default, DDPM with 250 steps, where the decode
is a smaller share of a finished image); the report opens with a table of N=3, O=2 against uncached
at each step count. `--finished-only` leaves out the loop-only calls (the loop's ratio is then the
graphs' composed one).

The issue's target: ≥ 1.8× at N=3, O=2 on S/2 and B/2. `--grid` (tiny-digits): also times every
setting of benchmarks/cache_quality.py's table (and every setting its JSON holds) end to end, for
benchmarks/pareto.py. Each invocation updates its models' entries in `--json` and rewrites the
report from all of them. Timings on a shared machine are noisy: each entry names the load average
and the CPU share other processes took during its run (`bench.machine.OtherLoad`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cache_quality import DEFAULT_COSTS, INTERVALS, ORDERS, SAMPLERS, equal_steps, export_folder  # noqa: E402

from dit_export.bench.machine import OtherLoad, machine_info, versions  # noqa: E402
from dit_export.fileio import write_json  # noqa: E402
from dit_export.sampling.cache import FORECAST_GRAPH, FULL_GRAPH, cache_plan  # noqa: E402
from dit_export.sampling.request import SampleRequest  # noqa: E402

MODELS = {  # name: (export arguments, batch)
    "tiny-digits": (["--model", "tiny-digits"], 10),
    "S/2": (["--model", "S/2", "--random-weights", "--vae", "random-sd"], 1),
    "B/2": (["--model", "B/2", "--random-weights", "--vae", "random-sd"], 1),
}
SETTINGS = ("1:0", "3:2", "3:0", "2:2", "4:2", "5:2")
LOOP_ONLY = ("1:0", "3:2")  # also timed without the VAE decode
GRAPHS = ("dit_step", FULL_GRAPH, FORECAST_GRAPH, "vae_decoder")
QUALITY_JSON = ROOT / "benchmarks/results/cache_quality.json"
WARMUP_STEPS = 4  # the warm-up call: enough steps for a full and a forecast step at N = 3


def folder_for(args, model: str) -> Path:
    """The model's export in --work-dir (fp32, cache graphs up to order 2), exported when missing;
    S/2 and B/2 unchecked (throw-away timing folders, as bench makes them)."""
    extra, batch = MODELS[model]
    return export_folder(args.work_dir, model, extra, batch, check=model == "tiny-digits")


def parse(setting: str) -> tuple[int, int]:
    n, o = setting.split(":")
    return int(n), int(o)


def graph_times(folder: Path, threads: int, repeat: int) -> dict:
    """Median ms of one call of each graph, interleaved, bound by pointer (no copies)."""
    import onnxruntime as ort

    from dit_export.export.feeds import example_feeds

    m = json.loads((folder / "manifest.json").read_text())
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    runs = {}
    keep = []  # the arrays the bindings point at
    for g in GRAPHS:
        if not (folder / f"{g}.onnx").is_file():
            continue
        sess = ort.InferenceSession(str(folder / f"{g}.onnx"), so, providers=["CPUExecutionProvider"])
        feeds = example_feeds(
            g,
            batch=m["batch"],
            channels=m["latent_channels"],
            size=m["latent_size"],
            num_classes=m["model"]["config"]["num_classes"],
            state=True,
            cache_shape=m["cache"]["shape"],
            cache_coef=np.array([1.0, 0.5, 0.2], np.float32)[: m["cache"]["shape"][2]],
        )
        b = sess.io_binding()
        for i in sess.get_inputs():
            v = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[i.name]))
            keep.append(v)
            b.bind_ortvalue_input(i.name, v)
        for o in sess.get_outputs():
            dtype = np.int64 if "int64" in o.type else np.float32
            v = ort.OrtValue.ortvalue_from_numpy(np.zeros(o.shape, dtype))
            keep.append(v)
            b.bind_ortvalue_output(o.name, v)
        runs[g] = (sess, b)
    times: dict[str, list[float]] = {g: [] for g in runs}
    for r in range(repeat + 1):
        for g, (sess, b) in runs.items():
            t0 = time.perf_counter()
            sess.run_with_iobinding(b)
            if r:
                times[g].append(1e3 * (time.perf_counter() - t0))
    ms = {g: float(np.median(v)) for g, v in times.items()}
    return {
        "ms": ms,
        "times_ms": times,
        "F": ms[FULL_GRAPH] / ms["dit_step"],
        "R": ms[FORECAST_GRAPH] / ms["dit_step"],
        "repeat": repeat,
    }


def composed(g: dict, steps: int, setting: str, batch: int) -> dict:
    """Seconds per image from the graph medians: plain steps × dit_step, or full × full + forecast ×
    forecast; + the decode."""
    n, o = parse(setting)
    ms = g["ms"]
    if n == 1:
        loop = steps * ms["dit_step"]
    else:
        full = cache_plan(steps, n, o, o + 1).num_full
        loop = full * ms[FULL_GRAPH] + (steps - full) * ms[FORECAST_GRAPH]
    dec = ms.get("vae_decoder", 0.0)
    return {"loop_s": loop / 1e3 / batch, "finished_s": (loop + dec) / 1e3 / batch}


def time_rounds(sampler, cases: dict[str, tuple[SampleRequest, bool]], repeat: int) -> dict[str, list[float]]:
    """Seconds per call of every case: one untimed warm-up call each at WARMUP_STEPS (sessions, buffers),
    then `repeat` rounds, each in an order rotated by one."""
    from dataclasses import replace

    names = list(cases)
    for k in names:
        req, decode = cases[k]
        sampler.generate(replace(req, steps=min(req.steps, WARMUP_STEPS)), decode=decode, progress=False)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeat):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            req, decode = cases[k]
            t0 = time.perf_counter()
            sampler.generate(req, decode=decode, progress=False)
            times[k].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{repeat} done", flush=True)
    return times


def fit_costs(rows: list[dict]) -> dict:
    """Least squares per sampler of t = c + plain·p + full·f + forecast·r; F = f/p, R = r/p."""
    out = {}
    for sampler in sorted({r["sampler"] for r in rows}):
        rs = [r for r in rows if r["sampler"] == sampler]
        a = np.array([[1.0, r["plain"], r["full"], r["forecast"]] for r in rs])
        t = np.array([r["median_s"] for r in rs])
        (c, p, f, q), *_ = np.linalg.lstsq(a, t, rcond=None)
        out[sampler] = {"const_s": c, "plain_s": p, "full_s": f, "forecast_s": q, "F": f / p, "R": q / p}
    return out


def quality_settings() -> list[tuple[str, int, int, int]]:
    """(sampler, steps, N, O) of every row in cache_quality.py's JSON (seeds merged)."""
    try:
        rows = json.loads(QUALITY_JSON.read_text())["rows"].values()
    except (OSError, KeyError, ValueError):
        return []
    out = {(r["sampler"], r["steps"], r["extra"]["cache_interval"], r["extra"]["cache_order"]) for r in rows}
    return sorted(out)


def grid(runner, labels, repeat: int) -> tuple[list[dict], dict]:
    """Every (sampler, steps, N, O) of cache_quality.py's table and its plain step counts, timed."""
    keys: dict[str, tuple[str, int, int, int]] = {}
    for sampler, steps, n, o in quality_settings():  # what cache_quality.py has scored, if any
        keys[f"{sampler} {steps} {n}:{o}"] = (sampler, steps, n, o)
    try:  # the equal-time counts the quality table used
        costs = tuple(json.loads(QUALITY_JSON.read_text())["step_costs"])
    except (OSError, KeyError, ValueError):
        costs = DEFAULT_COSTS
    for sampler, steps in SAMPLERS:
        for n in INTERVALS:
            for k in {steps, *equal_steps(sampler, steps, n, costs)}:
                keys[f"{sampler} {k} 1:0"] = (sampler, k, 1, 0)
            for o in ORDERS:
                keys[f"{sampler} {steps} {n}:{o}"] = (sampler, steps, n, o)
    cases = {
        k: (SampleRequest(labels, 0, 4.0, s, sm, cache_interval=n, cache_order=o), True)
        for k, (sm, s, n, o) in keys.items()
    }
    print(f"tiny-digits grid: {len(cases)} settings", flush=True)
    times = time_rounds(runner, cases, repeat)
    rows = []
    for k, (sm, s, n, o) in keys.items():
        full = cache_plan(s, n, o, o + 1).num_full if n > 1 else 0
        rows.append(
            {
                "sampler": sm,
                "steps": s,
                "interval": n,
                "order": o,
                "plain": s if n == 1 else 0,
                "full": full,
                "forecast": s - full if n > 1 else 0,
                "median_s": float(np.median(times[k])),
                "per_image_s": float(np.median(times[k])) / len(labels),
                "times_s": times[k],
            }
        )
    fits = fit_costs(rows)
    costs = {
        "tiny-digits": {
            "full": float(np.mean([v["F"] for v in fits.values()])),
            "forecast": float(np.mean([v["R"] for v in fits.values()])),
            "where": f"ONNX Runtime CPU fp32, batch {len(labels)}, end-to-end grid fit (mean of the samplers)",
            "per_sampler": fits,
        }
    }
    return rows, costs


def run_model(args, model: str, folder: Path) -> dict[str, dict]:
    """The model's entries: one per --run (keyed by the model's name alone for one run, else
    "MODEL, SAMPLER-STEPS"), every run's settings timed in the same interleaved rounds."""
    from dit_export.runtime import Sampler

    runs = [(r.split(":")[0], int(r.split(":")[1])) for r in args.run]
    batch = MODELS[model][1]
    other, load0, t_start = OtherLoad(), os.getloadavg(), dt.datetime.now(dt.timezone.utc)
    print(f"{model}: graphs, {args.graph_repeat} rounds", flush=True)
    graphs = graph_times(folder, args.threads, args.graph_repeat)
    print(f"  {graphs['ms']}  F {graphs['F']:.3f} R {graphs['R']:.3f}", flush=True)
    labels = tuple(i % 10 for i in range(batch))
    runner = Sampler.load(folder, backend="ort", threads=args.threads)
    entries: dict[str, dict] = {}
    try:
        cases: dict[str, tuple[SampleRequest, bool]] = {}  # "SAMPLER-STEPS N:O[ loop]"
        for sampler_name, steps in runs:
            for s in args.e2e_settings or args.settings:
                n, o = parse(s)
                req = SampleRequest(labels, 0, 4.0, steps, sampler_name, cache_interval=n, cache_order=o)
                if not args.loop_only:
                    cases[f"{sampler_name}-{steps} {s}"] = (req, True)
                if args.loop_only or (s in LOOP_ONLY and not args.finished_only):
                    cases[f"{sampler_name}-{steps} {s} loop"] = (req, False)
        print(f"{model}: {runner.describe()}: {', '.join(args.run)}, {len(cases)} cases", flush=True)
        times = time_rounds(runner, cases, args.repeat) if args.repeat > 0 else {}
        for sampler_name, steps in runs:
            run = f"{sampler_name}-{steps}"
            mine = {k.split(" ", 1)[1]: v for k, v in times.items() if k.split(" ", 1)[0] == run}
            entry = {
                "folder": str(folder),
                "describe": runner.describe(),
                "batch": batch,
                "sampler": sampler_name,
                "steps": steps,
                "graphs": graphs,
                "composed": {s: composed(graphs, steps, s, batch) for s in args.settings},
                "cases": {
                    k: {
                        "median_s": float(np.median(v)),
                        "min_s": float(np.min(v)),
                        "max_s": float(np.max(v)),
                        "per_image_s": float(np.median(v)) / batch,
                        "decode": not k.endswith(" loop"),
                        "num_full": cache_plan(
                            steps, *parse(k.split()[0]), parse(k.split()[0])[1] + 1
                        ).num_full,
                        "times_s": v,
                    }
                    for k, v in mine.items()
                },
            }
            if len(runs) > 1:
                entry["side_by_side"] = args.run
            entries[model if len(runs) == 1 else f"{model}, {run}"] = entry
        if args.grid and model == "tiny-digits":
            entry = entries[next(iter(entries))]
            entry["grid"], entry["step_costs"] = grid(runner, labels, args.repeat)
    finally:
        runner.close()
    for entry in entries.values():
        entry.update(
            command=" ".join(["python benchmarks/cache_speed.py", *sys.argv[1:]]),
            started=t_start.isoformat(timespec="seconds"),
            load_average=[list(load0), list(os.getloadavg())],
            other_cpu_percent=other.percent(),
            uptime=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            threads=args.threads,
            repeat=args.repeat,
        )
    return entries


def side_by_side(res: dict) -> list[str]:
    """Lines comparing the runs of one side-by-side invocation (--run A B): N=3, O=2 (or the first
    cached setting) against uncached, per finished image and for the loop, end to end and composed."""
    lines = []
    for key, r in res["models"].items():
        if "side_by_side" not in r:
            continue
        cached = next((s for s in r["composed"] if s == "3:2"), None) or next(
            (s for s in r["composed"] if parse(s)[0] > 1), None
        )
        if cached is None or "1:0" not in r["composed"]:
            continue
        c, u = r["composed"][cached], r["composed"]["1:0"]
        e2e = []
        for suffix, label in (("", "finished"), (" loop", "loop")):
            a, b = r["cases"].get("1:0" + suffix), r["cases"].get(cached + suffix)
            if a and b:
                e2e.append(
                    f"{label} {a['per_image_s']:.3f} → {b['per_image_s']:.3f} s = **{a['median_s'] / b['median_s']:.2f}×**"
                )
        n, o = parse(cached)
        lines.append(
            f"| {key} | N={n}, O={o} | {'; '.join(e2e) or '–'} | {u['finished_s'] / c['finished_s']:.2f}× |"
            f" {u['loop_s'] / c['loop_s']:.2f}× | {r['graphs']['ms'].get('vae_decoder', 0.0) / 1e3:.2f} s |"
        )
    if not lines:
        return []
    return [
        "## Side by side: cached vs uncached at each step count (one interleaved run)",
        "",
        "| model, run | cached | end to end: s / image (median) | composed: finished | composed: loop | VAE decode |",
        "|---|---|---|---:|---:|---:|",
        *lines,
        "",
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument(
        "--run",
        nargs="+",
        default=["ddim:50"],
        help="SAMPLER:STEPS of the cached-vs-uncached rows; several (e.g. ddim:50 ddpm:250, DiT's sample.py"
        " default) are timed side by side in the same interleaved rounds",
    )
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help="N:O (1:0 = uncached)")
    p.add_argument(
        "--e2e-settings", nargs="+", default=None, help="N:O timed end to end (default: all of --settings)"
    )
    p.add_argument("--repeat", type=int, default=3, help="end-to-end rounds (after the warm-up calls)")
    p.add_argument("--graph-repeat", type=int, default=5, help="rounds of the per-graph timing")
    p.add_argument("--loop-only", action="store_true", help="end to end without the decode (every setting)")
    p.add_argument(
        "--finished-only",
        action="store_true",
        help="end to end only finished images (no loop-only calls; the loop's ratio comes from the graphs)",
    )
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--grid", action="store_true", help="tiny-digits: time every cache_quality.py setting too")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/cache_speed_engines"))
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/cache_speed.json")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cache_speed.md")
    args = p.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    folders = {m: folder_for(args, m) for m in args.models}  # every export before any timing
    res = json.loads(args.json.read_text()) if args.json.is_file() else {"models": {}}
    for model, folder in folders.items():
        for key, entry in run_model(args, model, folder).items():
            if "grid" in entry:
                res["grid"], res["step_costs"] = entry.pop("grid"), entry.pop("step_costs")
            res["models"][key] = entry
        res.update(machine=machine_info(), versions=versions())
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, res)
        args.out.write_text(report(res))
    print(report(res))
    return 0


def report(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Forecast step cache: time per finished image on ONNX Runtime CPU",
        "",
        f"{m['label']} ({m['platform']}), onnxruntime {res['versions']['onnxruntime']}; fp32 exports with cache"
        " graphs up to order 2 (3 slots: every order runs the same graphs). Per model: (1) the graphs timed"
        " directly, interleaved, bound by pointer; (2) the runtime's `Sampler.generate` end to end, settings"
        " interleaved (one call of each per round, the order rotated every round, warm-up calls first), medians.",
        "",
    ]
    lines += side_by_side(res)
    for model, r in res["models"].items():
        g, batch = r["graphs"], r["batch"]
        lines += [
            f"## {model} — {r['describe']}, {r['sampler']}-{r['steps']}",
            "",
            f"`{r['command']}` — started {r['started']}, {r['threads']} intra-op thread(s); load average (1/5/15 min)"
            f" at start {'/'.join(f'{x:.1f}' for x in r['load_average'][0])}, at end"
            f" {'/'.join(f'{x:.1f}' for x in r['load_average'][1])}; other processes took"
            f" {r['other_cpu_percent']:.0f} % of the CPUs during it (`uptime` at the end: {r['uptime']}).",
            "",
            f"Graphs (median of {g['repeat']} interleaved rounds, one call = the batch of {batch}): "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in g["ms"].items())
            + f"; F = full / plain step = {g['F']:.3f}, R = forecast / plain step = {g['R']:.3f}.",
            "",
            "| setting | full calls | composed: loop s / image | composed: finished s / image | × uncached (loop) |"
            " × uncached (finished) | end to end: s / image | min–max (batch) | × uncached (end to end) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = r["composed"].get("1:0")
        for s, c in r["composed"].items():
            n, o = parse(s)
            name = "uncached" if n == 1 else f"N={n}, O={o}"
            full = cache_plan(r["steps"], n, o, o + 1).num_full
            cl = f"{base['loop_s'] / c['loop_s']:.2f}×" if base else "–"
            cf = f"{base['finished_s'] / c['finished_s']:.2f}×" if base else "–"
            e2e = []
            for key, label in ((s, "finished"), (f"{s} loop", "loop")):
                e = r["cases"].get(key)
                ref = r["cases"].get("1:0" if label == "finished" else "1:0 loop")
                if e:
                    speed = f"{ref['median_s'] / e['median_s']:.2f}×" if ref else "–"
                    e2e.append((label, e, speed))
            cells = [name, str(full), f"{c['loop_s']:.3f}", f"{c['finished_s']:.3f}", cl, cf]
            if not e2e:
                lines.append("| " + " | ".join(cells + ["–", "–", "–"]) + " |")
            for label, e, speed in e2e:
                lines.append(
                    "| "
                    + " | ".join(
                        cells
                        + [f"{e['per_image_s']:.3f} ({label})", f"{e['min_s']:.2f}–{e['max_s']:.2f} s", speed]
                    )
                    + " |"
                )
        lines.append("")
    if res.get("step_costs"):
        c = res["step_costs"]["tiny-digits"]
        lines += [
            "## tiny-digits step costs from the end-to-end grid (for cache_quality.py's equal-time rows)",
            "",
            f"{c['where']}: F = {c['full']:.3f}, R = {c['forecast']:.3f} ({len(res['grid'])} settings timed).",
            "",
            "| sampler | plain step ms | full step ms | forecast step ms | constant ms | F | R |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s, v in c["per_sampler"].items():
            lines.append(
                f"| {s} | {1e3 * v['plain_s']:.2f} | {1e3 * v['full_s']:.2f} | {1e3 * v['forecast_s']:.2f} |"
                f" {1e3 * v['const_s']:.1f} | {v['F']:.3f} | {v['R']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
