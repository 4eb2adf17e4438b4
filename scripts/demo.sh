#!/usr/bin/env bash
# The main job on the embedded default (README): install, build tiny-digits for the available
# backend (TensorRT with a GPU, else ONNX Runtime), sample a grid of all ten digits, verify
# against the PyTorch reference (build prints the table) and score the samples.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q "torch==2.13.0"          # the CPU wheel; never let pip pick a CUDA build
python -m pip install -q -e ".[export,score]"
python -m dit_export build --model tiny-digits --batch 10 --out engines/tiny-digits
python -m dit_export sample --engines engines/tiny-digits --classes 0 1 2 3 4 5 6 7 8 9 --steps 50 --out digits.png
python -m dit_export score --engines engines/tiny-digits --per-class 20 --cfg-scale 4 1 --steps 50
