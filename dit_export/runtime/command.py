"""`sample --engines DIR --backend ort|trt|torch`: the runtime sampler behind the `sample` command.

The `sample` parser lives in `dit_export.sampling.command`; it adds `add_engine_args(p)` and
calls `run_engine_sample(args)` when `--engines` is given. Torch is imported only for
`--backend torch` or `--noise torch`.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime (an exported or built folder instead of PyTorch)")
    g.add_argument("--engines", default=None, metavar="DIR", help="sample from this folder's graphs/engines")
    g.add_argument(
        "--backend",
        choices=["ort", "trt", "torch", "cpp"],
        default="ort",
        help="with --engines: ONNX Runtime (default), TensorRT, the PyTorch reference, or the C++ library",
    )
    g.add_argument("--providers", nargs="+", default=None, help="onnxruntime providers for --backend ort")
    g.add_argument("--no-cuda-graph", action="store_true", help="trt: no CUDA-graph replay of the step")


def run_engine_sample(args: argparse.Namespace) -> int:
    """Sample with the runtime; uses the request flags of `add_request_args` (classes, steps, ...)."""
    from dit_export.errors import UserError
    from dit_export.runtime.sampler import Sampler
    from dit_export.sampling.command import check_steps, default_labels, write_outputs

    check_steps(args.steps)
    options: dict[str, Any] = {"cuda_graph": not args.no_cuda_graph} if args.backend == "trt" else {}
    with Sampler.load(args.engines, backend=args.backend, providers=args.providers, **options) as s:
        if args.out and not s.has_vae:
            raise UserError("--out needs a VAE, and this export has none (exported with --vae none)")
        labels = args.classes if args.classes is not None else default_labels(s.num_classes)
        print(f"sampling {len(labels)} image(s) with {s.describe()}")
        res = s.generate(
            labels,
            seed=args.seed,
            cfg_scale=args.cfg_scale,
            steps=args.steps,
            sampler=args.sampler,
            noise=args.noise,
            decode=s.has_vae,
            progress=not args.no_progress,
        )
    write_outputs(args, res.latents, res.images)
    return 0
