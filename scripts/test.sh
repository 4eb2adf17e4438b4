#!/usr/bin/env bash
# Set up a virtual environment with the CPU torch wheel and run the whole test suite.
# This is the README's test command; .ci/run calls it on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==2.13.0"          # the CPU wheel; never let pip pick a CUDA build
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"   # 10.x API types for mypy
ruff check dit_export tests scripts benchmarks
python -m pytest -q "$@"
