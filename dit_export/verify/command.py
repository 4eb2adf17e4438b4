"""`verify --engines DIR`: measured error of a backend vs the PyTorch fp32 reference, per stage."""

from __future__ import annotations

import argparse
import json
import textwrap


def run_verify(args: argparse.Namespace) -> int:
    from dit_export.fileio import atomic_path
    from dit_export.verify.run import format_table, summary_line, verify
    from dit_export.verify.thresholds import table_text

    if args.thresholds:
        print(table_text())
        return 0
    if not args.engines:
        from dit_export.errors import UserError

        raise UserError("give --engines DIR (an exported folder)")
    options = {} if args.backend != "trt" else {"cuda_graph": not args.no_cuda_graph}
    report = verify(
        args.engines,
        backend=args.backend,
        seeds=args.seeds,
        steps=args.steps,
        sampler=args.sampler,
        cfg_scale=args.cfg_scale,
        providers=args.providers,
        log=None,
        progress=not args.no_progress,
        **options,
    )
    print(f"{report.backend}  vs  {report.reference}  ({report.precision} limits)")
    print(format_table(report))
    print(summary_line(report))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0 if report.passed else 1


def add_verify_args(p: argparse.ArgumentParser, *, steps: int = 50) -> None:
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="noise seeds, one engine batch each (default 0 1 2)",
    )
    p.add_argument(
        "--steps", type=int, default=steps, help=f"sampling steps of the full-loop stage (default {steps})"
    )
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale (default 4)")


def register(sub) -> None:
    from dit_export.verify.thresholds import table_text

    p = sub.add_parser(
        "verify",
        help="compare a backend with the PyTorch fp32 reference, stage by stage (exit 1 on a failure)",
        description=textwrap.fill(
            "Run the chosen backend and the PyTorch fp32 reference (rebuilt from the weights the manifest "
            "records) on identical inputs and noise, and print per stage the measured error and its limit: "
            "denoiser output and guided ε at t ∈ {999, 500, 0}, one full step, the final latents after the "
            "loop, the decoded uint8 images (PSNR, max |Δ|). Exit 1 when a check fails. Limits per precision:",
            88,
        )
        + "\n\n"
        + table_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--engines", default=None, metavar="DIR", help="exported folder (manifest.json, graphs, plans)"
    )
    p.add_argument(
        "--backend", choices=["ort", "trt", "torch"], default="ort", help="backend under test (default ort)"
    )
    p.add_argument("--providers", nargs="+", default=None, help="onnxruntime providers for --backend ort")
    p.add_argument("--no-cuda-graph", action="store_true", help="trt: run the step without CUDA-graph replay")
    add_verify_args(p)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--thresholds", action="store_true", help="print the limits table and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_verify)
