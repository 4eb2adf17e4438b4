#!/usr/bin/env bash
# The standard GPU table: DiT-XL/2 @256 at batch 1, 8 and 32, 50 DDPM steps + VAE decode.
#
# Runs the PyTorch baselines (fp32 with TF32 off, TF32 as the official sample.py, fp16 autocast,
# torch.compile) and whatever else the machine has: ONNX Runtime (onnxruntime-gpu for CUDA) and
# TensorRT (tensorrt + cuda-python); those it lacks are listed as skipped with the reason.
# Random weights by default (latency does not depend on the values) and a random VAE with the
# real SD architecture, so nothing is downloaded. Exports and engines are kept under
# engines/bench (reused by later runs; an XL/2 export needs about 8 GB of RAM).
#
#   benchmarks/bench_gpu.sh                      # random weights
#   CKPT=DiT-XL-2-256x256.pt VAE=mse benchmarks/bench_gpu.sh
#   BACKENDS="torch-fp32 torch-tf32 torch-fp16" benchmarks/bench_gpu.sh --repeat 50
#
# Writes benchmarks/results/bench_gpu_<gpu>_<date>.{json,md,png}; extra arguments go to `bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bench_gpu.sh: no nvidia-smi: this script is for a machine with an NVIDIA GPU" >&2
    exit 2
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
date=$(date +%Y-%m-%d)
out="benchmarks/results/bench_gpu_${gpu}_${date}"
backends=${BACKENDS:-"torch-fp32 torch-tf32 torch-fp16 torch-compile ort ort-fp16 trt"}

if [[ -n "${CKPT:-}" ]]; then
    weights=(--ckpt "$CKPT")
    vae=${VAE:-mse}
else
    weights=(--random-weights)
    vae=${VAE:-random-sd}
fi

# shellcheck disable=SC2086  # $backends is a word list on purpose
python -m dit_export bench --model XL/2 "${weights[@]}" --vae "$vae" \
    --backends $backends \
    --batch 1 8 32 --steps 50 --warmup 5 --repeat 20 \
    --work-dir engines/bench \
    --json "$out.json" --markdown "$out.md" --plot "$out.png" "$@"
