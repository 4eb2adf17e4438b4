"""`inspect DIR`: the static facts of an exported folder and their checks (exit 1 on a failed check)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="print the static facts of an exported folder and check them (exit 1 on a failed check)",
        description="Per graph: node counts by op, tensor dtypes, parameter bytes, fp32 islands, GEMM "
        "FLOPs in fp16, and the static checks (opset, TensorRT op list, static shapes, no dynamic ops, "
        "graph I/O types, fp16 policy), plus the manifest and its file hashes.",
    )
    p.add_argument("dir", help="an exported folder (with manifest.json)")
    p.add_argument("--no-hash", action="store_true", help="skip re-hashing the graph files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dit_export.export.report import inspect_folder  # onnx, no torch (tests/test_imports.py)

    return 0 if inspect_folder(Path(args.dir), verify=not args.no_hash) else 1
