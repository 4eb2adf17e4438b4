"""Sample quality of the forecast step cache (TaylorSeer / FORA) on the shipped tiny-digits model.

    python benchmarks/cache_quality.py [--per-class 20] [--seeds 0 1] [--costs F R]
        [--json benchmarks/results/cache_quality.json]
        [--out benchmarks/results/cache_quality.md] [--quick]
    python benchmarks/cache_quality.py --demo-check dpm++2m-sde:20:3:2 --per-class 50 --seeds 0 1 2 3
    python benchmarks/cache_quality.py --backend ort [--engines DIR] [--rows key]

For every sampler setting (ddpm-50, the demo's old setting; ddim-50; dpm++2m-20; dpm++2m-sde-20,
the current demo default) and every cache interval N ∈ {2, 3, 4, 5} × order O ∈ {0, 1, 2}, with
each seed: class accuracy and Fréchet distance (dit_export.verify.score, the scorer of
solver_quality.py), beside the uncached sampler at

- the same step count (what the cache costs in quality),
- equal calls: as many steps as the cached run has full-network calls (`CachePlan.num_full`),
- equal time: round(full calls × F + forecast calls × R) steps, F and R = a full / forecast step's
  time over a plain (uncached) step's (`--costs F R`; default: cache_speed.py's tiny-digits graph
  medians on ONNX Runtime when benchmarks/results/cache_speed.json has them, else the torch reference
  loop's at batch 10, 1.1 and 0.2, labelled as an estimate).

A cached setting "beats plain fewer steps at equal time" when its FD is lower than the plain
sampler's at the equal-time step count on every seed (paired: same noise) and its mean accuracy is
no more than 0.5 % lower. Default: the fp32 PyTorch reference loop (`sample_latents` with
`cache_interval`/`cache_order`: the same full/forecast step modules the exporter writes);
`--backend ort` samples an export through `Sampler.generate` instead (`--engines DIR`, or
tiny-digits exported fp32 with the cache graphs into `--work-dir`) and by default re-scores only the
table's key rows (`--rows key`: ddpm-50 uncached, N=4 O=0, N=3 O=2; ddim-50 and dpm++2m-20
uncached and N=3 O=2) beside the reference loop's (`--compare`), with a pixel comparison of a few
images (`--image-check`): results in cache_quality_ort.{md,json}.

Every scored row is kept in `--json` as it finishes, keyed by its setting; a rerun skips what is
there (so an interrupted run resumes, and new `--costs` only add the missing plain rows).

`--demo-check SAMPLER:STEPS:N:O` scores that cached setting (and the uncached one) at the images
and classifier of solver_quality.py against DDPM-250's band from its JSON (`--ref-json`): whether
the demo may use it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from solver_quality import _load_ref, band, load_subjects  # noqa: E402

from dit_export.fileio import write_json  # noqa: E402
from dit_export.sampling.cache import cache_plan  # noqa: E402
from dit_export.verify.score import (  # noqa: E402
    ScoreResult,
    ScoreSettings,
    runtime_sample_fn,
    score_sampler,
    torch_sample_fn,
)

SAMPLERS = (("ddpm", 50), ("ddim", 50), ("dpm++2m", 20), ("dpm++2m-sde", 20))
INTERVALS = (2, 3, 4, 5)
ORDERS = (0, 1, 2)
SEEDS = (0, 1)
# (full, forecast) step time over a plain step's without a cache_speed.json measurement: the torch
# reference loop's on tiny-digits at batch 10 (20 rows), an estimate
DEFAULT_COSTS = (1.1, 0.2)
SPEED_JSON = ROOT / "benchmarks/results/cache_speed.json"
ACC_SLACK = 0.005
# the rows re-scored through an export (--rows key): the uncached samplers, the recommended setting
# and the N=3, O=2
KEY_ROWS = (
    "ddpm:50:1:0",
    "ddpm:50:4:0",
    "ddpm:50:3:2",
    "ddim:50:1:0",
    "ddim:50:3:2",
    "dpm++2m:20:1:0",
    "dpm++2m:20:3:2",
)


@dataclass(frozen=True)
class Setting:
    sampler: str
    steps: int
    interval: int = 1
    order: int = 0  # 0 when interval is 1 (no cache: the order does not matter)
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.sampler}|{self.steps}|{self.interval}|{self.order}|{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.sampler}-{self.steps} " + (
            f"N={self.interval} O={self.order}" if self.interval > 1 else "uncached"
        )

    @property
    def plan(self):
        return cache_plan(self.steps, self.interval, self.order, self.order + 1)


def feasible(sampler: str, target: float) -> int:
    """The step count nearest `target` that the sampler can make (DDIM's integer stride cannot make
    every count: 47 is refused, 46 and 48 are not)."""
    from dit_export.errors import UserError
    from dit_export.sampling import samplers

    for k in sorted(range(max(1, int(target) - 3), int(target) + 5), key=lambda k: (abs(k - target), k)):
        try:
            samplers.get(sampler).schedule(k)
            return k
        except UserError:
            continue
    raise SystemExit(f"error: {sampler} makes no step count near {target:.1f}")


def equal_steps(sampler: str, steps: int, interval: int, costs: tuple[float, float]) -> tuple[int, int]:
    """(equal-calls, equal-time) uncached step counts of a cached run of `steps` at `interval` (the
    nearest counts the sampler can make)."""
    full = cache_plan(steps, interval, 0, 1).num_full
    return feasible(sampler, full), feasible(sampler, max(1.0, full * costs[0] + (steps - full) * costs[1]))


def step_costs(arg: list[float] | None, source: str | None = None) -> tuple[tuple[float, float], str]:
    """(F, R) and where they came from."""
    if arg is not None:
        return (arg[0], arg[1]), source or "--costs"
    try:
        data = json.loads(SPEED_JSON.read_text())
        g = data["models"]["tiny-digits"]["graphs"]
        where = f"tiny-digits graph medians on ONNX Runtime CPU, {g['repeat']} interleaved rounds (cache_speed.json)"
        return (float(g["F"]), float(g["R"])), where
    except (OSError, KeyError, ValueError, TypeError):
        return DEFAULT_COSTS, "estimate from the torch reference loop (no cache_speed.json measurement yet)"


class Store:
    """Scored rows by setting key, written after every row (resumable)."""

    def __init__(self, path: Path, per_class: int, cfg: float, where: str, heldout: float):
        self.path = path
        self.meta = {"per_class": per_class, "cfg": cfg, "where": where, "classifier_heldout": heldout}
        self.rows: dict[str, dict] = {}
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("meta") != self.meta:
                raise SystemExit(
                    f"error: {path} holds rows of other settings {data.get('meta')}; use another --json"
                )
            self.rows = data["rows"]

    def save(self, extra: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"meta": self.meta, **extra, "rows": self.rows})


def fields(args, s: Setting) -> dict:
    """The request fields of a setting: what its sampler function binds and its score records."""
    return ScoreSettings(
        steps=s.steps, sampler=s.sampler, seed=s.seed, cache_interval=s.interval, cache_order=s.order
    ).at(args.cfg)


def make_fn(args, model, decode, runner, s: Setting):
    """The PyTorch reference loop's sampler function, or the runtime's (`Sampler.generate`)."""
    if runner is None:
        return torch_sample_fn(model, decode, **fields(args, s))
    return runtime_sample_fn(runner, **fields(args, s))


def score(args, model, decode, runner, clf, s: Setting, store: Store | None, extra: dict) -> dict:
    if store is not None and s.key in store.rows:
        return store.rows[s.key]
    fn = make_fn(args, model, decode, runner, s)
    r: ScoreResult = score_sampler(
        fn, per_class=args.per_class, classifier=clf, backend=args.backend, **fields(args, s)
    )
    r.extra = {"cache_interval": s.interval, "cache_order": s.order, "num_full": s.plan.num_full}
    row = r.to_dict()
    print(
        f"{s.sampler:12s} {s.steps:3d} N={s.interval} O={s.order} seed {s.seed}: acc {r.accuracy:.4f} "
        f"FD {r.fd:.3f} ({r.sample_seconds:.1f} s)",
        flush=True,
    )
    if store is not None:
        store.rows[s.key] = row
        store.save(extra)
    return row


def settings(samplers, intervals, orders, seeds, cost) -> list[Setting]:
    """Every row the table needs, most informative first: N = 3 (the issue's target) on every sampler
    with its plain rows, then the other intervals (an interrupted run leaves whole columns)."""
    out: list[Setting] = []
    ivs = sorted(intervals, key=lambda n: (n != 3, n))
    ords = sorted(orders, key=lambda o: (o != 2, o))
    for n in ivs:
        for sampler, steps in samplers:
            plain = {steps, *equal_steps(sampler, steps, n, cost)}
            for seed in seeds:
                out += [Setting(sampler, k, seed=seed) for k in sorted(plain, reverse=True)]
                out += [Setting(sampler, steps, n, o, seed) for o in ords]
    seen: set[str] = set()
    return [s for s in out if not (s.key in seen or seen.add(s.key))]


def _beats(cached: list[dict], plain: list[dict]) -> bool:
    """FD lower on every seed (paired) and mean accuracy at most ACC_SLACK lower."""
    return (
        all(a["fd"] < b["fd"] for a, b in zip(cached, plain))
        and _mean(cached, "accuracy") >= _mean(plain, "accuracy") - ACC_SLACK
    )


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def report(args, store: Store, samplers, intervals, orders, seeds, cost, cost_src, load, minutes) -> str:
    rows = store.rows

    def get(sampler, steps, n=1, o=0) -> list[dict] | None:
        """The row of every seed, or None while any is not scored."""
        keys = [Setting(sampler, steps, n, o, sd).key for sd in seeds]
        return [rows[k] for k in keys] if all(k in rows for k in keys) else None

    where = f"{args.backend} {args.engines}" if args.engines else "the PyTorch fp32 reference loop (CPU)"
    cmd = " ".join(["python benchmarks/cache_quality.py", *sys.argv[1:]])
    r0 = next(iter(rows.values()))
    lines = [
        "# Forecast step cache: quality on tiny-digits",
        "",
        f"`{cmd}` — {where}; {10 * args.per_class} images per row (classes 0–9 × {args.per_class}), cfg {args.cfg:g},"
        f" Philox noise seeds {', '.join(map(str, seeds))} (the same noise for the cached and the plain rows of a seed);"
        f" scores from dit_export.verify.score (accuracy of the {r0['classifier_heldout_accuracy']:.3f}-held-out-accurate"
        f" digit classifier; FD of its features to all real digits; FD of a real subset of the same size:"
        f" {r0['fd_real']:.3f}). Machine: {_machine()}; load average (1 min) at start / end: {load[0]:.1f} /"
        f" {load[1]:.1f}. This invocation: {minutes:.1f} min (rows already in the JSON are reused).",
        "",
        f"Equal calls = uncached at the cached run's number of full-network calls; equal time = round(full calls ×"
        f" F + forecast calls × R) uncached steps, F = {cost[0]:.3f}, R = {cost[1]:.3f} (a full / forecast step's time"
        f" over a plain step's; {cost_src}). **beats** = FD below the plain sampler's at equal time on"
        f" every seed and mean accuracy at most {100 * ACC_SLACK:.1f} % lower. FD mean over the seeds; Δ = cached −"
        " plain, mean over the seeds (paired by seed).",
        "",
    ]
    verdicts = []

    def best_plain(sampler, limit) -> tuple[int, list[dict]]:
        """The scored uncached step count ≤ limit with the lowest mean FD (a Pareto comparison: on
        tiny-digits the ODE samplers' FD falls with fewer steps, so equal time is not the best plain)."""
        cands = [
            (k, get(sampler, k))
            for k in sorted({r["steps"] for r in rows.values() if r["sampler"] == sampler})
        ]
        cands = [(k, rs) for k, rs in cands if k <= limit and rs is not None]
        return min(cands, key=lambda kr: _mean(kr[1], "fd"))

    missing = 0
    for sampler, steps in samplers:
        base = get(sampler, steps)
        if base is None:
            lines += [f"## {sampler}, {steps} steps: not scored yet", ""]
            continue
        lines += [
            f"## {sampler}, {steps} steps (uncached: accuracy {_mean(base, 'accuracy'):.4f}, FD "
            + " / ".join(f"{r['fd']:.3f}" for r in base)
            + f", mean {_mean(base, 'fd'):.3f})",
            "",
            "| N | O | full calls | accuracy | FD per seed | FD mean | Δ FD vs uncached | equal calls: steps, FD | Δ FD | "
            "equal time: steps, FD | Δ FD | beats equal time | best plain ≤ equal time: steps, FD | Δ FD | beats it |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|:---:|",
        ]
        for n in intervals:
            calls, eq_t = equal_steps(sampler, steps, n, cost)
            pc, pt = get(sampler, calls), get(sampler, eq_t)
            for o in orders:
                c = get(sampler, steps, n, o)
                if c is None or pc is None or pt is None:
                    missing += 1
                    continue
                fd = _mean(c, "fd")
                d_base = fd - _mean(base, "fd")
                d_calls = fd - _mean(pc, "fd")
                d_time = fd - _mean(pt, "fd")
                beats = _beats(c, pt)
                k_best, pb = best_plain(sampler, eq_t)
                beats_best = _beats(c, pb)
                d_best = fd - _mean(pb, "fd")
                verdicts.append(
                    (sampler, steps, n, o, beats, d_time, fd, _mean(c, "accuracy"), beats_best, d_best)
                )
                lines.append(
                    f"| {n} | {o} | {c[0]['extra']['num_full']} | {_mean(c, 'accuracy'):.4f} | "
                    + " / ".join(f"{r['fd']:.3f}" for r in c)
                    + f" | {fd:.3f} | {d_base:+.3f} | {calls}: {_mean(pc, 'fd'):.3f} | {d_calls:+.3f} | "
                    f"{eq_t}: {_mean(pt, 'fd'):.3f} (acc {_mean(pt, 'accuracy'):.4f}) | {d_time:+.3f} |"
                    f" {'**yes**' if beats else 'no'} | {k_best}: {_mean(pb, 'fd'):.3f} | {d_best:+.3f} |"
                    f" {'**yes**' if beats_best else 'no'} |"
                )
        lines.append("")
    wins = [v for v in verdicts if v[4]]
    strict = [v for v in verdicts if v[8]]
    lines += ["## Verdict (generated)", ""]
    if missing:
        lines += [f"{missing} cached settings are not scored yet (left out above).", ""]
    if wins:
        lines.append(
            f"{len(wins)} of {len(verdicts)} cached settings beat plain fewer steps at equal time on every seed: "
            + "; ".join(
                f"{v[0]}-{v[1]} N={v[2]} O={v[3]} (Δ FD {v[5]:+.3f}, FD {v[6]:.3f}, acc {v[7]:.4f})"
                for v in wins
            )
            + "."
        )
    if strict:
        lines += [
            "",
            f"Against the best uncached run that is no slower (any scored step count ≤ equal time), {len(strict)}"
            " still win on every seed: "
            + "; ".join(
                f"{v[0]}-{v[1]} N={v[2]} O={v[3]} (Δ FD {v[9]:+.3f}, FD {v[6]:.3f}, acc {v[7]:.4f})"
                for v in strict
            )
            + ".",
        ]
    elif verdicts:
        lines += [
            "",
            "Against the best uncached run that is no slower (any scored step count ≤ equal time), none wins.",
        ]
    if not wins and verdicts:
        best = min(verdicts, key=lambda v: v[5])
        lines.append(
            f"None of the {len(verdicts)} cached settings beats plain fewer steps at equal time on every seed; the"
            f" closest is {best[0]}-{best[1]} N={best[2]} O={best[3]} (Δ FD {best[5]:+.3f} against plain at equal time)."
        )
    lines.append("")
    return "\n".join(lines)


def export_folder(work_dir: Path, name: str, export_args: list[str], batch: int, check: bool) -> Path:
    """An fp32 export with the cache graphs up to order 2 in `work_dir`, written when missing
    (reused by later runs: delete it after a change to the exporter)."""
    out = work_dir / f"{name.replace('/', '')}-b{batch}-fp32-cache2"
    if (out / "manifest.json").is_file():
        return out
    cmd = [sys.executable, "-m", "dit_export", "export", *export_args, "--batch", str(batch)]
    cmd += ["--precision", "fp32", "--max-cache-order", "2", "--out", str(out), "--force"]
    if not check:
        cmd.append("--no-check")  # a throw-away timing folder (bench does the same)
    print("$", " ".join(cmd[1:]), flush=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def image_check(args, runner, s: Setting, per_class: int, reference) -> dict:
    """The first `per_class` images of every class of `s` from the runtime and from the PyTorch
    reference loop (same noise): how far apart they are in uint8 pixels."""
    from dit_export.verify.score import score_labels

    labels = score_labels(10, per_class)
    a = runtime_sample_fn(runner, **fields(args, s))(labels).astype(np.int16)
    b = torch_sample_fn(*reference, **fields(args, s))(labels).astype(np.int16)
    d = np.abs(a - b)
    return {
        "images": len(labels),
        "max_abs_uint8": int(d.max()),
        "mean_abs_uint8": float(d.mean()),
        "values": int(d.size),
        "values_differing": int((d > 0).sum()),
    }


def rescore(args, model, decode, runner, clf, store: Store, keys: list[str]) -> int:
    """Score `keys` (SAMPLER:STEPS:N:O) with every seed on this backend and set them beside the
    same rows of `--compare` (the reference loop's table): how closely the two agree."""
    from dit_export.verify.score import load_embedded_reference

    ref = json.loads(args.compare.read_text())
    if ref["meta"]["per_class"] != args.per_class or ref["meta"]["cfg"] != args.cfg:
        raise SystemExit(f"error: {args.compare} has other settings {ref['meta']}")
    sets = []
    for k in keys:
        sampler, steps, n, o = k.split(":")
        sets.append(
            [Setting(sampler, int(steps), int(n), int(o) if int(n) > 1 else 0, sd) for sd in args.seeds]
        )
    load0, t0 = os.getloadavg(), time.perf_counter()
    old = json.loads(args.json.read_text()) if args.json.is_file() else {}
    where = args.compare.resolve()
    extra = {
        "compare": str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where),
        "scored": old.get("scored"),
    }
    todo = [s for group in sets for s in group if s.key not in store.rows]
    for s in todo:
        score(args, model, decode, runner, clf, s, store, extra)
    if todo or extra["scored"] is None:
        extra["scored"] = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "minutes": (time.perf_counter() - t0) / 60,
            "load": [load0[0], os.getloadavg()[0]],
        }
    scored = extra["scored"]
    pixels = {}
    if args.image_check > 0 and runner is not None:
        reference = load_embedded_reference("tiny-digits")
        for group in sets:
            pixels[group[0].key] = image_check(args, runner, group[0], args.image_check, reference)
            print(f"{group[0].key}: {pixels[group[0].key]}", flush=True)
    store.save({**extra, "image_check": pixels})
    load1, minutes = os.getloadavg(), (time.perf_counter() - t0) / 60
    cmd = " ".join(["python benchmarks/cache_quality.py", *sys.argv[1:]])
    be = args.backend
    lines = [
        f"# Forecast step cache on tiny-digits: key rows re-scored on {args.backend}",
        "",
        f"`{cmd}` — {args.backend} on {args.engines} (`Sampler.generate` with the cache fields), beside the same"
        f" rows of {args.compare.name} ({ref['meta']['where']}: the PyTorch fp32 reference loop). Same scorer,"
        f" classifier, images ({10 * args.per_class} per row), cfg {args.cfg:g} and Philox noise seeds"
        f" {', '.join(map(str, args.seeds))}. Machine: {_machine()}; load average (1/5/15 min) at start"
        f" {'/'.join(f'{x:.1f}' for x in load0)}, at end {'/'.join(f'{x:.1f}' for x in load1)}; this invocation"
        f" {minutes:.1f} min (rows already in its JSON are reused; rows scored {scored['when']}: {scored['minutes']:.1f}"
        f" min, load average at start / end {scored['load'][0]:.1f} / {scored['load'][1]:.1f}).",
        "",
        f"| setting | seed | accuracy: ref → {be} | FD: ref | FD: {be} | Δ FD | Δ(FD vs uncached): ref |"
        f" Δ(FD vs uncached): {be} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    deltas, rel, verdict_d = [], [], []
    for group in sets:
        for s in group:
            a, b = ref["rows"].get(s.key), store.rows[s.key]
            base = Setting(s.sampler, s.steps, seed=s.seed).key
            name = s.name
            if a is None:
                lines.append(
                    f"| {name} | {s.seed} | – → {b['accuracy']:.4f} | – | {b['fd']:.3f} | – | – | – |"
                )
                continue
            d = b["fd"] - a["fd"]
            deltas.append(abs(d))
            rel.append(abs(d) / a["fd"])
            dv = "–", "–"
            if s.interval > 1 and base in ref["rows"] and base in store.rows:
                da, db = a["fd"] - ref["rows"][base]["fd"], b["fd"] - store.rows[base]["fd"]
                verdict_d.append(abs(db - da))
                dv = f"{da:+.4f}", f"{db:+.4f}"
            lines.append(
                f"| {name} | {s.seed} | {a['accuracy']:.4f} → {b['accuracy']:.4f} | {a['fd']:.3f} | {b['fd']:.3f} |"
                f" {d:+.4f} | {dv[0]} | {dv[1]} |"
            )
    lines.append("")
    if deltas:
        lines.append(
            f"Agreement over {len(deltas)} rows: |Δ FD| max {max(deltas):.4f} (mean {np.mean(deltas):.4f}; at most"
            f" {100 * max(rel):.4f} % of the row's FD)"
            + (
                f"; the cache's effect (cached − uncached FD, per seed) moves by at most {max(verdict_d):.4f}"
                if verdict_d
                else ""
            )
            + "."
        )
    if pixels:
        lines += [
            "",
            f"Pixels ({args.image_check} image(s) per class, seed 0, {args.backend} vs the reference loop, uint8):",
            "",
            "| setting | images | max abs | mean abs | uint8 values differing |",
            "|---|---:|---:|---:|---:|",
        ]
        for group in sets:
            v = pixels[group[0].key]
            lines.append(
                f"| {group[0].name} | {v['images']} | {v['max_abs_uint8']} | {v['mean_abs_uint8']:.4f} |"
                f" {v['values_differing']} of {v['values']} |"
            )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def _machine() -> str:
    from dit_export.bench.machine import cpu_name, usable_cpus

    return f"{cpu_name()}, {usable_cpus()} CPUs"


def demo_check(args, model, decode, runner, clf) -> int:
    """Score SAMPLER:STEPS:N:O (and its uncached twin) with solver_quality.py's images and band."""
    sampler, steps, n, o = args.demo_check.split(":")
    steps, n, o = int(steps), int(n), int(o)
    ref = _load_ref(args.ref_json, clf, args.per_class, args.cfg)
    fd_limit, acc_limit = band(ref)
    load0 = os.getloadavg()[0]
    store = Store(args.json, args.per_class, args.cfg, args.backend, clf.heldout_accuracy)
    extra = {"demo_check": args.demo_check}
    res = {
        (nn, oo): [
            score(args, model, decode, runner, clf, Setting(sampler, steps, nn, oo, sd), store, extra)
            for sd in args.seeds
        ]
        for nn, oo in ((1, 0), (n, o))
    }
    load1 = os.getloadavg()[0]
    cmd = " ".join(["python benchmarks/cache_quality.py", *sys.argv[1:]])
    lines = [
        "",
        f"## Demo check: {sampler}-{steps} with N={n}, O={o} against DDPM-250's band",
        "",
        f"`{cmd}` — {10 * args.per_class} images per row and the classifier of solver_quality.py; DDPM-250's band from"
        f" {args.ref_json.name}: FD ≤ {fd_limit:.3f}, accuracy ≥ {acc_limit:.4f} (the mean over the seeds). Load"
        f" average at start / end: {load0:.1f} / {load1:.1f}.",
        "",
        "| setting | "
        + " | ".join(f"seed {sd} acc, FD" for sd in args.seeds)
        + " | mean acc | mean FD | in band |",
        "|---|" + "---:|" * len(args.seeds) + "---:|---:|:---:|",
    ]
    for (nn, oo), rs in res.items():
        acc, fd = _mean(rs, "accuracy"), _mean(rs, "fd")
        ok = fd <= fd_limit and acc >= acc_limit
        name = f"{sampler}-{steps}" + (f" N={nn} O={oo}" if nn > 1 else " uncached")
        cells = " | ".join(f"{r['accuracy']:.4f}, {r['fd']:.3f}" for r in rs)
        lines.append(f"| {name} | {cells} | {acc:.4f} | {fd:.3f} | {'yes' if ok else 'no'} |")
    text = "\n".join(lines) + "\n"
    with args.out.open("a") as f:
        f.write(text)
    print(text)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--per-class", type=int, default=20, help="images per class and row (default 20: 200 per row)"
    )
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--intervals", type=int, nargs="+", default=list(INTERVALS))
    p.add_argument("--orders", type=int, nargs="+", default=list(ORDERS))
    p.add_argument(
        "--samplers",
        default=",".join(f"{s}:{n}" for s, n in SAMPLERS),
        help="SAMPLER:STEPS,… (default: ddpm:50,ddim:50,dpm++2m:20,dpm++2m-sde:20)",
    )
    p.add_argument(
        "--costs",
        type=float,
        nargs=2,
        default=None,
        metavar=("F", "R"),
        help="a full and a forecast step's time over a plain step's (the equal-time rows)",
    )
    p.add_argument("--costs-source", default=None, help="where --costs come from (printed in the report)")
    p.add_argument(
        "--engines", type=Path, default=None, help="an export of tiny-digits (default: torch reference)"
    )
    p.add_argument(
        "--backend",
        default="torch",
        help="torch (the reference loop) | ort | trt | cpp: sample an export (--engines, else tiny-digits fp32"
        " exported into --work-dir) through Sampler.generate",
    )
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/cache_quality.json")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cache_quality.md")
    p.add_argument("--quick", action="store_true", help="5 images per class, dpm++2m-20 only, N 3, O 0 and 2")
    p.add_argument("--report-only", action="store_true", help="write the report from --json, score nothing")
    p.add_argument("--demo-check", default=None, metavar="SAMPLER:STEPS:N:O")
    p.add_argument("--ref-json", type=Path, default=ROOT / "benchmarks/results/solver_quality.json")
    p.add_argument(
        "--rows",
        default=None,
        help="all (the table; default with --backend torch) | key (default otherwise: the table's key rows, "
        "re-scored and set beside --compare's) | SAMPLER:STEPS:N:O,… (N 1: uncached)",
    )
    p.add_argument(
        "--compare",
        type=Path,
        default=ROOT / "benchmarks/results/cache_quality.json",
        help="the rows to set re-scored rows beside (default: the reference loop's table)",
    )
    p.add_argument(
        "--image-check",
        type=int,
        default=1,
        metavar="K",
        help="re-scoring: also compare K images per class (seed 0) with the reference loop's, pixel by pixel",
    )
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/cache_quality_engines"))
    p.add_argument(
        "--export-batch",
        type=int,
        default=50,
        help="--backend without --engines: export tiny-digits at this batch",
    )
    args = p.parse_args(argv)
    samplers = [(s.split(":")[0], int(s.split(":")[1])) for s in args.samplers.split(",") if s]
    if args.quick:
        args.per_class, samplers, args.intervals, args.orders = 5, [("dpm++2m", 20)], [3], [0, 2]
        if args.json == p.get_default("json"):
            args.json = Path("/tmp/cache_quality_quick.json")
        if args.out == p.get_default("out"):
            args.out = Path("/tmp/cache_quality_quick.md")
    if args.backend != "torch" and args.engines is None:
        args.engines = export_folder(
            args.work_dir, "tiny-digits", ["--model", "tiny-digits"], args.export_batch, check=True
        )
    if args.backend != "torch" and not args.demo_check:
        for name in ("json", "out"):  # a backend's rows never mix with the reference loop's
            if getattr(args, name) == p.get_default(name):
                path = getattr(args, name)
                setattr(args, name, path.with_name(f"{path.stem}_{args.backend}{path.suffix}"))
    model, decode, runner, clf = load_subjects(args.engines, args.backend)
    if args.demo_check:
        if args.json == p.get_default("json"):
            args.json = ROOT / "benchmarks/results/cache_quality_demo.json"
        return demo_check(args, model, decode, runner, clf)
    cost, cost_src = step_costs(args.costs, args.costs_source)
    where = args.backend if args.engines is None else f"{args.backend}:{args.engines}"
    store = Store(args.json, args.per_class, args.cfg, where, clf.heldout_accuracy)
    rows = args.rows or ("all" if args.backend == "torch" else "key")
    if rows != "all":
        return rescore(
            args, model, decode, runner, clf, store, KEY_ROWS if rows == "key" else rows.split(",")
        )
    todo = settings(samplers, args.intervals, args.orders, args.seeds, cost)
    missing = [s for s in todo if s.key not in store.rows]
    print(f"{len(todo)} rows, {len(missing)} to score (F, R = {cost}: {cost_src})", flush=True)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    extra = {"step_costs": cost, "step_costs_source": cost_src}
    for s in [] if args.report_only else todo:
        score(args, model, decode, runner, clf, s, store, extra)
    load1 = os.getloadavg()[0]
    text = report(
        args,
        store,
        samplers,
        args.intervals,
        args.orders,
        args.seeds,
        cost,
        cost_src,
        (load0, load1),
        (time.perf_counter() - t0) / 60,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    store.save(extra)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
