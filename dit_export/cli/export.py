"""`export`: the denoiser, the fused sampler step and the VAE decoder to a static ONNX folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from dit_export.cli.args import ModelArgs, add_precision, count, fields
from dit_export.cli.schedules import schedule_arg
from dit_export.export.trt_ops import DEFAULT_OPSET, OPSET_MAX, OPSET_MIN
from dit_export.sampling.cache import DEFAULT_ORDER, MAX_ORDER

EXPORT_FIELDS = (
    "batch",
    "precision",
    "opset",
    "schedules",
    "max_cache_order",
)  # the export's own flags (add_export_args), shared with build
CACHE_ORDER_WORDS = (*map(str, range(MAX_ORDER + 1)), "none")


def cache_order_arg(text: str) -> int | None:
    """argparse type of --max-cache-order: 0..MAX_ORDER, or none (no cache graphs)."""
    word = text.strip().lower()
    if word not in CACHE_ORDER_WORDS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(CACHE_ORDER_WORDS)}, got {text!r}")
    return None if word == "none" else int(word)


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export the denoiser, the fused sampler step and the VAE decoder to static ONNX",
        description="Trace DiT (dit.onnx), one guided sampler step (dit_step.onnx), the step's forecast-cache "
        "pair (dit_step_full.onnx, dit_step_forecast.onnx; see --max-cache-order) and the VAE decoder "
        "(vae_decoder.onnx) to static ONNX in fp32 or mixed fp16, check each against PyTorch with "
        "ONNX Runtime, and write manifest.json. Example: python -m dit_export export --model S/8 "
        "--random-weights --vae random-tiny --batch 2 --precision fp16 --out engines/s8",
    )
    ModelArgs.add_to(p)
    add_export_args(p)
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--check-seed", type=count, default=0, help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="replace an existing export in --out")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument(  # issue 22
        "--calibrate",
        type=schedule_arg,
        default=None,
        metavar="SAMPLER:STEPS",
        help="int8/fp8: the sampler trajectories whose every step calibrates the activations (default "
        "ddpm:50; seeds 0 and 1, one export batch each; stored as calibration.npz, reused when unchanged)",
    )
    p.set_defaults(func=run)


def add_export_args(p: argparse.ArgumentParser) -> None:
    """--batch, --precision, --opset, --schedules, --max-cache-order: the export's own fields
    (shared with build)."""
    p.add_argument(
        "--batch", type=count, default=1, help="images per call N (dit.onnx takes 2N rows; default 1)"
    )
    add_precision(p)
    p.add_argument(
        "--opset",
        type=count,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {OPSET_MIN}–{OPSET_MAX} (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--schedules",
        nargs="+",
        type=schedule_arg,
        default=(),
        metavar="SAMPLER:STEPS",
        help="store these schedule tables too (e.g. dpm++2m:12 ddim:30): the C++ runtime samples only "
        "stored step counts (`schedules --engines DIR --add` adds more to an existing folder)",
    )
    p.add_argument(
        "--max-cache-order",
        type=cache_order_arg,
        default=DEFAULT_ORDER,
        metavar="{" + ",".join(CACHE_ORDER_WORDS) + "}",
        help="also write the forecast-cache step graphs (dit_step_full.onnx, dit_step_forecast.onnx) for "
        f"Taylor orders up to this (sampling with --cache-interval N --cache-order O ≤ it; default "
        f"{DEFAULT_ORDER}; their cache holds order + 1 slots per block: `inspect` prints its memory); "
        "none: no cache graphs",
    )


def run(args: argparse.Namespace) -> int:
    spec = ModelArgs.parse(args)  # cheap checks before torch loads
    spec = spec.check_available()  # weights and VAE on disk (or fetched) before any folder is made
    from dit_export.export.calibrate import CalibSettings
    from dit_export.export.exporter import ExportOptions, export  # torch

    opts = ExportOptions(
        model=spec,
        out=Path(args.out),
        check=not args.no_check,
        calibration=CalibSettings(*args.calibrate) if args.calibrate else None,
        **fields(args, *EXPORT_FIELDS, "force", "check_seed"),
    )
    result = export(opts)
    m = result.manifest
    files = [g.file.file for g in m.graphs.values() if g] + ["manifest.json"]
    print(f"wrote {result.out}: {', '.join(files)} ({m.model.name}, {m.precision}, batch {m.batch})")
    return 0
