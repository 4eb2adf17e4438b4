"""int8 points for the forecast cache's Pareto plot (docs/cache_pareto.png, benchmarks/pareto.py).

Not a test. Three parts, all into benchmarks/results/int8_pareto.{json,md} (every row saved as it lands,
so a stopped run resumes where it was):

    python benchmarks/int8_pareto.py score [--seeds 0 1] [--per-class 20] [--threads 1]
    python benchmarks/int8_pareto.py time [--repeat 3] [--threads 1]
    python benchmarks/int8_pareto.py report

score: tiny-digits class accuracy and FD of the int8 export (batch 10, calibrated on ddpm-50 × seeds 0 1)
through ONNX Runtime CPU at every uncached (sampler, steps) of benchmarks/results/cache_quality.json,
with that table's footing: cfg 4, `per_class` images of each class, the same seeds and Philox noise,
the same classifier (`train_classifier(0)`). Its fp32 rows come from the PyTorch reference loop, which
the fp32 ONNX graph reproduces (ddpm-50: FD 19.96 / 21.70 both ways, benchmarks/results/int8.md).

time: seconds per finished image (every step + the VAE decode, 10 labels = one batch-10 call) of the
int8 and the fp32 folders at the same points, through the runtime's `Sampler.generate`, interleaved
(each point's two precisions side by side, the order rotated every repeat) at cache_speed.py's grid
footing (batch 10, 1 intra-op thread). pareto.py then draws int8 at x = the plotted fp32 seconds ×
(int8 / fp32 median of this run), so both sit on the fp32 grid's (load's) scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from int8_speed import RESULTS, folder, uptime  # noqa: E402

from dit_export.fileio import write_bytes  # noqa: E402

JSON = RESULTS / "int8_pareto.json"
QUALITY = RESULTS / "cache_quality.json"
BATCH = 10


def plain_points(path: Path = QUALITY) -> dict[tuple[str, int], dict[int, dict]]:
    """(sampler, steps) of every uncached row of the cache quality table → {seed: its fp32 row}."""
    out: dict[tuple[str, int], dict[int, dict]] = {}
    for r in json.loads(path.read_text())["rows"].values():
        if r["extra"]["cache_interval"] == 1:
            out.setdefault((r["sampler"], r["steps"]), {})[r["seed"]] = r
    order = ["ddpm", "ddim", "dpm++2m", "dpm++2m-sde"]
    return dict(
        sorted(out.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else 9, kv[0]))
    )


def load() -> dict:
    return json.loads(JSON.read_text()) if JSON.is_file() else {"score": {}, "time": {}}


def save(res: dict) -> None:
    write_bytes(JSON, (json.dumps(res, indent=1) + "\n").encode())
    write_bytes(RESULTS / "int8_pareto.md", render(res).encode())


def score(args, res: dict) -> None:
    from dit_export.runtime.sampler import Sampler
    from dit_export.verify.score import runtime_sample_fn, score_sampler, train_classifier

    rows = res.setdefault("score", {})
    todo = [(s, k, seed) for s, k in plain_points() for seed in args.seeds if f"{s}|{k}|{seed}" not in rows]
    print(f"{len(todo)} int8 rows to score ({len(rows)} stored)", flush=True)
    if not todo:
        return
    clf = train_classifier(0)
    runner = Sampler.load(folder(args.work, "tiny-digits", "int8", BATCH), "ort", threads=args.threads)
    res["score_meta"] = {
        "describe": runner.describe(),
        "per_class": args.per_class,
        "cfg": 4.0,
        "threads": args.threads,
        "command": "python benchmarks/int8_pareto.py " + " ".join(sys.argv[1:]),
    }
    for sampler, steps, seed in todo:
        before = uptime()
        fn = runtime_sample_fn(runner, cfg_scale=4.0, steps=steps, sampler=sampler, seed=seed)
        r = score_sampler(
            fn,
            per_class=args.per_class,
            classifier=clf,
            backend="ort",
            precision="int8",
            steps=steps,
            sampler=sampler,
            seed=seed,
        )
        rows[f"{sampler}|{steps}|{seed}"] = {
            "sampler": sampler,
            "steps": steps,
            "seed": seed,
            "accuracy": round(r.accuracy, 4),
            "fd": round(r.fd, 3),
            "fd_real": round(r.fd_real, 3),
            "images": r.num_images,
            "sample_seconds": round(r.sample_seconds, 1),
            "load": before.split("load average:")[-1].strip(),
        }
        print(json.dumps(rows[f"{sampler}|{steps}|{seed}"]), flush=True)
        save(res)
    runner.close()


def timing(args, res: dict) -> None:
    from dit_export.runtime.sampler import Sampler
    from dit_export.sampling.request import SampleRequest

    labels = tuple(i % 10 for i in range(BATCH))
    runners = {
        p: Sampler.load(folder(args.work, "tiny-digits", p, BATCH), "ort", threads=args.threads)
        for p in ("fp32", "int8")
    }
    cases = {
        (p, s, k): SampleRequest(labels, 0, 4.0, k, s) for s, k in plain_points() for p in ("fp32", "int8")
    }
    for r in runners.values():
        r.generate(SampleRequest(labels, 0, 4.0, 4, "ddim"))  # warm-up: sessions, buffers, the decode
    names = list(cases)
    times: dict[tuple, list[float]] = {c: [] for c in names}
    before = uptime()
    for i in range(args.repeat):
        for c in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            runners[c[0]].generate(cases[c])
            times[c].append(time.perf_counter() - t0)
        print(f"repeat {i + 1}/{args.repeat} done; {uptime()}", flush=True)
    rows = {}
    for s, k in plain_points():
        f, q = statistics.median(times["fp32", s, k]), statistics.median(times["int8", s, k])
        rows[f"{s}|{k}"] = {
            "sampler": s,
            "steps": k,
            "fp32_s_per_image": round(f / BATCH, 5),
            "int8_s_per_image": round(q / BATCH, 5),
            "int8_over_fp32": round(q / f, 4),
            "fp32_all_s": [round(x, 4) for x in times["fp32", s, k]],
            "int8_all_s": [round(x, 4) for x in times["int8", s, k]],
        }
    res["time"] = {
        "rows": rows,
        "describe": {p: r.describe() for p, r in runners.items()},
        "threads": args.threads,
        "repeat": args.repeat,
        "uptime_before": before,
        "uptime_after": uptime(),
        "command": "python benchmarks/int8_pareto.py " + " ".join(sys.argv[1:]),
    }
    add_fit(res["time"])
    for r in runners.values():
        r.close()
    save(res)


def add_fit(tm: dict) -> None:
    """One least-squares fit over every timed call: t = const + steps × per_step(precision), the
    constant shared (both folders run the same fp32 VAE decode and the same host work) and one line
    for all samplers (the same step graph). Each point's plotted int8/fp32 comes from the fit: under
    load single points are noisy, the fit uses all of them. A negative constant (load drifting
    during the run) is dropped: then the ratio is the per-step one at every point."""
    rows, times = [], []
    for r in tm["rows"].values():
        for i, p in enumerate(("fp32", "int8")):
            for t in r[f"{p}_all_s"]:
                rows.append([1.0, r["steps"] * (i == 0), r["steps"] * (i == 1)])
                times.append(t)
    a, t = np.array(rows), np.array(times)
    (c, s32, s8), *_ = np.linalg.lstsq(a, t, rcond=None)
    if c < 0:  # unphysical (load drift): fit without the constant
        c, ((s32, s8), *_) = 0.0, np.linalg.lstsq(a[:, 1:], t, rcond=None)
    tm["fit"] = {"const_s": float(c), "fp32_per_step_s": float(s32), "int8_per_step_s": float(s8)}
    for r in tm["rows"].values():
        r["int8_over_fp32_fit"] = round((c + s8 * r["steps"]) / (c + s32 * r["steps"]), 4)


def _fd(rows: list[dict]) -> str:
    seeds = " / ".join(f"{r['fd']:.2f}" for r in rows)
    return f"{statistics.mean(r['fd'] for r in rows):.2f} ({seeds})" if rows else "—"


def _acc(rows: list[dict]) -> str:
    return f"{100 * statistics.mean(r['accuracy'] for r in rows):.2f} %" if rows else "—"


def render(res: dict) -> str:
    """int8_pareto.md: one row per (sampler, steps): int8 vs fp32 quality, time, and the plotted ratio."""
    pts = plain_points()
    sc, tm = res.get("score", {}), res.get("time", {})
    out = [
        "# int8 on the forecast cache's Pareto plot (tiny-digits, uncached samplers)",
        "",
        "int8 = the `--precision int8` export (W8A8 QDQ, onnxruntime.quantization, calibrated on ddpm-50 × seeds",
        "0 1, batch 10), scored through ONNX Runtime CPU; fp32 = cache_quality.json's uncached rows (PyTorch",
        "reference loop, the same noise, seeds, classifier and 200 images per seed). FD and accuracy are the",
        "mean over the seeds (each seed in brackets). Time: seconds per finished image (batch 10, every step",
        "+ the VAE decode) of both folders side by side in one interleaved run; docs/cache_pareto.png draws",
        "int8 at the fp32 grid's seconds × the fitted int8/fp32 ratio of this run (below).",
        "",
    ]
    if m := res.get("score_meta"):
        out += [
            f"Score: `{m['command']}` — {m['describe']}, {m['threads']} thread(s); load per row: the JSON.",
            "",
        ]
    if tm:
        fit = tm["fit"]
        out += [
            f"Time: `{tm['command']}` — {tm['threads']} thread(s), median of {tm['repeat']} repeats. "
            f"Load before: `{tm['uptime_before']}`; after: `{tm['uptime_after']}`. Fit over all calls "
            f"(batch 10, a shared constant): {fit['const_s']:.3f} s + {1e3 * fit['fp32_per_step_s']:.1f} ms/step fp32, "
            f"{1e3 * fit['int8_per_step_s']:.1f} ms/step int8 (a step "
            f"{fit['fp32_per_step_s'] / fit['int8_per_step_s']:.2f}× faster in int8); the plot uses the fitted ratio.",
            "",
        ]
    cols = ["sampler", "steps", "int8 FD", "fp32 FD", "int8 accuracy", "fp32 accuracy", "int8 s/image"]
    cols += ["fp32 s/image", "int8/fp32 (this point)", "int8/fp32 (fit, plotted)"]
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for (s, k), fp in pts.items():
        mine = [sc[key] for seed in sorted(fp) if (key := f"{s}|{k}|{seed}") in sc]
        ref = [fp[seed] for seed in sorted(fp)]
        t = tm.get("rows", {}).get(f"{s}|{k}")
        cells = [s, str(k), _fd(mine), _fd(ref), _acc(mine), _acc(ref)]
        keys = ("int8_s_per_image", "fp32_s_per_image", "int8_over_fp32", "int8_over_fp32_fit")
        cells += [f"{t[c]:.4f}" if c.endswith("image") else f"{t[c]:.2f}" for c in keys] if t else ["—"] * 4
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("score", "time", "report"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (the grid's: 1)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/int8_bench"), help="int8_speed.py's export folders"
    )
    args = ap.parse_args(argv)
    res = load()
    if res.get("time"):
        add_fit(res["time"])
    if args.part == "score":
        score(args, res)
    elif args.part == "time":
        timing(args, res)
    save(res)
    print(f"wrote {JSON} and int8_pareto.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
