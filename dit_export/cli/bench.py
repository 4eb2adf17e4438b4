"""`bench`: latency and throughput of every backend against the PyTorch baselines.

    python -m dit_export bench --model XL/2 --random-weights \\
        --backends torch-fp32 torch-tf32 torch-fp16 torch-compile ort ort-fp16 trt \\
        --batch 1 4 16 32 --steps 50 --json xl2.json --markdown xl2.md --plot xl2.png

`--quick` (CI smoke run): S/8 with random weights and the tiny random VAE, 2 steps, batches 1
and 2, warm-up 1, 2 timed calls, unless those flags are given explicitly.
"""

from __future__ import annotations

import argparse
import sys

from dit_export.backends import canonical_backend
from dit_export.bench.backends import DEFAULT_BACKENDS, QUICK_BACKENDS, SPECS
from dit_export.bench.report import to_markdown, write_plot
from dit_export.cli.args import CacheArgs, ModelArgs, check_output_file, count, write_json_output
from dit_export.errors import UserError
from dit_export.fileio import atomic_path

QUICK = {"model": "S/8", "vae": "random-tiny", "steps": 2, "batch": [1, 2], "warmup": 1, "repeat": 2}
FULL = {"steps": 50, "batch": [1], "warmup": 5, "repeat": 20}


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time every backend (torch baselines, ONNX Runtime, TensorRT) per batch and stage",
        description="Denoiser forward, one fused sampler step, VAE decode and the whole sample, per "
        "backend and batch, with images/s, peak memory, achieved TFLOP/s and the ratio of every backend "
        "to torch-fp32 measured in the same run. Backends that cannot run here are listed as skipped "
        "with the reason. Example: python -m dit_export bench --model XL/2 --random-weights --batch 1 4 16 "
        "--json xl2.json --markdown xl2.md --plot xl2.png",
    )
    ModelArgs.add_to(p, vae_default="mse; random-sd with --random-weights; random-tiny with --quick")
    p.add_argument(
        "--backends",
        nargs="+",
        type=bench_backend,
        default=None,
        metavar="NAME",
        help=f"any of {' '.join(SPECS)} (default: {' '.join(DEFAULT_BACKENDS)}); torch-fp32 is always added; "
        "onnxruntime/tensorrt are accepted for ort/trt",
    )
    p.add_argument("--batch", type=count, nargs="+", default=None, help="images per call (default 1)")
    p.add_argument("--steps", type=count, default=None, help="DDPM steps of the whole sample (default 50)")
    p.add_argument(
        "--warmup", type=count, default=None, help="untimed calls per stage, the first included (default 5)"
    )
    p.add_argument("--repeat", type=count, default=None, help="timed calls per stage (default 20)")
    p.add_argument(
        "--stages",
        nargs="+",
        default=None,
        help="what to time: denoiser, step, vae, sample (default all; without 'sample' the whole sample is "
        "estimated from step and VAE)",
    )
    CacheArgs.add_to(p)  # with N > 1: the cached step graphs timed too, the whole sample cached
    add_run_args(p)
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: S/8 random weights, tiny VAE, 2 steps, batch 1 2, warm-up 1, repeat 2, "
        f"backends {' '.join(QUICK_BACKENDS)}",
    )
    p.add_argument("--json", default=None, help="write every figure, the machine and versions as JSON")
    p.add_argument("--markdown", default=None, help="write the tables as markdown")
    p.add_argument(
        "--plot", default=None, help="write latency and images/s against batch as PNG (matplotlib)"
    )
    p.set_defaults(func=run)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """How the timings run: sample length cap, work folder, export processes, threads, torch options."""
    g = p.add_argument_group("running")
    g.add_argument(
        "--max-sample-seconds",
        type=float,
        default=120.0,
        help="measure the whole sample only when steps × step + VAE is below this; else estimate (default 120)",
    )
    g.add_argument("--sample-repeat", type=count, default=1, help="timed whole samples (median; default 1)")
    g.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="keep exports and engines under DIR (one folder per model/precision/batch) and reuse them "
        "next time (default: a temporary folder)",
    )
    g.add_argument(
        "--export-jobs",
        type=count,
        default=None,
        help="exports prepared at once, each in its own process (default 1; 2 with --quick). An XL/2 "
        "export needs about 8 GB",
    )
    g.add_argument(
        "--threads",
        type=count,
        default=0,
        help="CPU threads for torch and ONNX Runtime alike (default 0: each library's own)",
    )
    g.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="torch baselines' device"
    )
    g.add_argument(
        "--torch-attention",
        choices=["sdpa", "explicit"],
        default="sdpa",
        help="attention of the torch baselines: sdpa (what timm's Attention in the official model uses "
        "on torch 2; default) or explicit matmul + softmax (what the export traces)",
    )
    g.add_argument(
        "--compile-mode", default="default", help="torch.compile mode for torch-compile (default 'default')"
    )


def bench_backend(text: str) -> str:
    """A bench backend name (`ort-fp16`, `torch-compile`, ...), with the long backend words accepted."""
    head, dash, mode = text.partition("-")
    try:
        name = canonical_backend(head) + dash + mode
    except UserError:
        name = text
    if name not in SPECS:
        raise argparse.ArgumentTypeError(f"unknown bench backend {text!r}; choose from {' '.join(SPECS)}")
    return name


def config_from_args(args: argparse.Namespace):
    """The BenchConfig: what the user left unset comes from the quick or the full defaults."""
    from dit_export.bench.run import STAGES, BenchConfig  # torch (the exporter)

    def pick(name: str):
        given = getattr(args, name)
        return given if given is not None else (QUICK if args.quick else FULL).get(name, FULL.get(name))

    if args.quick and not args.ckpt:  # the quick run needs no download: random weights
        args.model, args.random_weights = args.model or QUICK["model"], True
    vae = QUICK["vae"] if args.quick else ("random-sd" if args.random_weights else None)
    return BenchConfig(
        model=ModelArgs.parse(args, vae=vae),
        backends=list(args.backends or (QUICK_BACKENDS if args.quick else DEFAULT_BACKENDS)),
        batches=list(pick("batch")),
        steps=int(pick("steps")),
        warmup=int(pick("warmup")),
        repeat=int(pick("repeat")),
        stages=list(args.stages or STAGES),
        quick=bool(args.quick),
        engines=args.work_dir,
        device=args.device,
        torch_attention=args.torch_attention,
        compile_mode=args.compile_mode,
        max_sample_seconds=float(args.max_sample_seconds),
        sample_repeat=int(args.sample_repeat),
        threads=int(args.threads),
        export_jobs=int(args.export_jobs if args.export_jobs is not None else (2 if args.quick else 1)),
        **CacheArgs.fields(args),
    )


def run(args: argparse.Namespace) -> int:
    from dit_export.bench.run import run_bench  # torch

    cfg = config_from_args(args).validate()
    for flag, out in (("--json", args.json), ("--markdown", args.markdown), ("--plot", args.plot)):
        check_output_file(out, flag)  # fail before an hour of timing, not after
    cfg.model.check_available()  # a missing download is one line, not a "failed" row per backend
    res = run_bench(cfg)
    res["command"] = "python -m dit_export " + " ".join(
        sys.argv[1:] if sys.argv[1:2] == ["bench"] else ["bench", *sys.argv[1:]]
    )
    res["outputs"] = {"json": args.json, "markdown": args.markdown, "plot": args.plot, "plot_skipped": None}
    if args.plot:
        why = write_plot(res, args.plot)
        if why:
            res["outputs"] = replace_plot(res["outputs"], why)
            print(f"plot skipped: {why}")
        else:
            print(f"wrote {args.plot}")
    md = to_markdown(res)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            tmp.write_text(md)
        print(f"wrote {args.markdown}")
    write_json_output(args.json, res)
    print()
    print(md)
    return 0


def replace_plot(outputs: dict, why: str) -> dict:
    return {**outputs, "plot": None, "plot_skipped": why}
