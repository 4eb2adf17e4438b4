"""`triton-repo`: a Triton Inference Server model repository serving the sampler of an engines folder.

    python -m dit_export triton-repo --engines engines/xl --out triton_repo
    docker run --gpus all --rm -p 8000:8000 -v $PWD/triton_repo:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
        tritonserver --model-repository /models

Every size (instances × workers × threads, max batch, the row scheduler's fill delay) is chosen
for the folder and this machine unless given, and printed with its reason (dit_export/serve/sizing.py).
Layout, inputs and deployment notes: dit_export/serve/triton.py and docs/triton.md.
"""

from __future__ import annotations

import argparse
import sys

from dit_export.cli.args import BackendArgs, EnginesArgs, Parser, fields, non_negative, positive
from dit_export.errors import UserError
from dit_export.serve.triton import DEFAULT_NAME, write_repository

# write_repository's keyword arguments, each a flag of the same name
REPO_FIELDS = ("name", "max_batch", "instances", "workers", "threads", "backend", "reference", "plan_models",
               "queue_delay_us", "force")  # fmt: skip


def register(sub) -> None:
    p = sub.add_parser(
        "triton-repo",
        help="write a Triton Inference Server model repository that serves the sampler of --engines",
        description="Write a Triton model repository: a Python-backend model (config.pbtxt, 1/model.py, "
        "1/engines/) that runs the dit_export sampler in-process — TensorRT (KIND_GPU) when the folder "
        "has plans, else ONNX Runtime (KIND_CPU) — with dynamic batching. Serve it with "
        "`tritonserver --model-repository OUT`; client: scripts/triton_client.py; docs/triton.md.",
    )
    EnginesArgs.add_to(p, required=True, help="an exported/built folder (manifest.json, graphs, plans)")
    p.add_argument("--out", required=True, metavar="REPO", help="the model repository folder")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"model name (default {DEFAULT_NAME})")
    p.add_argument(
        "--max-batch",
        type=positive,
        default=None,
        metavar="N",
        help="Triton max_batch_size: the most rows (images) in a request and in a dynamic batch; a request "
        "over the engine's rows runs in chunks, in order (default: 4 × the engine batch)",
    )
    p.add_argument(
        "--instances",
        type=positive,
        default=None,
        metavar="K",
        help="model instances, each its own process with its own row queue (default: 1 on CPU, 2 per GPU)",
    )
    p.add_argument(
        "--workers",
        type=positive,
        default=None,
        metavar="W",
        help="Samplers per instance, fed by its one row queue (default on CPU: min(2, cores), fewer if memory "
        "is short; on GPU 1)",
    )
    p.add_argument(
        "--threads",
        type=positive,
        default=None,
        metavar="T",
        help="ONNX Runtime intra-op threads per worker, from the config (default: cores ÷ (instances × workers))",
    )
    BackendArgs.add_to(
        p,
        allowed=("trt", "ort"),
        help="runtime inside the model: auto = trt on KIND_GPU when the folder has plans of every graph, "
        "else ort on KIND_CPU",
        runtime_options=False,
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="point the model at --engines (absolute path) instead of placing the engines in the repository",
    )
    p.add_argument(
        "--plan-models",
        action="store_true",
        help="also write each TensorRT plan as a tensorrt_plan model (<name>_<graph>) for Triton to own",
    )
    p.add_argument(
        "--queue-delay-us",
        type=non_negative,
        default=None,
        metavar="US",
        help="how long a free worker waits for rows to fill its engine run (default: a quarter of one "
        "full-batch step, measured now with the chosen threads)",
    )
    p.add_argument("--force", action="store_true", help="replace the model folders if they exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = write_repository(
        args.engines,
        args.out,
        **fields(args, *REPO_FIELDS),
    )
    print(result.summary())
    print(f"serve: tritonserver --model-repository {result.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m dit_export.cli.triton_repo ...` (the same command, before/without the registration)."""
    parser = Parser(prog="python -m dit_export.cli.triton_repo")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["triton-repo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
