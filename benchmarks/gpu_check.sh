#!/usr/bin/env bash
# The device check (issues 14, 25): one run on one H100/H200. Needs torch (CUDA), numpy and this
# package with its export dependencies (onnx, onnxscript, safetensors; all in the device image):
# no diffusers (the VAE is `none`: --vae random-* builds a diffusers AutoencoderKL), no TensorRT
# (used when `trt_api.probe()` finds it, else its phase says why it is skipped).
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # CPU: every phase with S/8 and tiny budgets
#
# Phases, in order, each under its own time cap in seconds (overridable by the variable named):
#   tests       (TESTS_S=100)  the `gpu`-marked tests with DIT_EXPORT_EXPECT_GPU=cuda (=1 where TensorRT
#                              works): a skip that names CUDA or a GPU (and TensorRT there) FAILS.
#   exports     (EXPORTS_S=240) every folder the later phases use, made once, in this order: S/2 fp32
#                              at batch 1 8 32 (and fp16 at 1 8 with TensorRT), then XL/2 the same, each
#                              started only while the budget has time for it (XL/2: about 190 s each,
#                              measured 182 s; benchmarks/gpu_check_prep.py). With --jobs EXPORT_JOBS.
#   bench-<M>   (BENCH_S=200)  per model with exports: torch fp32 / TF32 / fp16 autocast / compile at the
#                              exported batches: forward, step, 50-step sample, TFLOP/s, % of peak.
#   aoti        (AOTI_S=90)    the DiT forward through AOTInductor for CUDA at batch 8 against eager.
#   trt-plans   (TRT_PLANS_S=300) TensorRT only: fp16 plans of S/2 and XL/2 at batch 1 and 8, build time.
#   trt-bench-<M> (TRT_BENCH_S=150) TensorRT only: per-step latency, images/s, TFLOP/s and % of the
#                              GPU's dense fp16 peak, beside torch-fp32 measured in the same run.
#   trt-verify-<sampler> (VERIFY_S=120) `verify --backend trt` on S/2 fp16 b1 for ddpm and dpm++2m.
# Without TensorRT the trt-* phases are recorded as skipped with the reason and their commands are
# printed; with --dry-run they then run on ONNX Runtime (ort-fp16, --backend ort) as a stand-in,
# so every command line, folder and result file of the phase is exercised.
#
# Results: OUT_DIR (default benchmarks/results; --dry-run: a temporary folder) gets
# gpu_check_<gpu>_<date>.{md,json,log,phases.json} and one result file per phase, each written when
# its phase ends (temp file + rename): a killed run keeps every finished phase's numbers. A phase
# that runs out of time is recorded as "timed out" and the next one starts. Exit 1 when a phase
# failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 DIT_EXPORT_OFFLINE=1 PYTHONUNBUFFERED=1  # random weights: nothing to download
PREP=(python benchmarks/gpu_check_prep.py)

TRT_WHY="$(python -c 'from dit_export.engine import trt_api; ok, why = trt_api.probe(); print("" if ok else why)' 2>&1 | tail -n1)"
if ((DRY)); then  # CPU-sized: S/8, one batch, 2 steps, no compile
    TESTS_S="${TESTS_S:-300}" EXPORTS_S="${EXPORTS_S:-300}" BENCH_S="${BENCH_S:-300}" AOTI_S="${AOTI_S:-300}"
    TRT_PLANS_S="${TRT_PLANS_S:-300}" TRT_BENCH_S="${TRT_BENCH_S:-300}" VERIFY_S="${VERIFY_S:-300}"
    OUT="${OUT_DIR:-$(mktemp -d)}"
    GPU="dry-run-cpu"
    MODELS=(S/8) FP32_BATCHES=1 TRT_BATCHES=1 EXPORT_JOBS="${EXPORT_JOBS:-1}"
    BENCH=(--backends torch-fp32 torch-fp16 --steps 2 --warmup 1 --repeat 2 --device cpu)
    TRT_BENCH=(--steps 2 --warmup 1 --repeat 2 --device cpu)
    VERIFY=(--steps 2)
    AOTI_ARGS=(--model S/8 --batch 1 --device cpu --no-compile)
else
    TESTS_S="${TESTS_S:-100}" EXPORTS_S="${EXPORTS_S:-240}" BENCH_S="${BENCH_S:-200}" AOTI_S="${AOTI_S:-90}"
    TRT_PLANS_S="${TRT_PLANS_S:-300}" TRT_BENCH_S="${TRT_BENCH_S:-150}" VERIFY_S="${VERIFY_S:-120}"
    OUT="${OUT_DIR:-benchmarks/results}"
    GPU="$(python -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo no-gpu)"
    MODELS=(S/2 XL/2) FP32_BATCHES=1,8,32 TRT_BATCHES=1,8 EXPORT_JOBS="${EXPORT_JOBS:-3}"
    BENCH=(--backends torch-fp32 torch-tf32 torch-fp16 torch-compile --steps 50 --warmup 3 --repeat 10
        --max-sample-seconds 20 --device cuda)
    TRT_BENCH=(--steps 50 --warmup 3 --repeat 10 --max-sample-seconds 20 --device cuda)
    VERIFY=()
    AOTI_ARGS=(--model XL/2 --batch 8 --device cuda)
fi
MODEL_FLAGS=(--random-weights --vae none --image-size 256)
mkdir -p "$OUT"
WORK="${WORK_DIR:-$( ((DRY)) && echo "$OUT/work" || echo engines/gpu_check)}"  # export folders (kept: a rerun reuses them)
SLUG="$(echo "$GPU" | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//')"
STEM="$OUT/gpu_check_${SLUG}_$(date -u +%Y-%m-%d)"
LOG="$STEM.log"
COMMAND="bash benchmarks/gpu_check.sh$( ((DRY)) && echo ' --dry-run')"
: >"$LOG"
rm -f "$STEM".*.json "$STEM".*.md "$STEM".*.xml "$STEM".*.txt
FAILED=0

summary() { "${PREP[@]}" summary --stem "$STEM" --gpu "$GPU" --command "$COMMAND" >>"$LOG" 2>&1; }

record() {  # record NAME RESULT SECONDS FILE...: the phase's entry, then the summary, on disk now
    local name=$1 result=$2 secs=$3 files=()
    shift 3
    for f in "$@"; do files+=(--file "$f"); done
    "${PREP[@]}" phase --stem "$STEM" --name "$name" --result "$result" --seconds "$secs" "${files[@]}"
    summary
    echo "== $name: $result in $secs s" | tee -a "$LOG"
}

phase() {  # phase NAME CAP_SECONDS RESULT_FILES(space-separated) COMMAND...
    local name=$1 cap=$2 files=$3 t0=$SECONDS rc result
    shift 3
    echo "== $name (cap ${cap}s): $*" | tee -a "$LOG"
    timeout --signal=INT --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) result="passed" ;;
        124 | 130 | 137) result="timed out after ${cap}s" ;;
        *) result="failed (exit $rc)" ;;
    esac
    [[ $result == passed ]] || FAILED=1
    # shellcheck disable=SC2086  # the file list is space-separated on purpose
    record "$name" "$result" $((SECONDS - t0)) $files
}

skip() {  # skip NAME REASON
    echo "== $1: skipped: $2" | tee -a "$LOG"
    record "$1" "skipped: $2" 0
}

python - <<'PY' 2>&1 | tee -a "$LOG"
import importlib.util, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs")
for m in ("numpy", "onnx", "onnxscript", "safetensors", "onnxruntime", "diffusers", "pytest"):
    print(f"{m}: {'present' if importlib.util.find_spec(m) else 'absent'}")
PY
echo "tensorrt: ${TRT_WHY:-usable}" | tee -a "$LOG"

# ---------------------------------------------------------------------------------------------- tests
if [[ -z "$TRT_WHY" ]]; then EXPECT=1; else EXPECT=cuda; fi
if ! python -c 'import pytest' 2>/dev/null; then
    skip tests "pytest is not installed"
elif ((DRY)); then  # one GPU-marked file, collected only: the selection and the EXPECT_GPU hook load
    phase tests "$TESTS_S" "$STEM.tests.xml" env DIT_EXPORT_EXPECT_GPU=$EXPECT python -m pytest -q -rs -m gpu \
        --collect-only --junitxml="$STEM.tests.xml" tests/sampling/test_noise.py
else
    phase tests "$TESTS_S" "$STEM.tests.xml" env DIT_EXPORT_EXPECT_GPU=$EXPECT python -m pytest -q -rs -m gpu \
        --junitxml="$STEM.tests.xml" tests
fi

# -------------------------------------------------------------------------------------------- exports
FOLDERS=()
for m in "${MODELS[@]}"; do
    FOLDERS+=(--folder "$m:fp32:$FP32_BATCHES")
    if [[ -z "$TRT_WHY" ]] || ((DRY)); then FOLDERS+=(--folder "$m:fp16:$TRT_BATCHES"); fi
done
phase exports $((EXPORTS_S + 60)) "$STEM.exports.json" "${PREP[@]}" exports --root "$WORK" \
    --json "$STEM.exports.json" --budget "$EXPORTS_S" --jobs "$EXPORT_JOBS" "${FOLDERS[@]}"

slug() { echo "$1" | tr '/' '-'; }
ready() { "${PREP[@]}" ready --json "$STEM.exports.json" --model "$1" --precision "$2" ${3:+--batch "$3"}; }

# ---------------------------------------------------------------------------------------------- bench
for m in "${MODELS[@]}"; do
    read -r -a batches <<<"$(ready "$m" fp32)"
    name="bench-$(slug "$m")"
    if ((${#batches[@]} == 0)); then skip "$name" "no $m fp32 export (see the exports phase)"; continue; fi
    phase "$name" "$BENCH_S" "$STEM.$name.json $STEM.$name.md" python -m dit_export bench --model "$m" \
        "${MODEL_FLAGS[@]}" "${BENCH[@]}" --batch "${batches[@]}" --work-dir "$WORK" --stages denoiser step sample \
        --json "$STEM.$name.json" --markdown "$STEM.$name.md"
done

# ----------------------------------------------------------------------------------------------- aoti
phase aoti "$AOTI_S" "$STEM.aoti.json" python benchmarks/aoti_cuda.py "${AOTI_ARGS[@]}" --json "$STEM.aoti.json"

# ------------------------------------------------------------------------------------------- TensorRT
both() {  # the batches of a model exported in fp16 (the plans) and fp32 (bench's torch-fp32 baseline)
    comm -12 <(ready "$1" fp16 | tr ' ' '\n' | sort) <(ready "$1" fp32 | tr ' ' '\n' | sort) | sort -n | tr '\n' ' '
}
go() {  # go NAME CAP FILES COMMAND...: run it as a phase, or (MODE=print) print it and record the skip
    if [[ $MODE == run ]]; then phase "$@"; else echo "   ${*:4}" | tee -a "$LOG"; skip "$1" "$TRT_WHY"; fi
}
trt_phases() {  # BACKEND (bench) VBACKEND (verify) SUFFIX (of the phase names)
    local bb=$1 vb=$2 sfx=$3 m name batches vfolder sampler
    if [[ -z $sfx ]]; then  # the plans themselves (bench would build missing ones, untimed apart)
        go trt-plans "$TRT_PLANS_S" "$STEM.trt-plans.json" "${PREP[@]}" plans --exports "$STEM.exports.json" \
            --json "$STEM.trt-plans.json" "${PLAN_FOLDERS[@]}"
    fi
    for m in "${MODELS[@]}"; do
        read -r -a batches <<<"$(both "$m")"
        name="trt-bench-$(slug "$m")$sfx"
        if ((${#batches[@]} == 0)); then skip "$name" "no $m fp16 + fp32 export (see the exports phase)"; continue; fi
        go "$name" "$TRT_BENCH_S" "$STEM.bench-$name.json" python -m dit_export bench --model "$m" \
            "${MODEL_FLAGS[@]}" "${TRT_BENCH[@]}" --backends "$bb" --batch "${batches[@]}" --work-dir "$WORK" \
            --stages step sample --json "$STEM.bench-$name.json"
    done
    vfolder="$(ready "${MODELS[0]}" fp16 1)"
    for sampler in ddpm dpm++2m; do
        name="trt-verify-$sampler$sfx"
        if [[ -z "$vfolder" ]]; then skip "$name" "no ${MODELS[0]} fp16 batch-1 export"; continue; fi
        go "$name" "$VERIFY_S" "$STEM.verify-$name.json" python -m dit_export verify --engines "$vfolder" \
            --backend "$vb" --sampler "$sampler" "${VERIFY[@]}" --no-progress --json "$STEM.verify-$name.json"
    done
}
PLAN_FOLDERS=()
for m in "${MODELS[@]}"; do PLAN_FOLDERS+=(--folder "$m:fp16:$TRT_BATCHES"); done
if [[ -z "$TRT_WHY" ]]; then
    MODE=run trt_phases trt trt ""
else
    echo "== TensorRT phases: skipped ($TRT_WHY); where TensorRT works they run:" | tee -a "$LOG"
    MODE=print trt_phases trt trt ""
    if ((DRY)); then  # the same commands on ONNX Runtime: every folder, flag and result file exercised
        MODE=run trt_phases ort-fp16 ort -standin-ort
    fi
fi

summary
echo "wrote $STEM.md (+ .json .log .phases.json and each phase's files) in $SECONDS s" | tee -a "$LOG"
exit $FAILED
