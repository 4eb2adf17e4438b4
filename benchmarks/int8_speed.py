"""int8 vs fp32 vs mixed fp16 on ONNX Runtime CPU: time per forward and per image, and quality.

Not a test. Three parts, each written to benchmarks/results/int8.{json,md} (merged):

    python benchmarks/int8_speed.py speed [--models tiny-digits S/2 B/2] [--rounds 7] [--threads 2]
    python benchmarks/int8_speed.py image [--models tiny-digits S/2 B/2] [--run ddim:50] [--repeat 3]
    python benchmarks/int8_speed.py quality [--per-class 20] [--seeds 0 1]

Every part exports what it needs into --work (reused when present): tiny-digits is the shipped
trained model with its VAE; S/2 and B/2 have random weights, 256 px, and the random-weight SD VAE
decoder; fp32, mixed fp16 and int8 each, without forecast-cache graphs.

image: seconds per finished image (all sampler steps + the VAE decode) through the runtime's
`Sampler.generate` on batch-1 folders, the precisions interleaved, rotated every repeat.

speed: at batch 1 (tiny-digits: 10), times
one `dit_step` call per precision through the runtime's own ONNX Runtime backend (the session
options the sampler uses, int8's disabled optimisers included), interleaved: every round runs
every precision once in turn and the median over rounds is reported, so machine load hits all
alike. Inputs are a real calibration-set step (t = 999 … 0 rows). Also records which integer
kernels ORT picked and the int8 share of GEMM FLOPs.

quality: tiny-digits class accuracy and FD (verify/score.py) for fp32, fp16 and int8 at cfg 4,
ddpm-50 and dpm++2m-20, each seed. `uptime` is recorded before and after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.export import analysis  # noqa: E402
from dit_export.export.calibrate import CalibSettings  # noqa: E402
from dit_export.export.exporter import ExportOptions, export  # noqa: E402
from dit_export.export.quantize import KERNEL_OPS, ort_kernels  # noqa: E402
from dit_export.fileio import write_bytes  # noqa: E402
from dit_export.models.spec import ModelSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PRECISIONS = ("fp32", "fp16", "int8")
HISTORY = "## Earlier runs"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def spec_of(model: str) -> ModelSpec:
    """tiny-digits: the shipped trained model and its VAE; S/2, B/2: random weights, 256 px, with the
    random-weight SD VAE decoder (so a finished image includes its real decode cost)."""
    if model == "tiny-digits":
        return ModelSpec(model="tiny-digits")
    return ModelSpec(model=model, random_weights=True, vae="random-sd", image_size=256)


def folder(work: Path, model: str, precision: str, batch: int) -> Path:
    """The export (made once, no forecast-cache graphs): int8 calibrates on ddpm-50 × 2 seeds
    (tiny-digits) or ddpm-10 × 1 seed (the random-weight models)."""
    tag = "" if model == "tiny-digits" else "-sdvae"
    out = work / f"{model.replace('/', '')}-{precision}-b{batch}{tag}"
    if (out / "manifest.json").is_file():
        return out
    calib = CalibSettings() if model == "tiny-digits" else CalibSettings(steps=10, seeds=(0,))
    opts = ExportOptions(spec_of(model), out, batch, precision, check=False, force=True, calibration=calib)
    t0 = time.perf_counter()
    export(replace(opts, max_cache_order=None), log=lambda s: None)
    print(f"exported {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def step_feeds(path: Path) -> dict[str, np.ndarray]:
    """One real step's inputs (the int8 folder's calibration set, middle of the first trajectory)."""
    with np.load(path / "calibration.npz") as z:
        k = len(z["step/x"]) // 2
        return {name[5:]: z[name][k] for name in z.files if name.startswith("step/")}


def speed(args) -> dict:
    from dit_export.runtime.backend import make_backend
    from dit_export.runtime.folder import ExportFolder

    rows = []
    for model in args.models:
        batch = 10 if model == "tiny-digits" else args.batch
        folders = {p: folder(args.work, model, p, batch) for p in PRECISIONS}
        feeds = step_feeds(folders["int8"])
        runners = {}
        for p, f in folders.items():
            ef = ExportFolder(f)
            be = make_backend("ort", f, ef.manifest, ["dit_step"], threads=args.threads)
            io = be.graphs["dit_step"]
            bufs = {t.name: be.alloc(t.shape, t.np_dtype) for t in io.inputs + io.outputs}
            for name, a in feeds.items():
                be.write(bufs[name], a.reshape(bufs[name].shape))
            be.run("dit_step", bufs)  # warm-up
            runners[p] = (be, bufs)
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(args.rounds):
            for p, (be, bufs) in runners.items():
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    be.run("dit_step", bufs)
                be.read(bufs["x_next"])
                times[p].append((time.perf_counter() - t0) / args.calls)
        outs = {p: be.read(bufs["x_next"]) for p, (be, bufs) in runners.items()}
        for be, _ in runners.values():
            be.close()
        rep = analysis.analyze(folders["int8"] / "dit_step.onnx", "int8")
        kernels = ort_kernels(folders["int8"] / "dit_step.onnx", "int8")
        med = {p: statistics.median(v) for p, v in times.items()}
        ref = outs["fp32"].astype(np.float64)
        row = {
            "model": model,
            "batch": batch,
            "ms_per_forward": {p: round(1e3 * v, 3) for p, v in med.items()},
            "all_ms": {p: [round(1e3 * x, 3) for x in v] for p, v in times.items()},
            "speedup_vs_fp32": {p: round(med["fp32"] / v, 3) for p, v in med.items()},
            "x_next_rel_l2_vs_fp32": {
                p: float(np.linalg.norm(o - ref) / np.linalg.norm(ref)) for p, o in outs.items()
            },
            "int8_gemm_flop_share": round(rep.quant_flop_share, 4),
            "gemm_gflop": round(sum(rep.gemm_flops.values()) / 1e9, 3),
            "ort_int8_kernels": {k: v for k, v in kernels.items() if k in KERNEL_OPS},
            "ort_fp32_gemm": kernels.get("Gemm", 0),
        }
        print(json.dumps({k: row[k] for k in ("model", "ms_per_forward", "speedup_vs_fp32")}), flush=True)
        rows.append(row)
    return {"rows": rows, "rounds": args.rounds, "calls": args.calls, "threads": args.threads}


def image(args) -> dict:
    """Seconds per finished image (every sampler step + the VAE decode) through the runtime's own
    `Sampler.generate` on each precision's folder, batch 1; every repeat runs all precisions, in an
    order rotated by one, so machine load hits all alike."""
    from dit_export.runtime.sampler import Sampler
    from dit_export.sampling.request import SampleRequest

    sampler, steps = args.run.split(":")
    req = SampleRequest((1,), 0, 4.0, int(steps), sampler)
    rows = []
    for model in args.models:
        runners = {
            p: Sampler.load(folder(args.work, model, p, 1), "ort", threads=args.threads) for p in PRECISIONS
        }
        for r in runners.values():
            r.generate(replace(req, steps=2))  # warm-up: sessions, buffers, the decode
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for i in range(args.repeat):
            for p in PRECISIONS[i % 3 :] + PRECISIONS[: i % 3]:
                t0 = time.perf_counter()
                res = runners[p].generate(req)
                times[p].append(time.perf_counter() - t0)
                assert res.images is not None  # a finished image: the folder has a VAE
            print(
                f"  {model}: repeat {i + 1}/{args.repeat}",
                {p: round(v[-1], 2) for p, v in times.items()},
                flush=True,
            )
        med = {p: statistics.median(v) for p, v in times.items()}
        row = {
            "model": model,
            "describe": {p: r.describe() for p, r in runners.items()},
            "s_per_image": {p: round(v, 4) for p, v in med.items()},
            "all_s": {p: [round(x, 4) for x in v] for p, v in times.items()},
            "speedup_vs_fp32": {p: round(med["fp32"] / v, 3) for p, v in med.items()},
        }
        for r in runners.values():
            r.close()
        print(json.dumps({k: row[k] for k in ("model", "s_per_image", "speedup_vs_fp32")}), flush=True)
        rows.append(row)
    return {"rows": rows, "run": args.run, "repeat": args.repeat, "threads": args.threads, "batch": 1}


def quality(args) -> dict:
    from dit_export.runtime.sampler import Sampler
    from dit_export.verify.score import runtime_sample_fn, score_sampler, train_classifier

    clf = train_classifier(0)
    rows = []
    for p in PRECISIONS:
        f = folder(args.work, "tiny-digits", p, 10)
        runner = Sampler.load(f, "ort", threads=args.threads)
        for sampler, steps in (("ddpm", 50), ("dpm++2m", 20)):
            for seed in args.seeds:
                r = score_sampler(
                    runtime_sample_fn(runner, cfg_scale=4.0, steps=steps, sampler=sampler, seed=seed),
                    per_class=args.per_class,
                    classifier=clf,
                    backend="ort",
                    precision=p,
                    steps=steps,
                    sampler=sampler,
                    seed=seed,
                )
                row = {
                    "precision": p,
                    "sampler": f"{sampler}-{steps}",
                    "seed": seed,
                    "accuracy": round(r.accuracy, 4),
                    "fd": round(r.fd, 3),
                    "fd_real": round(r.fd_real, 3),
                    "images": r.num_images,
                    "seconds": round(r.sample_seconds, 1),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
        runner.close()
    return {"rows": rows, "per_class": args.per_class, "cfg_scale": 4.0}


def write(part: str, data: dict, command: str) -> None:
    """Merge the part into int8.json and re-render int8.md; the md's hand-kept tail (from the
    `HISTORY` heading on: earlier runs, side measurements) is carried over."""
    path, md = RESULTS / "int8.json", RESULTS / "int8.md"
    allres = json.loads(path.read_text()) if path.is_file() else {}
    allres[part] = data | {"command": command}
    allres["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    old = md.read_text() if md.is_file() else ""
    tail = old[old.index(HISTORY) :] if HISTORY in old else ""
    write_bytes(path, (json.dumps(allres, indent=1) + "\n").encode())
    write_bytes(md, (render(allres) + tail).encode())
    print(f"wrote {path} and int8.md")


def section(title: str, part: dict, columns: list[str]) -> list[str]:
    """A part's heading, its command and load, and its table's header."""
    return [
        f"## {title}",
        "",
        f"Command: `{part['command']}`  ",
        f"Load before: `{part['uptime_before']}`  ",
        f"Load after: `{part['uptime_after']}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]


def render(res: dict) -> str:
    """The tables of int8.md from int8.json (the prose around them lives in NOTES below)."""
    out = ["# int8 (W8A8 QDQ) vs fp32 vs mixed fp16 on ONNX Runtime CPU", "", NOTES, ""]
    ups = ["int8 speed-up", "fp16 speed-up"]
    if sp := res.get("speed"):
        title = (
            f"Per-forward time of dit_step ({sp['threads']} threads, median of {sp['rounds']} interleaved "
        )
        title += f"rounds × {sp['calls']} calls)"
        cols = ["model", "batch", "GEMM GFLOP/call", "int8 share", "ORT int8 kernels", "fp32 ms", "fp16 ms"]
        out += section(title, sp, [*cols, "int8 ms", *ups])
        for r in sp["rows"]:
            ms, up = r["ms_per_forward"], r["speedup_vs_fp32"]
            kern = ", ".join(f"{k} {v}" for k, v in r["ort_int8_kernels"].items())
            out.append(
                f"| {r['model']} | {r['batch']} | {r['gemm_gflop']} | {100 * r['int8_gemm_flop_share']:.1f} % "
                f"| {kern} | {ms['fp32']:.1f} | {ms['fp16']:.1f} | {ms['int8']:.1f} | {up['int8']:.2f}× "
                f"| {up['fp16']:.2f}× |"
            )
        out.append("")
    if im := res.get("image"):
        title = (
            f"Per finished image ({im['run'].replace(':', '-')}, cfg 4, every step + the VAE decode, batch "
        )
        title += f"{im['batch']}, {im['threads']} threads, median of {im['repeat']} interleaved repeats)"
        out += section(title, im, ["model", "fp32 s/image", "fp16 s/image", "int8 s/image", *ups])
        for r in im["rows"]:
            t, up = r["s_per_image"], r["speedup_vs_fp32"]
            cells = [
                r["model"],
                *(f"{t[p]:.3f}" for p in PRECISIONS),
                *(f"{up[p]:.2f}×" for p in ("int8", "fp16")),
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if q := res.get("quality"):
        title = f"tiny-digits quality (cfg {q['cfg_scale']}, {q['per_class']} images per class, ORT CPU)"
        cols = ["precision", "sampler", "seed", "accuracy", "FD", "FD floor (real subset)", "seconds"]
        out += section(title, q, cols)
        for r in q["rows"]:
            out.append(
                f"| {r['precision']} | {r['sampler']} | {r['seed']} | {100 * r['accuracy']:.1f} % | {r['fd']:.2f} "
                f"| {r['fd_real']:.2f} | {r['seconds']} |"
            )
        out.append("")
    return "\n".join(out) + "\n"


NOTES = """Machine: the project's 2-core AMD EPYC (AVX512-VNNI), shared with other sessions during these
runs: the load average was 4.6–22 on 2 cores (each run's `uptime` below), so absolute times are a
multiple of an idle machine's (up to ~16× for the loaded per-image run);
the ratios come from one interleaved run (every round times every precision in turn).

int8 = `--precision int8`: onnxruntime.quantization.quantize_static (QDQ), the block GEMMs (qkv,
proj, fc1, fc2) W8A8 — weights int8 symmetric per output channel, activations int8 symmetric per
tensor (MinMax over every step of the calibration trajectories: ddpm-50 × seeds 0 1 for tiny-digits,
ddpm-10 × seed 0 for the random-weight S/2 and B/2). ONNX Runtime runs them as
MatMulIntegerToFloat once its MatMulAddFusion is disabled for int8 sessions (the runtime does;
with it, ORT folds DQ→MatMul→Add into an fp32 Gemm: 0.76× fp32 on S/2 instead of 1.5×).
fp16 = the mixed-fp16 export: ORT's CPU provider has no fp16 GEMM on this CPU, so it is slower."""


PARTS = {"speed": speed, "image": image, "quality": quality}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=tuple(PARTS))
    ap.add_argument("--models", nargs="+", default=["tiny-digits", "S/2", "B/2"])
    ap.add_argument("--batch", type=int, default=1, help="S/2, B/2 export batch (tiny-digits: 10)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=3, help="forwards per round and precision")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--run", default="ddim:50", help="image: SAMPLER:STEPS of the finished image")
    ap.add_argument("--repeat", type=int, default=3, help="image: interleaved repeats (median reported)")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--work", type=Path, default=Path("/tmp/int8_bench"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:])
    before = uptime()
    data = PARTS[args.part](args)
    data |= {"uptime_before": before, "uptime_after": uptime()}
    write(args.part, data, command)


if __name__ == "__main__":
    main()
