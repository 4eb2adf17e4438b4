"""`python -m dit_export <command>`: one sub-command per job, each registered by its stage.

Each entry below names a module with ``register(subparsers)``; none imports torch, onnx or a
backend at module level (a test checks), so `--help` works on a runtime-only install. Every
handler raises ``UserError`` for user mistakes, which we print as one line (exit 2) instead of a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dit_export.errors import UserError

# Modules in the order `--help` lists their commands: the pipeline order.
COMMANDS = [
    "dit_export.sampling.command",  # sample, info
    "dit_export.export.command",  # export, inspect
    "dit_export.export.aoti",  # aoti (CPU packages for the C++ runtime)
    "dit_export.engine.command",  # build
    "dit_export.verify.command",  # verify
    "dit_export.verify.score_command",  # score
    "dit_export.bench.command",  # bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dit_export",
        description="Export DiT + SD-VAE to static ONNX and fp16 TensorRT engines, sample with a "
        "light runtime, and check every number against the PyTorch reference.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMANDS:  # command modules import their heavy dependencies lazily, in handlers
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        return int(rc or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if os.environ.get("DIT_EXPORT_DEBUG"):
            raise
        print(f"error: missing dependency {e.name!r}: pip install 'dit_export[export]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
