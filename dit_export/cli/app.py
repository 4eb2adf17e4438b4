"""`python -m dit_export COMMAND`: the parser of every command and the one error mapping.

Errors end in one line on stderr and no traceback (set DIT_EXPORT_DEBUG=1 for the traceback):
a user mistake (`UserError`, a bad flag) exits 2, Ctrl-C exits 130 ("interrupted"), a missing
optional package names the install that provides it, and an OS error (disk full, permission
denied) names the file and the reason.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from dit_export import __version__
from dit_export.cli import (
    aoti,
    bench,
    build,
    export,
    info,
    inspect,
    models,
    sample,
    sample_set,
    schedules,
    score,
    triton_repo,
    verify,
)
from dit_export.cli.args import Parser
from dit_export.errors import UserError, keep_interrupts
from dit_export.lazy import install_hint

# The order `--help` lists them: use first, then the pipeline's stages, then measurements.
COMMANDS = (
    sample, models, info, build, export, inspect, schedules, aoti, verify, score, bench, sample_set, triton_repo,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m dit_export",
        description="Export DiT + SD-VAE to static ONNX and fp16 TensorRT engines, sample with a "
        "light runtime, and check every number against the PyTorch reference.",
    )
    parser.add_argument("--version", action="version", version=f"dit_export {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def _one_line(text: object) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return " ".join(lines) if lines else type(text).__name__


def os_error_line(e: OSError) -> str:
    """`disk full while writing x: No space left on device` and the like, in one line."""
    what = e.filename if e.filename is not None else None
    reason = e.strerror or _one_line(e)
    if e.errno == errno.ENOSPC:
        return f"disk full{f' while writing {what}' if what else ''}: {reason}; free some space and retry"
    return f"{what}: {reason}" if what else reason


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(os.environ.get("DIT_EXPORT_DEBUG"))
    keep_interrupts()
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if debug or (e.name or "").split(".")[0] == "dit_export":
            raise  # our own module missing is a bug, not an install to suggest
        print(f"error: missing dependency {e.name!r}: {install_hint(e.name or '')}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        if debug:
            raise
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
