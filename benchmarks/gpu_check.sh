#!/usr/bin/env bash
# The device check (issues 14, 25): one run on one H100/H200, within TOTAL_S seconds (default 540:
# one device command may run 10 minutes). Needs torch (CUDA), numpy and this package with its
# export dependencies (onnx, onnxscript, safetensors: all in the device image). No diffusers (the
# VAE is `none`: every --vae random-* is a diffusers AutoencoderKL), no polygraphy, no TensorRT
# (used where `trt_api.probe()` finds it; else its phases are recorded as skipped with the reason).
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # CPU: every phase with tiny-digits, 2 steps, no compile
#
# Phases, in order, each under its own cap in seconds (the variable named) and never past TOTAL_S
# (a phase that would start with under 10 s left is recorded as skipped):
#   tests        (TESTS_S=90)   the `gpu`-marked tests with DIT_EXPORT_EXPECT_GPU=cuda (=1 where TensorRT
#                               works): a skip that names CUDA or a GPU (and there TensorRT) FAILS.
#   exports      (EXPORTS_S=240) every folder later phases use, made once, EXPORT_JOBS (3) at a time, in
#                               order: S/2 fp32 at batch 1 8 32 (+ fp16 at 1 8 where TensorRT works), then
#                               XL/2 at 8 1 32 the same; a folder starts only while the budget left covers
#                               its estimate (XL/2: 190 s, one measured 182 s), so XL/2 only if time remains.
#   bench-<M>    (BENCH_S=100)  per model, at its exported batches: torch fp32 / TF32 / fp16 autocast:
#                               forward, step, 50-step sample, TFLOP/s, % of the GPU's dense peak.
#   bench-<M>-compile (BENCH_S) the same for torch.compile (beside torch-fp32, measured again).
#   aoti         (AOTI_S=60)    the DiT forward through AOTInductor for CUDA at batch 8 against eager.
# Where TensorRT works (TOTAL_S default 1500 there):
#   trt-plans    (TRT_PLANS_S=300) fp16 plans of S/2 and XL/2 at batch 1 and 8, build time per graph.
#   trt-bench-<M> (TRT_BENCH_S=150) per-step latency, images/s, TFLOP/s and % of the dense fp16 peak,
#                               beside torch-fp32 in the same run.
#   trt-verify-<sampler> (VERIFY_S=120) `verify --backend trt` on S/2 fp16 batch 1, ddpm and dpm++2m.
# Without TensorRT those phases are recorded as skipped with the reason and their commands are
# printed; with --dry-run they then run on ONNX Runtime (ort-fp16, --backend ort) as a stand-in, so
# every command line, folder and result file of the phase is exercised.
#
# Results: OUT_DIR (default benchmarks/results; --dry-run: a temporary folder) gets
# gpu_check_<gpu>_<date>.{md,json,log,phases.json} and each phase's result files, each written as
# its phase ends (temp file + rename): a killed run keeps every finished phase's numbers. Exports
# stay in WORK_DIR (default engines/gpu_check) for a rerun. Exit 1 when a phase failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 DIT_EXPORT_OFFLINE=1 PYTHONUNBUFFERED=1  # random weights: nothing to download
PREP=(python benchmarks/gpu_check_prep.py)

TRT_WHY="$(python -c 'from dit_export.engine import trt_api; ok, why = trt_api.probe(); print("" if ok else why)' 2>&1 | tail -n1)"
if ((DRY)); then  # CPU-sized: the shipped tiny-digits (32 px, depth 4), one batch, 2 steps, no compile
    TOTAL_S="${TOTAL_S:-3000}" TESTS_S="${TESTS_S:-300}" EXPORTS_S="${EXPORTS_S:-300}" BENCH_S="${BENCH_S:-300}"
    AOTI_S="${AOTI_S:-300}" TRT_PLANS_S="${TRT_PLANS_S:-300}" TRT_BENCH_S="${TRT_BENCH_S:-300}" VERIFY_S="${VERIFY_S:-300}"
    OUT="${OUT_DIR:-$(mktemp -d)}"
    GPU="dry-run-cpu"
    MODELS=(tiny-digits) EXPORT_JOBS="${EXPORT_JOBS:-1}"
    MODEL_FLAGS=(--vae none)  # its shipped weights, at its own 32 px
    declare -A FP32_BATCHES=([tiny-digits]=1) TRT_BATCHES=([tiny-digits]=1)
    EAGER=(torch-fp32 torch-fp16) COMPILE=()
    BENCH=(--steps 2 --warmup 1 --repeat 2 --device cpu)
    VERIFY=(--steps 2)
    AOTI_ARGS=(--model tiny-digits --batch 1 --device cpu --no-compile)
else
    if [[ -z "$TRT_WHY" ]]; then TOTAL_S="${TOTAL_S:-1500}"; else TOTAL_S="${TOTAL_S:-540}"; fi
    TESTS_S="${TESTS_S:-90}" EXPORTS_S="${EXPORTS_S:-240}" BENCH_S="${BENCH_S:-100}" AOTI_S="${AOTI_S:-60}"
    TRT_PLANS_S="${TRT_PLANS_S:-300}" TRT_BENCH_S="${TRT_BENCH_S:-150}" VERIFY_S="${VERIFY_S:-120}"
    OUT="${OUT_DIR:-benchmarks/results}"
    GPU="$(python -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo no-gpu)"
    MODELS=(S/2 XL/2) EXPORT_JOBS="${EXPORT_JOBS:-3}"
    MODEL_FLAGS=(--random-weights --vae none --image-size 256)
    declare -A FP32_BATCHES=([S/2]="1,8,32" [XL/2]="8,1,32") TRT_BATCHES=([S/2]="1,8" [XL/2]="1,8")
    EAGER=(torch-fp32 torch-tf32 torch-fp16) COMPILE=(torch-compile)
    BENCH=(--steps 50 --warmup 3 --repeat 10 --max-sample-seconds 20 --device cuda)
    VERIFY=()
    AOTI_ARGS=(--model XL/2 --batch 8 --device cuda)
fi
mkdir -p "$OUT"
WORK="${WORK_DIR:-$( ((DRY)) && echo "$OUT/work" || echo engines/gpu_check)}"
SLUG="$(echo "$GPU" | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//')"
STEM="$OUT/gpu_check_${SLUG}_$(date -u +%Y-%m-%d)"
LOG="$STEM.log"
COMMAND="bash benchmarks/gpu_check.sh$( ((DRY)) && echo ' --dry-run')"
: >"$LOG"
rm -f "$STEM".*.json "$STEM".*.md "$STEM".*.xml
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

skip() {  # skip NAME REASON
    echo "== $1: skipped: $2" | tee -a "$LOG"
    record "$1" "skipped: $2" 0
}

left() { echo $((TOTAL_S - SECONDS - 5)); }  # seconds left of the run's budget (a margin kept)

phase() {  # phase NAME CAP_SECONDS RESULT_FILES(space-separated) COMMAND...
    local name=$1 cap=$2 rfiles=$3 t0=$SECONDS rc result
    shift 3
    if (($(left) < 10)); then skip "$name" "out of the run's ${TOTAL_S} s budget (TOTAL_S)"; return; fi
    ((cap > $(left))) && cap=$(left)
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
    record "$name" "$result" $((SECONDS - t0)) $rfiles
}

python - <<'PY' 2>&1 | tee -a "$LOG"
import importlib, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs")
for m in ("numpy", "onnx", "onnxscript", "safetensors", "onnxruntime", "pytest", "diffusers", "polygraphy"):
    try:
        importlib.import_module(m)
        print(f"{m}: present")
    except Exception as e:  # diffusers and polygraphy are not needed here (polygraphy: TensorRT builds)
        print(f"{m}: absent ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
PY
echo "tensorrt: ${TRT_WHY:-usable}; run budget ${TOTAL_S} s (TOTAL_S)" | tee -a "$LOG"

# ---------------------------------------------------------------------------------------------- tests
if [[ -z "$TRT_WHY" ]]; then EXPECT=1; else EXPECT=cuda; fi
if ! python -c 'import pytest' 2>/dev/null; then
    skip tests "pytest is not installed"
elif ((DRY)); then  # one GPU-marked file, collected only: the selection and the EXPECT_GPU hook load
    phase tests "$TESTS_S" "$STEM.tests.xml" env DIT_EXPORT_EXPECT_GPU=$EXPECT python -m pytest -q -rs -m gpu \
        --collect-only --junitxml="$STEM.tests.xml" tests/sampling/test_noise.py
else  # only the files with gpu-marked tests: others may need what a torch-only machine lacks (diffusers)
    mapfile -t GPU_FILES < <(grep -rl --include='test_*.py' 'mark\.gpu' tests | sort)
    phase tests "$TESTS_S" "$STEM.tests.xml" env DIT_EXPORT_EXPECT_GPU=$EXPECT python -m pytest -q -rs -m gpu \
        --junitxml="$STEM.tests.xml" "${GPU_FILES[@]}"
fi

# -------------------------------------------------------------------------------------------- exports
FOLDERS=()
for m in "${MODELS[@]}"; do
    FOLDERS+=(--folder "$m:fp32:${FP32_BATCHES[$m]}")
    if [[ -z "$TRT_WHY" ]] || ((DRY)); then FOLDERS+=(--folder "$m:fp16:${TRT_BATCHES[$m]}"); fi
done
budget=$(($(left) - 30 < EXPORTS_S ? $(left) - 30 : EXPORTS_S))  # room kept for the phases after it
((budget < 0)) && budget=0
phase exports $((budget + 60)) "$STEM.exports.json" "${PREP[@]}" exports --root "$WORK" \
    --json "$STEM.exports.json" --budget "$budget" --jobs "$EXPORT_JOBS" "${FOLDERS[@]}" "${MODEL_FLAGS[@]}"

slug() { echo "$1" | tr '/' '-'; }
ready() { "${PREP[@]}" ready --json "$STEM.exports.json" --model "$1" --precision "$2" ${3:+--batch "$3"}; }

# ---------------------------------------------------------------------------------------------- bench
for m in "${MODELS[@]}"; do
    read -r -a batches <<<"$(ready "$m" fp32)"
    for kind in eager compile; do
        name="bench-$(slug "$m")$([[ $kind == compile ]] && echo -compile)"
        if [[ $kind == eager ]]; then backends=("${EAGER[@]}"); else backends=("${COMPILE[@]}"); fi
        ((${#backends[@]})) || continue  # --dry-run: no compile
        if ((${#batches[@]} == 0)); then skip "$name" "no $m fp32 export (see the exports phase)"; continue; fi
        phase "$name" "$BENCH_S" "$STEM.$name.json $STEM.$name.md" python -m dit_export bench --model "$m" \
            "${MODEL_FLAGS[@]}" --backends "${backends[@]}" "${BENCH[@]}" --batch "${batches[@]}" --work-dir "$WORK" \
            --stages denoiser step sample --json "$STEM.$name.json" --markdown "$STEM.$name.md"
    done
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
    local bb=$1 vb=$2 sfx=$3 m name batches vfolder sampler plan_folders=()
    if [[ -z $sfx ]]; then  # the plans themselves, timed (bench would build missing ones untimed)
        for m in "${MODELS[@]}"; do plan_folders+=(--folder "$m:fp16:${TRT_BATCHES[$m]}"); done
        go trt-plans "$TRT_PLANS_S" "$STEM.trt-plans.json" "${PREP[@]}" plans --exports "$STEM.exports.json" \
            --json "$STEM.trt-plans.json" "${plan_folders[@]}"
    fi
    for m in "${MODELS[@]}"; do
        read -r -a batches <<<"$(both "$m")"
        name="trt-bench-$(slug "$m")$sfx"
        if ((${#batches[@]} == 0)); then skip "$name" "no $m fp16 + fp32 export (see the exports phase)"; continue; fi
        go "$name" "$TRT_BENCH_S" "$STEM.bench-$name.json" python -m dit_export bench --model "$m" \
            "${MODEL_FLAGS[@]}" --backends "$bb" "${BENCH[@]}" --batch "${batches[@]}" --work-dir "$WORK" \
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
