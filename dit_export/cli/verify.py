"""`verify --engines DIR`: the measured error of a backend against the PyTorch fp32 reference, per stage."""

from __future__ import annotations

import argparse
import textwrap

from dit_export.cli.args import (
    BackendArgs,
    CacheArgs,
    EnginesArgs,
    RequestArgs,
    add_progress,
    check_output_file,
    engines_backend,
    fields,
    non_negative,
    write_json_output,
)
from dit_export.compare import table_text
from dit_export.errors import UserError
from dit_export.sampling.request import SampleRequest
from dit_export.verify.run import format_table, summary_line, verify


def register(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="compare a backend with the PyTorch fp32 reference, stage by stage (exit 1 on a failure)",
        # --engines is required unless --thresholds: say so (argparse would show it as optional)
        usage="%(prog)s --engines DIR [--backend B] [--seeds N ...] [--steps N] [--thorough] [options]\n"
        "       %(prog)s --thresholds",
        description=textwrap.fill(
            "Run the chosen backend and the PyTorch fp32 reference (rebuilt from the weights the manifest "
            "records) on identical inputs and noise, and print per stage the measured error and its limit: "
            "denoiser output and guided ε at t ∈ {999, 500, 0}, one full step, the final latents after the "
            "loop, the decoded uint8 images (PSNR, max |Δ|). Exit 1 when a check fails. By default a quick "
            "check (seed 0, 10 steps); --thorough runs seeds 0 1 2 and 50 steps. Limits per precision:",
            88,
        )
        + "\n\n"
        + table_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    EnginesArgs.add_to(p)
    BackendArgs.add_to(p, default="auto", allowed=("ort", "trt", "torch"), help="backend under test")
    p.add_argument(
        "--seeds",
        type=non_negative,
        nargs="+",
        default=None,
        help="noise seeds, one engine batch each (default 0)",
    )
    RequestArgs.add_to(p, steps=None, classes=False, seed=False, noise=False)
    p.add_argument("--thorough", action="store_true", help="seeds 0 1 2 and 50 steps unless given")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--thresholds", action="store_true", help="print the limits table and exit")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.thresholds:
        print(table_text())
        return 0
    if not args.engines:
        raise UserError("give --engines DIR (an exported folder)")
    check_output_file(args.json, "--json")
    if args.steps is not None:  # one validation of steps and cfg (the labels come from the manifest)
        RequestArgs.parse(args)
    else:  # the cache flags alone
        SampleRequest((0,), steps=1, **CacheArgs.fields(args)).validate()
    backend = engines_backend(args.engines, args.backend)
    report = verify(
        args.engines,
        backend=backend,
        **fields(args, "seeds", "steps", "thorough", "sampler", "cfg_scale", "providers"),
        **CacheArgs.fields(args),
        log=None,
        progress=not args.no_progress,
        **BackendArgs.options(args, backend),
    )
    print(f"{report.backend}  vs  {report.reference}  ({report.precision} limits)")
    print(format_table(report))
    print(summary_line(report))
    write_json_output(args.json, report.to_dict(), allow_nan=False)
    return 0 if report.passed else 1
