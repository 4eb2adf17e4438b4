"""`bench`: latency and throughput of every backend against the PyTorch baselines.

    python -m dit_export bench --model XL/2 --random-weights \
        --backends torch-fp32 torch-tf32 torch-fp16 torch-compile ort ort-fp16 trt \
        --batch 1 4 16 32 --steps 50 --json xl2.json --markdown xl2.md --plot xl2.png

`--quick` (CI smoke run): S/8 with random weights and the tiny random VAE, 2 steps, batches 1
and 2, warm-up 1, 2 timed calls, unless those flags are given explicitly.
"""

from __future__ import annotations

import argparse

from dit_export.bench.backends import DEFAULT_BACKENDS, QUICK_BACKENDS, SPECS
from dit_export.bench.run import STAGES, BenchConfig

QUICK = {
    "model": "S/8",
    "random_weights": True,
    "vae": "random-tiny",
    "steps": 2,
    "batch": [1, 2],
    "warmup": 1,
    "repeat": 2,
}
FULL = {"steps": 50, "batch": [1], "warmup": 5, "repeat": 20}


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Fill what the user left unset from the quick or the full defaults."""

    def pick(name: str):
        given = getattr(args, name)
        if given is not None:
            return given
        return (QUICK if args.quick else FULL).get(name, FULL.get(name))

    model, random_weights = args.model, bool(args.random_weights)
    if args.quick and not args.ckpt:  # the quick run needs no download: random weights
        model, random_weights = model or QUICK["model"], True
    vae = args.vae
    if vae is None:
        vae = QUICK["vae"] if args.quick else ("random-sd" if random_weights else "mse")
    return BenchConfig(
        model=model,
        ckpt=args.ckpt,
        random_weights=random_weights,
        weights_seed=args.weights_seed,
        flavor=args.flavor,
        num_classes=args.num_classes,
        image_size=args.image_size,
        vae=vae,
        backends=list(args.backends or (QUICK_BACKENDS if args.quick else DEFAULT_BACKENDS)),
        batches=list(pick("batch")),
        steps=int(pick("steps")),
        warmup=int(pick("warmup")),
        repeat=int(pick("repeat")),
        stages=list(args.stages or STAGES),
        quick=bool(args.quick),
        engines=args.engines,
        device=args.device,
        torch_attention=args.torch_attention,
        compile_mode=args.compile_mode,
        max_sample_seconds=float(args.max_sample_seconds),
        sample_repeat=int(args.sample_repeat),
        threads=int(args.threads),
        export_jobs=int(args.export_jobs if args.export_jobs is not None else (2 if args.quick else 1)),
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from dit_export.bench.report import to_markdown, write_plot
    from dit_export.bench.run import run_bench
    from dit_export.fileio import atomic_path, ensure_writable_dir, write_json

    cfg = config_from_args(args)
    cfg.validate()
    for out in (args.json, args.markdown, args.plot):  # fail before an hour of timing, not after
        if out:
            from pathlib import Path

            ensure_writable_dir(Path(out).parent if str(Path(out).parent) else Path("."))
    res = run_bench(cfg)
    res["command"] = "python -m dit_export " + " ".join(
        sys.argv[1:] if sys.argv[1:2] == ["bench"] else ["bench", *sys.argv[1:]]
    )
    res["outputs"] = {"json": args.json, "markdown": args.markdown, "plot": args.plot, "plot_skipped": None}
    if args.plot:
        why = write_plot(res, args.plot)
        if why:
            res["outputs"]["plot"] = None
            res["outputs"]["plot_skipped"] = why
            print(f"plot skipped: {why}")
        else:
            print(f"wrote {args.plot}")
    md = to_markdown(res)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            tmp.write_text(md)
        print(f"wrote {args.markdown}")
    if args.json:
        write_json(args.json, res)
        print(f"wrote {args.json}")
    print()
    print(md)
    return 0


def register(sub) -> None:
    from dit_export.sampling.command import add_model_args

    p = sub.add_parser(
        "bench",
        help="time every backend (torch baselines, ONNX Runtime, TensorRT) per batch and stage",
        description="Denoiser forward, one fused sampler step, VAE decode and the whole sample, per "
        "backend and batch, with images/s, peak memory, achieved TFLOP/s and the ratio of every backend "
        "to torch-fp32 measured in the same run. Backends that cannot run here are listed as skipped "
        "with the reason. Example: python -m dit_export bench --model XL/2 --random-weights --batch 1 4 16 "
        "--json xl2.json --markdown xl2.md --plot xl2.png",
    )
    add_model_args(p)
    p.add_argument(
        "--vae",
        default=None,
        help="VAE: folder, hub id, ema, mse, none, random-sd|random-small|random-tiny "
        "(default: mse; random-sd with --random-weights; random-tiny with --quick)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"any of {' '.join(SPECS)} (default: {' '.join(DEFAULT_BACKENDS)}); torch-fp32 is always added",
    )
    p.add_argument("--batch", type=int, nargs="+", default=None, help="images per call (default 1)")
    p.add_argument("--steps", type=int, default=None, help="DDPM steps of the whole sample (default 50)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed calls per stage, the first included (default 5)"
    )
    p.add_argument("--repeat", type=int, default=None, help="timed calls per stage (default 20)")
    p.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=None,
        help="what to time (default all; without 'sample' the whole sample is estimated from step and VAE)",
    )
    p.add_argument(
        "--max-sample-seconds",
        type=float,
        default=120.0,
        help="measure the whole sample only when steps × step + VAE is below this; else estimate (default 120)",
    )
    p.add_argument("--sample-repeat", type=int, default=1, help="timed whole samples (median; default 1)")
    p.add_argument(
        "--engines",
        default=None,
        metavar="DIR",
        help="keep exports and engines under DIR and reuse them next time (default: a temporary folder)",
    )
    p.add_argument(
        "--export-jobs",
        type=int,
        default=None,
        help="exports prepared at once, each in its own process (default 1; 2 with --quick). An XL/2 "
        "export needs about 8 GB",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch and ONNX Runtime alike (default 0: each library's own default)",
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="torch baselines' device"
    )
    p.add_argument(
        "--torch-attention",
        choices=["sdpa", "explicit"],
        default="sdpa",
        help="attention of the torch baselines: sdpa (what timm's Attention in the official model uses "
        "on torch 2; default) or explicit matmul + softmax (what the export traces)",
    )
    p.add_argument(
        "--compile-mode", default="default", help="torch.compile mode for torch-compile (default 'default')"
    )
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


def main(argv: list[str] | None = None) -> int:
    """`bench` on its own parser (what `python -m dit_export bench` runs once it is registered)."""
    import sys

    from dit_export.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m dit_export")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
