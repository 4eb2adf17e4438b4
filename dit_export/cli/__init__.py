"""The command line, a layer above every stage: `python -m dit_export COMMAND` (or `dit-export`).

`app` holds `main` (the one error mapping) and `build_parser`; `args` the argument groups every
command shares (ModelArgs → ModelSpec, RequestArgs → SampleRequest, BackendArgs, EnginesArgs);
one short module per command calls the stages' plain functions. Parsers import no torch, onnx or
backend, so `--help` works on a runtime-only install; handlers import the torch-bound stage
modules they run when they run.
"""

from dit_export.cli.app import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
