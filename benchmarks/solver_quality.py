"""Sample quality of the few-step samplers against DDPM-250 on the shipped tiny-digits model.

    python benchmarks/solver_quality.py [--per-class 50] [--cfg 4] [--engines DIR --backend ort]
        [--out benchmarks/results/solver_quality.md]
    python benchmarks/solver_quality.py --add dpm++2m-sde,dpm++2m-sde-karras,dpm++2m-karras \
        --json benchmarks/results/solver_quality_sde.json

Scores (dit_export.verify.score: class accuracy of a held-out-trained classifier and the Fréchet
distance of its features to the real digits) for dpm++2m, unipc and ddim at 5, 8, 10, 15, 20, 25
steps and for ddpm at 250 steps with two seeds: the spread of DDPM-250 between the seeds is the
score's noise. A sampler "matches DDPM-250" at the fewest steps from which on its FD stays within
that noise of DDPM-250's (FD ≤ mean + spread) and its accuracy within the accuracy spread
(at least 0.5 %). Then it times one finished sample (latents + decode) per sampler at its matched
step count. Default: the fp32 PyTorch reference loop (the same step module every runtime runs);
`--engines DIR --backend ort` scores an export through `Sampler.generate` instead.

`--add SAMPLERS` scores only those samplers, at 10, 15, 20, 25 steps with both seeds each (a
stochastic sampler's own seed noise shows), takes DDPM-250's two seeds from `--ref-json` (the
full run's JSON, same classifier and images), applies the same rule to the mean of the two seeds,
times the matched settings against DDPM-250 and DDPM-50 (the demo's setting) in the same run, and
appends a section to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from dit_export.verify.score import (
    ScoreResult,
    load_embedded_reference,
    runtime_sample_fn,
    score_sampler,
    torch_sample_fn,
    train_classifier,
)

SOLVERS = ("dpm++2m", "unipc", "ddim")
STEP_COUNTS = (5, 8, 10, 15, 20, 25)
DDPM_STEPS = 250
SEEDS = (0, 1)
# Context rows (--extra-only): DDPM with fewer steps; timings of the solvers at fixed step counts.
EXTRA = (("ddpm", 25), ("ddpm", 50))
TIMED = (("dpm++2m", 10), ("dpm++2m", 20), ("unipc", 10), ("ddim", 10))
ADD_STEPS = (10, 15, 20, 25)  # --add: the step counts of issue 23
DEMO = ("ddpm", 50)  # scripts/demo.sh's sampler before issue 23


def load_subjects(engines: Path | None, backend: str):
    """(model, decode, runner, classifier): tiny-digits' PyTorch reference (runner None), or
    `Sampler.load(engines)` (model and decode None); and the score's classifier (seed 0)."""
    model = decode = runner = None
    if engines is not None:
        from dit_export.runtime import Sampler

        runner = Sampler.load(engines, backend=backend)
    else:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        model, decode = load_embedded_reference("tiny-digits")
    return model, decode, runner, train_classifier(seed=0)


def _fields(args, sampler: str, steps: int, seed: int) -> dict:
    return {"cfg_scale": args.cfg, "steps": steps, "sampler": sampler, "seed": seed}


def _fn(args, model, decode, runner, sampler: str, steps: int, seed: int):
    fields = _fields(args, sampler, steps, seed)
    if runner is not None:
        return runtime_sample_fn(runner, **fields)
    return torch_sample_fn(model, decode, **fields)


def _score(args, model, decode, runner, clf, sampler: str, steps: int, seed: int) -> ScoreResult:
    fn = _fn(args, model, decode, runner, sampler, steps, seed)
    fields = _fields(args, sampler, steps, seed)
    r = score_sampler(fn, per_class=args.per_class, classifier=clf, backend=args.backend, **fields)
    print(
        f"{sampler:8s} {steps:4d} seed {seed}: acc {r.accuracy:.4f} FD {r.fd:.3f} ({r.sample_seconds:.1f} s)"
    )
    sys.stdout.flush()
    return r


def band(ref: list[ScoreResult]) -> tuple[float, float]:
    """DDPM-250's band: FD ≤ mean + seed spread, accuracy ≥ mean − max(spread, 0.5 %)."""
    fd = [r.fd for r in ref]
    acc = [r.accuracy for r in ref]
    fd_tol = max(fd) - min(fd)
    acc_tol = max(max(acc) - min(acc), 0.005)
    return float(np.mean(fd)) + fd_tol, float(np.mean(acc)) - acc_tol


def matched_steps(
    rows: dict, ref: list[ScoreResult], samplers=SOLVERS, step_counts=STEP_COUNTS
) -> tuple[dict[str, int | None], float, float]:
    """Fewest steps from which on a sampler stays within DDPM-250's seed spread (FD and accuracy).
    `rows[sampler, steps]` has `.fd` and `.accuracy` (one seed's result, or a mean over seeds)."""
    fd_limit, acc_limit = band(ref)
    out: dict[str, int | None] = {}
    for sampler in samplers:
        ok = [rows[sampler, s].fd <= fd_limit and rows[sampler, s].accuracy >= acc_limit for s in step_counts]
        out[sampler] = next((s for i, s in enumerate(step_counts) if all(ok[i:])), None)
    return out, fd_limit, acc_limit


def time_sample(args, model, decode, runner, sampler: str, steps: int, repeat: int = 3) -> float:
    """Median seconds to a finished batch of 10 images (one per class), latents + decode."""
    fn = _fn(args, model, decode, runner, sampler, steps, 0)
    labels = list(range(10))
    fn(labels)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(labels)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument(
        "--engines", type=Path, default=None, help="an export of tiny-digits (default: torch reference)"
    )
    p.add_argument("--backend", default="torch", help="torch (reference loop) | ort | trt with --engines")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/solver_quality.md"))
    p.add_argument("--json", type=Path, default=None, help="also write every result as JSON")
    p.add_argument(
        "--add",
        default=None,
        metavar="SAMPLERS",
        help="score only these samplers (comma-separated) at 10, 15, 20, 25 steps, both seeds; DDPM-250 "
        "from --ref-json; append a section to --out",
    )
    p.add_argument(
        "--ref-json",
        type=Path,
        default=Path("benchmarks/results/solver_quality.json"),
        help="--add: the JSON of the full run (its DDPM-250 rows set the band)",
    )
    p.add_argument(
        "--extra-only",
        action="store_true",
        help="score only the extra rows (EXTRA: ddpm at fewer steps; TIMED: solver timings) "
        "and append them to --out",
    )
    args = p.parse_args(argv)
    model, decode, runner, clf = load_subjects(args.engines, args.backend)
    t0 = time.perf_counter()
    if args.add:
        return add_samplers(args, model, decode, runner, clf, t0)
    if args.extra_only:
        extra = [_score(args, model, decode, runner, clf, s, n, 0) for s, n in EXTRA]
        lines = [
            "",
            "Context rows (seed 0): DDPM with fewer steps",
            "",
        ]
        lines += ["| sampler | steps | accuracy | FD |", "|---|---:|---:|---:|"]
        lines += [f"| {r.sampler} | {r.steps} | {r.accuracy:.4f} | {r.fd:.3f} |" for r in extra]
        base = time_sample(args, model, decode, runner, "ddpm", DDPM_STEPS, repeat=1)
        lines += [
            "",
            "| time to 10 finished images (latents + decode) | seconds | speed-up vs DDPM-250 |",
            "|---|---:|---:|",
        ]
        lines.append(f"| ddpm 250 | {base:.2f} | 1.0× |")
        for s, n in TIMED:
            sec = time_sample(args, model, decode, runner, s, n)
            lines.append(f"| {s} {n} | {sec:.2f} | {base / sec:.1f}× |")
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    ref = [_score(args, model, decode, runner, clf, "ddpm", DDPM_STEPS, s) for s in SEEDS]
    rows = {(s, n): _score(args, model, decode, runner, clf, s, n, 0) for s in SOLVERS for n in STEP_COUNTS}
    matched, fd_limit, acc_limit = matched_steps(rows, ref)
    timing = {"ddpm": time_sample(args, model, decode, runner, "ddpm", DDPM_STEPS, repeat=1)}
    for sampler, steps in matched.items():
        if steps is not None:
            timing[sampler] = time_sample(args, model, decode, runner, sampler, steps)
    text = report(args, ref, rows, matched, fd_limit, acc_limit, timing, time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    if args.json:
        data = {"ddpm250": [r.to_dict() for r in ref], "rows": [r.to_dict() for r in rows.values()]}
        args.json.write_text(json.dumps({**data, "matched": matched, "timing": timing}, indent=1))
    return 0


def _load_ref(path: Path, clf, per_class: int, cfg: float) -> list[ScoreResult]:
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: run the full benchmark with --json {path} first")
    ref = [ScoreResult(**d) for d in json.loads(path.read_text())["ddpm250"]]
    if abs(ref[0].classifier_heldout_accuracy - clf.heldout_accuracy) > 1e-12:
        raise SystemExit(f"error: {path} was scored with another classifier; re-run the full benchmark")
    if (ref[0].per_class, ref[0].cfg_scale) != (per_class, cfg):
        raise SystemExit(f"error: {path} has {ref[0].per_class} images per class at cfg {ref[0].cfg_scale:g}")
    return ref


class _Mean:
    """The mean over seeds of one (sampler, steps) row: what the matched rule compares."""

    def __init__(self, results: list[ScoreResult]):
        self.fd = float(np.mean([r.fd for r in results]))
        self.accuracy = float(np.mean([r.accuracy for r in results]))


def add_samplers(args, model, decode, runner, clf, t0: float) -> int:
    """`--add`: score new samplers with both seeds against the stored DDPM-250 band; append a section."""
    samplers = tuple(s.strip() for s in args.add.split(",") if s.strip())
    ref = _load_ref(args.ref_json, clf, args.per_class, args.cfg)
    load0 = os.getloadavg()[0]
    seeds = {
        (s, n): [_score(args, model, decode, runner, clf, s, n, seed) for seed in SEEDS]
        for s in samplers
        for n in ADD_STEPS
    }
    means = {k: _Mean(v) for k, v in seeds.items()}
    matched, fd_limit, acc_limit = matched_steps(means, ref, samplers, ADD_STEPS)
    timed = [("ddpm", DDPM_STEPS), DEMO] + [(s, n) for s, n in matched.items() if n is not None]
    timing = {
        (s, n): time_sample(args, model, decode, runner, s, n, repeat=1 if n >= 100 else 3) for s, n in timed
    }
    load1 = os.getloadavg()[0]
    where = f"{args.backend} {args.engines}" if args.engines else "the PyTorch fp32 reference loop (CPU)"
    lines = [
        "",
        f"## {', '.join(samplers)} at {', '.join(map(str, ADD_STEPS))} steps, two seeds each",
        "",
        f"`python benchmarks/solver_quality.py --add {','.join(samplers)}` — {where}, the classifier, cfg"
        f" {args.cfg:g} and {10 * args.per_class} images per row of the run above, **both seeds** ({', '.join(map(str, SEEDS))})"
        f" per row (Philox noise: the initial latent and, for the SDE, every step's noise); DDPM-250's band from"
        f" {args.ref_json.name} (the run above). Matched = the mean of the two seeds has FD ≤ {fd_limit:.3f} and"
        f" accuracy ≥ {acc_limit:.4f} at this and every larger step count. Load average (2 cores) at start / end:"
        f" {load0:.1f} / {load1:.1f}. Total {(time.perf_counter() - t0) / 60:.1f} min.",
        "",
        "| sampler | steps | acc seed 0 | acc seed 1 | FD seed 0 | FD seed 1 | FD mean |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (s, n), rs in seeds.items():
        m = means[s, n]
        mark = "**" if m.fd <= fd_limit and m.accuracy >= acc_limit else ""
        accs = " | ".join(f"{r.accuracy:.4f}" for r in rs)
        fds = " | ".join(f"{r.fd:.3f}" for r in rs)
        lines.append(f"| {s} | {n} | {accs} | {fds} | {mark}{m.fd:.3f}{mark} |")
    base, demo = timing["ddpm", DDPM_STEPS], timing[DEMO]
    lines += [
        "",
        "| sampler | matches DDPM-250 at | time to 10 finished images | vs DDPM-250 | vs DDPM-50 |",
        "|---|---:|---:|---:|---:|",
        f"| ddpm | 250 steps | {base:.2f} s | 1.0× | {demo / base:.2f}× |",
        f"| ddpm (demo before) | 50 steps (context) | {demo:.2f} s | {base / demo:.1f}× | 1.0× |",
    ]
    for s in samplers:
        n = matched[s]
        if n is None:
            lines.append(f"| {s} | not within {ADD_STEPS[-1]} steps | – | – | – |")
        else:
            sec = timing[s, n]
            lines.append(f"| {s} | {n} steps | {sec:.2f} s | {base / sec:.1f}× | {demo / sec:.1f}× |")
    with args.out.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.json:
        data = {
            "ddpm250": [r.to_dict() for r in ref],
            "rows": [r.to_dict() for rs in seeds.values() for r in rs],
            "matched": matched,
            "timing": {f"{s} {n}": v for (s, n), v in timing.items()},
            "load": [load0, load1],
        }
        args.json.write_text(json.dumps(data, indent=1))
    return 0


def report(args, ref, rows, matched, fd_limit, acc_limit, timing, seconds) -> str:
    where = f"{args.backend} {args.engines}" if args.engines else "PyTorch fp32 reference loop (CPU)"
    lines = [
        "# Few-step samplers vs DDPM-250 (tiny-digits)",
        "",
        f"`python benchmarks/solver_quality.py --per-class {args.per_class} --cfg {args.cfg:g}`"
        f" — {where}; {10 * args.per_class} images per row (classes 0–9 × {args.per_class}), cfg {args.cfg:g},"
        f" Philox noise seed 0; scores from dit_export.verify.score (accuracy of the held-out-trained digit"
        f" classifier, Fréchet distance of its {ref[0].classifier_heldout_accuracy:.3f}-accurate features to all real"
        f" digits; FD of a real subset of the same size: {ref[0].fd_real:.3f}). Total {seconds / 60:.1f} min.",
        "",
        "DDPM-250 (the noise of the score: two seeds)",
        "",
        "| seed | accuracy | FD |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {r.seed} | {r.accuracy:.4f} | {r.fd:.3f} |" for r in ref]
    lines += [
        "",
        f"Matched = FD ≤ {fd_limit:.3f} (DDPM-250 mean + seed spread) and accuracy ≥ {acc_limit:.4f}"
        " (mean − max(spread, 0.5 %)) at this and every larger step count.",
        "",
        "| steps | " + " | ".join(f"{s} acc | {s} FD" for s in SOLVERS) + " |",
        "|---:|" + "---:|---:|" * len(SOLVERS),
    ]
    for n in STEP_COUNTS:
        cells = []
        for s in SOLVERS:
            r = rows[s, n]
            mark = "**" if r.fd <= fd_limit and r.accuracy >= acc_limit else ""
            cells += [f"{r.accuracy:.4f}", f"{mark}{r.fd:.3f}{mark}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| sampler | matches DDPM-250 at | time to 10 finished images | speed-up vs DDPM-250 |",
        "|---|---:|---:|---:|",
    ]
    lines.append(f"| ddpm | 250 steps | {timing['ddpm']:.2f} s | 1.0× |")
    for s in SOLVERS:
        n = matched[s]
        if n is None:
            lines.append(f"| {s} | not within {STEP_COUNTS[-1]} steps | – | – |")
        else:
            lines.append(f"| {s} | {n} steps | {timing[s]:.2f} s | {timing['ddpm'] / timing[s]:.1f}× |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
