#!/usr/bin/env bash
# The device check (issue 14): one run, at most 8 minutes on one H100/H200 with torch preinstalled
# and no TensorRT. Writes benchmarks/results/gpu_check_<gpu>_<date>.{md,json,log} + the bench files.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # CPU: the same plumbing with S/8, 2 steps, no compile
#
# Phases, each under its own time cap (seconds, overridable):
#   1. tests  (TESTS_S=100): the `gpu`-marked tests with DIT_EXPORT_EXPECT_GPU=cuda: a skip that
#      names CUDA or a GPU FAILS (the GPU must be used); TensorRT tests may skip (no TensorRT here).
#   2. bench  (BENCH_S=270): `python -m dit_export bench`, XL/2 random weights, torch-fp32,
#      torch-tf32, torch-fp16 (autocast), torch-compile at batch 1, 8, 32: one guided forward and a
#      50-step sample (measured when short, else estimated from step + VAE), TFLOP/s, % of peak.
#   3. aoti   (AOTI_S=90): the DiT forward compiled with AOTInductor for CUDA at batch 8, against
#      eager fp32 on the same inputs (latency, max |Δ|): the C++ runtime's GPU lane without TensorRT.
# A phase that runs out of time is recorded as "timed out" and the next one starts.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 DIT_EXPORT_OFFLINE=1   # random weights only: nothing to download
if ((DRY)); then  # CPU-sized caps: a loaded 2-core machine, exports included
    TESTS_S="${TESTS_S:-300}" BENCH_S="${BENCH_S:-600}" AOTI_S="${AOTI_S:-300}"
else
    TESTS_S="${TESTS_S:-100}" BENCH_S="${BENCH_S:-270}" AOTI_S="${AOTI_S:-90}"
fi

if ((DRY)); then
    OUT="${OUT_DIR:-$(mktemp -d)}"
    GPU="dry-run-cpu"
    MODEL=(--model S/8 --random-weights --vae random-tiny)
    BENCH=(--backends torch-fp32 torch-fp16 --batch 1 --steps 2 --warmup 1 --repeat 2 --device cpu)
    AOTI_ARGS=(--model S/8 --batch 1 --device cpu --no-compile)
else
    OUT="${OUT_DIR:-benchmarks/results}"
    GPU="$(python -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo no-gpu)"
    MODEL=(--model XL/2 --random-weights --vae random-sd --image-size 256)
    BENCH=(--backends torch-fp32 torch-tf32 torch-fp16 torch-compile --batch 1 8 32 --steps 50
        --warmup 3 --repeat 10 --max-sample-seconds 20 --device cuda)
    AOTI_ARGS=(--model XL/2 --batch 8 --device cuda)
fi
mkdir -p "$OUT"
SLUG="$(echo "$GPU" | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//')"
STEM="$OUT/gpu_check_${SLUG}_$(date -u +%Y-%m-%d)"
LOG="$STEM.log"
: >"$LOG"
declare -A RESULT SECONDS_OF

phase() {  # phase NAME CAP_SECONDS COMMAND...
    local name=$1 cap=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (cap ${cap}s): $*" | tee -a "$LOG"
    timeout --signal=INT --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    SECONDS_OF[$name]=$((SECONDS - t0))
    case $rc in
        0) RESULT[$name]="passed" ;;
        124 | 130 | 137) RESULT[$name]="timed out after ${cap}s" ;;
        *) RESULT[$name]="failed (exit $rc)" ;;
    esac
    echo "== $name: ${RESULT[$name]} in ${SECONDS_OF[$name]} s" | tee -a "$LOG"
}

python - <<'PY' 2>&1 | tee -a "$LOG"
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs")
try:
    import tensorrt

    print(f"tensorrt: {getattr(tensorrt, '__version__', 'importable, no version')}")
except ImportError:
    print("tensorrt: absent (TensorRT tests and trt backends skip; expected on this machine)")
PY

if ((DRY)); then  # one GPU-marked file, collected only: the selection and the EXPECT_GPU hook load
    phase tests "$TESTS_S" env DIT_EXPORT_EXPECT_GPU=cuda python -m pytest -q -rs -m gpu --collect-only \
        tests/test_noise.py
else
    phase tests "$TESTS_S" env DIT_EXPORT_EXPECT_GPU=cuda python -m pytest -q -rs -m gpu \
        --junitxml="$STEM.tests.xml" tests
fi
phase bench "$BENCH_S" python -m dit_export bench "${MODEL[@]}" "${BENCH[@]}" \
    --stages denoiser step sample --json "$STEM.bench.json" --markdown "$STEM.bench.md"
phase aoti "$AOTI_S" python benchmarks/aoti_cuda.py "${AOTI_ARGS[@]}" --json "$STEM.aoti.json"

{
    echo "# GPU check: $GPU ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Command: \`bash benchmarks/gpu_check.sh$( ((DRY)) && echo ' --dry-run')\`; log: \`$(basename "$LOG")\`."
    echo
    echo "| phase | result | seconds |"
    echo "|---|---|---|"
    for p in tests bench aoti; do echo "| $p | ${RESULT[$p]:-not run} | ${SECONDS_OF[$p]:-} |"; done
    echo
    [[ -f "$STEM.bench.md" ]] && cat "$STEM.bench.md"
    [[ -f "$STEM.aoti.json" ]] && { echo; echo '## AOTInductor (CUDA)'; echo; echo '```'; cat "$STEM.aoti.json"; echo '```'; }
} >"$STEM.md"
python - "$STEM.json" "$GPU" "${RESULT[tests]:-}" "${RESULT[bench]:-}" "${RESULT[aoti]:-}" <<'PY'
import json, sys
path, gpu, *results = sys.argv[1:]
json.dump({"gpu": gpu, "phases": dict(zip(("tests", "bench", "aoti"), results))}, open(path, "w"), indent=1)
PY
echo "wrote $STEM.md (+ .json .log and the bench/aoti files) in $SECONDS s"
for p in tests bench aoti; do [[ "${RESULT[$p]:-}" == passed ]] || exit 1; done
