"""`build`: the main command (export → engines → short verify → summary), reusing what is unchanged."""

from __future__ import annotations

import argparse

from dit_export.backends import BACKENDS
from dit_export.cli.args import BackendArgs, ModelArgs, fields, non_negative, positive
from dit_export.cli.export import EXPORT_FIELDS, add_export_args

BUILD_BACKENDS = ("ort", "trt")
# BuildConfig fields that are flags of the same name
BUILD_FIELDS = (
    "out",
    *EXPORT_FIELDS,
    "backend",
    "force",
    "verify_seeds",
    "verify_steps",
    "workspace_gib",
    "opt_level",
)


def register(sub) -> None:
    p = sub.add_parser(
        "build",
        help="export + TensorRT (or ONNX Runtime) engines + a short verify, reusing what is unchanged",
        description="The main command: export the model to static ONNX, build fp16 TensorRT engines when "
        "TensorRT and a GPU are present (else keep the ONNX graphs for ONNX Runtime), run a short verify "
        "against PyTorch and print a summary. Re-running with unchanged inputs reuses everything; anything "
        "stale (weights, options, ONNX, TensorRT version, GPU) is rebuilt. Example: python -m dit_export "
        "build --model XL/2 --image-size 256 --batch 4",
    )
    ModelArgs.add_to(p)
    add_export_args(p)
    BackendArgs.add_to(
        p,
        default="auto",
        allowed=BUILD_BACKENDS,
        help="trt: TensorRT engines; ort: keep the ONNX graphs for ONNX Runtime; auto: TensorRT when it "
        "and a CUDA GPU are present, else ONNX Runtime",
        runtime_options=False,
    )
    p.add_argument(
        "--out", default=None, help="output folder (default engines/<model>-<size>-<precision>-b<N>)"
    )
    p.add_argument("--force", action="store_true", help="take over a folder that `build` did not make")
    g = p.add_argument_group("verify")
    g.add_argument("--no-verify", action="store_true", help="skip the short verify")
    g.add_argument("--verify-steps", type=positive, default=10, help="steps of the short verify (default 10)")
    g.add_argument(
        "--verify-seeds",
        type=non_negative,
        nargs="+",
        default=[0],
        help="seeds of the short verify (default 0)",
    )
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = ModelArgs.parse(args)  # cheap checks before torch loads
    spec = spec.check_available()  # weights and VAE on disk (or fetched) before any folder or lock
    from dit_export.pipeline import BuildConfig, build, format_summary  # torch

    assert args.backend in (*BACKENDS, "auto")
    cfg = BuildConfig(
        model=spec,
        verify=not args.no_verify,
        **fields(args, *BUILD_FIELDS),
    )
    result = build(cfg)
    print(format_summary(result))
    return 0 if result.passed else 1
