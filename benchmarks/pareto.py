"""The forecast cache's Pareto picture: seconds per finished image against Fréchet distance.

    python benchmarks/pareto.py [--quality benchmarks/results/cache_quality.json]
        [--speed benchmarks/results/cache_speed.json] [--out docs/cache_pareto.png]
        [--int8 benchmarks/results/int8_pareto.json]

One panel per sampler of benchmarks/cache_quality.py's table (tiny-digits): the uncached sampler at
every step count scored (a line through the plain points, labelled with the steps) and every cached
setting (marker = order O, colour = interval N; open markers at the top edge: off scale, listed in the panel), FD = mean over the seeds with the seeds' range as
an error bar. Seconds per finished image = the ONNX Runtime CPU timing of that very setting from
cache_speed.py's `--grid` run (latents + decode, batch 10), else composed from its interleaved
tiny-digits graph medians (steps × the step graph + the decode), else the sampling time of the
quality run itself (the PyTorch reference loop) — the title says which (`--time-from`).
Lower-left is better: a cached point below the plain line at the same seconds beats fewer steps.
The int8 export's uncached points (orange, dashed; benchmarks/int8_pareto.py: scored through ONNX
Runtime with the same seeds, noise and classifier) sit at the fp32 point's seconds × the int8/fp32
ratio of int8_pareto.py's side-by-side timing, i.e. on the same footing as the fp32 points (`--int8`).
Needs matplotlib (`pip install 'dit_export[plot]'`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARKERS = {0: "o", 1: "s", 2: "^", 3: "D"}
COLOURS = {2: "tab:blue", 3: "tab:red", 4: "tab:green", 5: "tab:purple"}
INT8_STYLE = {
    "color": "tab:orange",
    "marker": "P",
    "ls": "--",
    "lw": 1.0,
    "capsize": 2,
    "label": "int8, uncached",
}
OFF_SCALE = 6.0  # FD above the worst uncached point by more than this is drawn at the top edge


def quality_points(path: Path) -> dict[tuple[str, int, int, int], dict]:
    """(sampler, steps, N, O) → FD mean/min/max over the seeds, accuracy mean, torch seconds/image."""
    data = json.loads(path.read_text())
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in data["rows"].values():
        e = r["extra"]
        groups[r["sampler"], r["steps"], e["cache_interval"], e["cache_order"]].append(r)
    return {
        k: {
            "fd": float(np.mean([r["fd"] for r in rs])),
            "fd_lo": min(r["fd"] for r in rs),
            "fd_hi": max(r["fd"] for r in rs),
            "acc": float(np.mean([r["accuracy"] for r in rs])),
            "seeds": len(rs),
            "torch_s": float(np.mean([r["sample_seconds"] / r["num_images"] for r in rs])),
        }
        for k, rs in groups.items()
    }


def speed_points(
    path: Path, quality: dict, source: str
) -> tuple[dict[tuple[str, int, int, int], float], str]:
    """Seconds per finished image by setting, and what they are: cache_speed.py's end-to-end grid
    (`grid`), or composed from its interleaved tiny-digits graph medians (`graphs`: steps × the
    plain / full / forecast step + the decode, per image of the batch)."""
    if not path.is_file() or source == "quality":
        return {}, ""
    data = json.loads(path.read_text())
    m = data.get("machine", {}).get("label", "")
    tiny = data.get("models", {}).get("tiny-digits", {})
    if source in ("auto", "grid") and data.get("grid"):
        pts = {(g["sampler"], g["steps"], g["interval"], g["order"]): g["per_image_s"] for g in data["grid"]}
        return (
            pts,
            f"ONNX Runtime CPU fp32 end to end, batch 10, {tiny.get('threads', '?')} thread(s), {m}, shared",
        )
    if source == "grid" or "graphs" not in tiny:
        return {}, ""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cache_speed import composed

    pts = {k: composed(tiny["graphs"], k[1], f"{k[2]}:{k[3]}", tiny["batch"])["finished_s"] for k in quality}
    return pts, (
        f"ONNX Runtime CPU fp32, batch 10, composed from the interleaved graph medians (steps × step graph + decode),"
        f" {tiny.get('threads', '?')} thread(s), {m}, shared"
    )


def int8_points(path: Path, speed: dict) -> dict[tuple[str, int], dict]:
    """(sampler, steps) → the int8 export's FD mean/min/max over its seeds at that uncached point
    (int8_pareto.py score) and x = the plotted fp32 seconds × int8 / fp32 of int8_pareto.py's
    side-by-side timing (its fit over all points where present), so int8 sits on the fp32 points'
    footing; points without both are left out."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = data.get("time", {}).get("rows", {}).values()
    ratio = {(t["sampler"], t["steps"]): t.get("int8_over_fp32_fit", t["int8_over_fp32"]) for t in rows}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in data.get("score", {}).values():
        groups[r["sampler"], r["steps"]].append(r)
    return {
        k: {
            "x": speed[(*k, 1, 0)] * ratio[k],
            "fd": float(np.mean([r["fd"] for r in rs])),
            "fd_lo": min(r["fd"] for r in rs),
            "fd_hi": max(r["fd"] for r in rs),
        }
        for k, rs in groups.items()
        if len(rs) > 1 and k in ratio and (*k, 1, 0) in speed
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quality", type=Path, default=ROOT / "benchmarks/results/cache_quality.json")
    p.add_argument("--speed", type=Path, default=ROOT / "benchmarks/results/cache_speed.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs/cache_pareto.png")
    int8_help = "int8_pareto.py's scores and int8/fp32 time ratios (no such file: no int8 points)"
    p.add_argument("--int8", type=Path, default=ROOT / "benchmarks/results/int8_pareto.json", help=int8_help)
    p.add_argument(
        "--time-from",
        choices=("auto", "grid", "graphs", "quality"),
        default="auto",
        help="grid: cache_speed.py's end-to-end ORT grid; graphs: composed from its tiny-digits graph medians;"
        " quality: the quality run's own torch sampling time; auto (default): the first of these there is",
    )
    args = p.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        print("error: pareto.py needs matplotlib: pip install 'dit_export[plot]'", file=sys.stderr)
        return 2
    quality = quality_points(args.quality)
    speed, where = speed_points(args.speed, quality, args.time_from)
    if not speed:
        where = "PyTorch fp32 reference loop, the quality run's own sampling time (CPU, shared machine)"
        speed = {k: v["torch_s"] for k, v in quality.items()}
    int8 = int8_points(args.int8, speed)
    order = ["ddpm", "ddim", "dpm++2m", "dpm++2m-sde"]  # cache_quality.SAMPLERS' order, others after
    samplers = sorted(
        {(k[0], k[1]) for k in quality if k[2] > 1},
        key=lambda s: (order.index(s[0]) if s[0] in order else len(order), s),
    )
    missing = [k for k in quality if k not in speed]
    if missing:
        print(f"no timing for {len(missing)} settings (left out): {missing[:4]} …", file=sys.stderr)
    cols = 2
    rows = (len(samplers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 4.6 * rows), squeeze=False)
    for ax, (sampler, steps) in zip(axes.flat, samplers):
        plain = sorted(
            (speed[k], q, k[1]) for k, q in quality.items() if k[0] == sampler and k[2] == 1 and k in speed
        )
        if plain:
            xs = [x for x, _, _ in plain]
            ys = [q["fd"] for _, q, _ in plain]
            err = [[q["fd"] - q["fd_lo"] for _, q, _ in plain], [q["fd_hi"] - q["fd"] for _, q, _ in plain]]
            ax.errorbar(xs, ys, yerr=err, color="black", marker="x", lw=1.2, capsize=2, label="uncached")
            for x, q, n in plain:
                ax.annotate(f"{n}", (x, q["fd"]), textcoords="offset points", xytext=(3, -10), fontsize=7)
        cached = [
            ((s, k, n, o), q)
            for (s, k, n, o), q in sorted(quality.items())
            if s == sampler and k == steps and n > 1 and (s, k, n, o) in speed
        ]
        q8 = sorted((k[1], q) for k, q in int8.items() if k[0] == sampler)
        if q8:
            ax.errorbar(
                [q["x"] for _, q in q8],
                [q["fd"] for _, q in q8],
                yerr=[[q["fd"] - q["fd_lo"] for _, q in q8], [q["fd_hi"] - q["fd"] for _, q in q8]],
                **INT8_STYLE,
            )
        # off-scale points (a forecast that diverged) are drawn at the top edge with their FD written
        fds = (
            [q["fd_hi"] for _, q, _ in plain] + [q["fd_hi"] for _, q in cached] + [q["fd_hi"] for _, q in q8]
        )
        top = min(max(fds), (max(q["fd_hi"] for _, q, _ in plain) if plain else max(fds)) + OFF_SCALE)
        offs: list[str] = []
        for (s, k, n, o), q in cached:
            x, off = speed[s, k, n, o], q["fd"] > top
            y = top if off else q["fd"]
            ax.errorbar(
                [x],
                [y],
                yerr=None if off else [[q["fd"] - q["fd_lo"]], [q["fd_hi"] - q["fd"]]],
                marker=MARKERS.get(o, "*"),
                color=COLOURS.get(n, "gray"),
                capsize=2,
                ls="none",
                ms=6,
                mfc="none" if off else None,
            )
            if off:
                offs.append(f"N={n} O={o}: FD {q['fd']:.0f}, acc {q['acc']:.2f}")
        if fds:
            ax.set_ylim(top=top + 0.3)
        if offs:
            ax.text(
                0.99,
                0.97,
                "off scale (open markers at the top):\n" + "\n".join(offs),
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85},
            )
        ax.set_title(f"{sampler}, {steps} steps: cached vs uncached (labels: steps)", fontsize=10)
        ax.set_xlabel("seconds per finished image")
        ax.set_ylabel("FD (tiny-digits, mean of seeds; bar = seed range)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(samplers) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color="black", marker="x", label="uncached (steps)")]
    if int8:
        handles.append(plt.Line2D([], [], **{k: v for k, v in INT8_STYLE.items() if k != "capsize"}))
    handles += [
        plt.Line2D([], [], color=c, marker="o", ls="none", label=f"N = {n}") for n, c in COLOURS.items()
    ]
    handles += [
        plt.Line2D([], [], color="gray", marker=m, ls="none", label=f"O = {o}")
        for o, m in MARKERS.items()
        if o < 3
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    title = f"Forecast step cache on tiny-digits — time: {where}"
    if int8:
        title += "\nint8 (orange): its FD through ONNX Runtime; its time = the fp32 point's × int8/fp32 measured side by side (fit)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(quality)} settings, {len(int8)} int8 points; time: {where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
