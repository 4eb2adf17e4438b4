"""Sample-set throughput: one process vs two processes on this machine, and the XL/2 FID-50K projection.

Not a test. Generates the same set (default: 64 tiny-digits images, DDIM 25 steps, cfg 4) once as
one shard and once as two shards running at the same time (separate processes, one thread each),
checks that both merge to the same samples.npz bytes, and reports images/s of each run and their
ratio. Then projects the wall time of an FID-50K set of DiT-XL/2 at 256 px (250 DDPM steps, cfg > 1)
for 1…64 processes from a per-image cost: measured when you pass `--xl-seconds-per-image` (e.g.
from `python -m dit_export bench` on your GPU), otherwise stated from the model's FLOPs and an
assumed achieved throughput (`--assumed-tflops`, labelled as an assumption in the output).

    python benchmarks/sample_set.py [--engines DIR] [--num-images 64] [--steps 25] [--repeat 2]

Writes benchmarks/results/sample_set_<date>.{json,md} with the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.bench.machine import cpu_name  # noqa: E402
from dit_export.fileio import atomic_path, write_json  # noqa: E402

FID_IMAGES = 50_000
XL2 = {"depth": 28, "hidden": 1152, "patch": 2, "latent": 32}  # DiT-XL/2 at 256 px


def xl2_forward_flops(rows: int = 1) -> float:
    """FLOPs (2 per multiply-add) of one DiT-XL/2 forward per row: 237 GFLOP (the paper's 118.6 "Gflops" are MACs)."""
    d, t = XL2["hidden"], (XL2["latent"] // XL2["patch"]) ** 2
    per_block = 12 * t * d * d + 2 * t * t * d + 6 * d * d  # qkv+proj (4td²), MLP (8td²), QKᵀ and AV, adaLN
    return 2.0 * rows * XL2["depth"] * per_block


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        e.pop(k, None)
    return e


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dit_export", *args]


def ensure_engines(path: Path | None, work: Path) -> Path:
    if path is not None:
        return path
    out = work / "tiny-digits-fp32-b4"
    cmd = cli(
        "export",
        "--model",
        "tiny-digits",
        "--batch",
        "4",
        "--precision",
        "fp32",
        "--no-check",
        "--out",
        str(out),
    )
    subprocess.run(cmd, check=True, env=env(), capture_output=True)
    return out


def run_set(engines: Path, out: Path, shards: int, a: argparse.Namespace) -> dict:
    """Run `shards` processes at once; wall time from the first start to the last exit."""
    flags = [
        "--engines", str(engines), "--num-images", str(a.num_images), "--steps", str(a.steps),
        "--sampler", a.sampler, "--cfg-scale", str(a.cfg_scale), "--chunk", str(a.chunk), "--out", str(out),
        "--threads", "1", "--no-progress",
    ]  # fmt: skip
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cli("sample-set", *flags, "--shard", f"{i}/{shards}"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env())
        for i in range(shards)
    ]  # fmt: skip
    rates, gen_cpu = [], 0.0
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise SystemExit(f"sample-set failed: {stderr.strip().splitlines()[-1:]}")
        m = re.search(r"at ([0-9.]+) images/s, ([0-9.]+) CPU s/image", stdout)
        rates.append(float(m.group(1)) if m else 0.0)  # a shard without chunks generates nothing
        n = re.search(r"\(([0-9]+) generated now", stdout)
        gen_cpu += float(m.group(2)) * int(n.group(1)) if m and n else 0.0
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    subprocess.run(cli("sample-set", "--out", str(out), "--merge", "--no-progress"), check=True, env=env(),
                   capture_output=True)  # fmt: skip
    return {
        "processes": shards,
        "wall_s": wall,
        "images_per_s_wall": a.num_images / wall,  # end to end, process start-up included
        "images_per_s_generation": sum(rates),  # summed over processes, generation loop only
        "per_process_generation": rates,
        "cpu_s_per_image": cpu / a.num_images,  # user + sys of the shard processes, start-up included
        "generation_cpu_s_per_image": gen_cpu / a.num_images,  # CPU while generating only
        "npz": (out / "samples.npz").read_bytes(),
    }


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cpus": psutil.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def projection(a: argparse.Namespace, ratio: float) -> tuple[list[dict], str]:
    per_image_flops = a.xl_steps * xl2_forward_flops(2)  # guided: 2 rows per image per step
    if a.xl_seconds_per_image:
        cost, basis = a.xl_seconds_per_image, f"measured by you: {a.xl_seconds_per_image} s per image"
    else:
        cost = per_image_flops / (a.assumed_tflops * 1e12)
        basis = (
            f"stated, not measured: {per_image_flops / 1e12:.1f} TFLOP per image "
            f"({a.xl_steps} steps × 2 rows × {xl2_forward_flops() / 1e9:.1f} GFLOP) at an assumed "
            f"{a.assumed_tflops:g} TFLOP/s achieved per GPU"
        )
    rows = []
    for p in (1, 8, 16, 64):
        seconds = FID_IMAGES * cost / p  # one device per shard: shards share nothing but the file system
        rows.append({"processes": p, "hours": seconds / 3600})
    return (
        rows,
        basis
        + f"; VAE decode not counted; one GPU per process (measured 2-process ratio here: {ratio:.2f}×)",
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--engines", type=Path, default=None, help="an engines folder (default: export tiny-digits)"
    )
    ap.add_argument("--num-images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument(
        "--chunk", type=int, default=8, help="images per chunk file (a multiple of the engine batch)"
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs of each configuration (median reported)")
    ap.add_argument("--xl-steps", type=int, default=250)
    ap.add_argument("--xl-seconds-per-image", type=float, default=None, help="measured XL/2 cost per image")
    ap.add_argument(
        "--assumed-tflops", type=float, default=400.0, help="achieved fp16 TFLOP/s per GPU if not measured"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return ap.parse_args()


def measure(a: argparse.Namespace) -> dict:
    """Run the set `a.repeat` times as one and as two processes; the result record (JSON-ready)."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sample_set_bench_") as tmp:
        work = Path(tmp)
        engines = ensure_engines(a.engines, work)
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for r in range(a.repeat):
            for shards in (1, 2):
                runs[shards].append(run_set(engines, work / f"set{shards}-{r}", shards, a))
        identical = len({x["npz"] for rs in runs.values() for x in rs}) == 1
    load_after = os.getloadavg()
    keys = (
        "wall_s",
        "images_per_s_wall",
        "images_per_s_generation",
        "generation_cpu_s_per_image",
        "cpu_s_per_image",
    )
    median = {str(k): {key: statistics.median(x[key] for x in v) for key in keys} for k, v in runs.items()}
    ratio_wall = median["2"]["images_per_s_wall"] / median["1"]["images_per_s_wall"]
    ratio_gen = median["2"]["images_per_s_generation"] / median["1"]["images_per_s_generation"]
    proj, basis = projection(a, ratio_gen)
    return {
        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "set": {k: getattr(a, k) for k in ("num_images", "steps", "sampler", "cfg_scale", "chunk", "repeat")},
        "engines": str(a.engines or "tiny-digits fp32 batch 4 (exported for the run)"),
        "runs": {
            str(k): [{kk: vv for kk, vv in x.items() if kk != "npz"} for x in v] for k, v in runs.items()
        },
        "median": median,
        "ratio_two_vs_one_wall": ratio_wall,
        "ratio_two_vs_one_generation": ratio_gen,
        "bit_identical": identical,
        "projection_basis": basis,
        "projection_fid50k_xl2": proj,
    }


def to_markdown(result: dict, a: argparse.Namespace) -> str:
    m, day = result["machine"], result["measured"][:10]
    load_before, load_after = result["load_average_before"], result["load_average_after"]
    lines = [
        f"# sample-set throughput: {m['cpu']}, {m['cpus']} CPUs ({day})",
        "",
        f"- measured {result['measured']} on **{m['cpu']}, {m['cpus']} CPUs** ({m['platform']}, Python {m['python']});"
        f" 1/5/15-min load average {', '.join(f'{x:.1f}' for x in load_before)} before and "
        f"{', '.join(f'{x:.1f}' for x in load_after)} after",
        "- **taken under load**: other jobs shared these CPUs during the run, so absolute rates are lower"
        " bounds and the ratio understates what two idle cores give; rerun on an idle machine to compare",
        f"- set: {a.num_images} images of {result['engines']}, {a.sampler} {a.steps} steps, cfg {a.cfg_scale};"
        f" chunks of {a.chunk}; ONNX Runtime CPU with one thread per process (`--threads 1`, OMP_NUM_THREADS=1);"
        f" median of {a.repeat} run(s)",
        f"- one-process and two-process sets merged to identical samples.npz bytes: **{result['bit_identical']}**",
        f"- command: `OMP_NUM_THREADS=1 python benchmarks/sample_set.py --num-images {a.num_images} --steps "
        f"{a.steps} --sampler {a.sampler} --chunk {a.chunk} --repeat {a.repeat}`",
        "",
        "| processes | wall s (start-up incl.) | images/s end to end | images/s generating (sum) "
        "| CPU s / image generating | CPU s / image incl. start-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for shards, med in result["median"].items():
        lines.append(
            f"| {shards} | {med['wall_s']:.2f} | {med['images_per_s_wall']:.2f} "
            f"| {med['images_per_s_generation']:.2f} | {med['generation_cpu_s_per_image']:.4f} "
            f"| {med['cpu_s_per_image']:.3f} |"
        )
    lines += [
        "",
        f"Two processes vs one: **{result['ratio_two_vs_one_generation']:.2f}×** images/s while generating, "
        f"{result['ratio_two_vs_one_wall']:.2f}× end to end"
        " (end to end includes each process's start-up and model load, which weigh in on a small set;"
        " the merge is not timed). CPU s / image hardly depends on the load: equal values while generating"
        " mean a second process adds no work per image, so on free cores (or one GPU each) the rate scales"
        " with the process count.",
        "",
        "## Projected FID-50K wall time, DiT-XL/2 256 px",
        "",
        f"Basis: {result['projection_basis']}.",
        "",
        "| processes (GPUs) | hours | minutes |",
        "|---:|---:|---:|",
        *(
            f"| {r['processes']} | {r['hours']:.2f} | {60 * r['hours']:.0f} |"
            for r in result["projection_fid50k_xl2"]
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    a = parse_args()
    result = measure(a)
    stem = a.out / f"sample_set_{result['measured'][:10]}"
    write_json(stem.with_suffix(".json"), result)
    md = to_markdown(result, a)
    with atomic_path(stem.with_suffix(".md")) as t:
        t.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
