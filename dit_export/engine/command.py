"""`build`: the user's main command (export → engines → short verify → summary)."""

from __future__ import annotations

import argparse


def run_build(args: argparse.Namespace) -> int:
    from dit_export.engine.build import BuildConfig, build, format_summary

    cfg = BuildConfig(
        out=args.out,
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
        backend=args.backend,
        force=args.force,
        verify=not args.no_verify,
        verify_seeds=args.verify_seeds,
        verify_steps=args.verify_steps,
        workspace_gib=args.workspace_gib,
        opt_level=args.opt_level,
    )
    rows, passed, out = build(cfg)
    print(format_summary(rows, out))
    return 0 if passed else 1


def register(sub) -> None:
    from dit_export.export.trt_ops import DEFAULT_OPSET, OPSET_MAX, OPSET_MIN
    from dit_export.sampling.command import add_model_args

    p = sub.add_parser(
        "build",
        help="export + TensorRT (or ONNX Runtime) engines + a short verify, reusing what is unchanged",
        description="The main command: export the model to static ONNX, build fp16 TensorRT engines when "
        "TensorRT and a GPU are present (else keep the ONNX graphs for ONNX Runtime), run a short verify "
        "against PyTorch and print a summary. Re-running with unchanged inputs reuses everything; anything "
        "stale (weights, options, ONNX, TensorRT version, GPU) is rebuilt. Example: python -m dit_export "
        "build --model XL/2 --image-size 256 --batch 4",
    )
    add_model_args(p)
    p.add_argument("--vae", default="mse", help="VAE decoder: folder, hub id, ema, mse (default), none")
    p.add_argument("--batch", type=int, default=1, help="images per engine call N (default 1)")
    p.add_argument(
        "--precision",
        choices=["fp16", "fp32"],
        default="fp16",
        help="fp16: mixed fp16 with fp32 islands (default); fp32",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset {OPSET_MIN}–{OPSET_MAX} (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "tensorrt", "onnxruntime"],
        default="auto",
        help="auto: TensorRT when it and a CUDA GPU are present, else ONNX Runtime (default)",
    )
    p.add_argument(
        "--out", default=None, help="output folder (default engines/<model>-<size>-<precision>-b<N>)"
    )
    p.add_argument("--force", action="store_true", help="take over a folder that `build` did not make")
    p.add_argument("--no-verify", action="store_true", help="skip the short verify")
    p.add_argument("--verify-steps", type=int, default=10, help="steps of the short verify (default 10)")
    p.add_argument("--verify-seeds", type=int, nargs="+", default=[0], help="seeds of the short verify")
    g = p.add_argument_group("tensorrt")
    g.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (default 4 GiB)")
    g.add_argument(
        "--opt-level",
        type=int,
        default=3,
        choices=range(6),
        metavar="0-5",
        help="builder optimisation level (default 3)",
    )
    p.set_defaults(func=run_build)
