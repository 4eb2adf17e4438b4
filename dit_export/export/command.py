"""`export` (models → static ONNX folder + manifest) and `inspect` (report and check a folder)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_export(args: argparse.Namespace) -> int:
    from dit_export.export.exporter import ExportOptions, export

    opts = ExportOptions(
        out=Path(args.out),
        model=args.model,
        ckpt=args.ckpt,
        random_weights=args.random_weights,
        weights_seed=args.weights_seed,
        flavor=args.flavor,
        num_classes=args.num_classes,
        image_size=args.image_size,
        vae=args.vae,
        batch=args.batch,
        precision=args.precision,
        opset=args.opset,
        check=not args.no_check,
        force=args.force,
        check_seed=args.check_seed,
    )
    result = export(opts)
    m = result.manifest
    files = [g["file"] for g in m["graphs"].values() if g] + ["manifest.json"]
    print(
        f"wrote {result.out}: {', '.join(files)} ({m['model']['name']}, {m['precision']}, batch {m['batch']})"
    )
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from dit_export.export.report import inspect_folder

    ok = inspect_folder(Path(args.dir), verify=not args.no_hash)
    return 0 if ok else 1


def register(sub) -> None:
    from dit_export.export.exporter import RANDOM_VAES
    from dit_export.export.trt_ops import DEFAULT_OPSET, OPSET_MAX, OPSET_MIN
    from dit_export.sampling.command import add_model_args

    p = sub.add_parser(
        "export",
        help="export the denoiser, the fused sampler step and the VAE decoder to static ONNX",
        description="Trace DiT (dit.onnx), one guided sampler step (dit_step.onnx) and the VAE decoder "
        "(vae_decoder.onnx) to static ONNX in fp32 or mixed fp16, check each against PyTorch with "
        "ONNX Runtime, and write manifest.json. Example: python -m dit_export export --model S/8 "
        "--random-weights --vae random-tiny --batch 2 --precision fp16 --out engines/s8",
    )
    add_model_args(p)
    p.add_argument(
        "--vae",
        default="mse",
        help=f"VAE decoder: folder, hub id, ema, mse (default), none, or {'|'.join(RANDOM_VAES)} (tests)",
    )
    p.add_argument(
        "--batch", type=int, default=1, help="images per call N (dit.onnx takes 2N rows; default 1)"
    )
    p.add_argument(
        "--precision", choices=["fp32", "fp16"], default="fp32", help="fp32, or mixed fp16 with fp32 islands"
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {OPSET_MIN}–{OPSET_MAX} (default {DEFAULT_OPSET})",
    )
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--check-seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="replace an existing export in --out")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.set_defaults(func=run_export)

    p = sub.add_parser(
        "inspect",
        help="print the static facts of an exported folder and check them (exit 1 on a failed check)",
        description="Per graph: node counts by op, tensor dtypes, parameter bytes, fp32 islands, GEMM "
        "FLOPs in fp16, and the static checks (opset, TensorRT op list, static shapes, no dynamic ops, "
        "graph I/O types, fp16 policy), plus the manifest and its file hashes.",
    )
    p.add_argument("dir", help="an exported folder (with manifest.json)")
    p.add_argument("--no-hash", action="store_true", help="skip re-hashing the graph files")
    p.set_defaults(func=run_inspect)
