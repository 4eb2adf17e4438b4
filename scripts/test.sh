#!/usr/bin/env bash
# The README's test command (.ci/run calls it on a clean clone): a virtual environment with the
# CPU torch wheel, the test extras, the TensorRT 11 lean runtime module for the name checks, then
# ruff and the test suite (skip reasons shown), one worker per core. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
make_venv
install_cpu_torch
# .[test] brings the TensorRT 11 lean runtime wheels (tensorrt-lean-cu13-bindings/-libs, ~45 MB,
# CPU-installable): the runtime names our TensorRT code uses are checked against the real module.
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"   # 10.x API types for mypy
# tritonclient for the Triton config tests (--no-deps: it pins ml-dtypes<=0.5.4, onnx wants 0.6; only
# model_config_pb2 + protobuf are used), and the tritonserver stub's own environment (.venv-triton,
# ~2 min) for tests/serve/test_triton.py's smoke run; those tests skip with a reason when it is absent.
python -m pip install -q --no-deps "tritonclient>=2.40"
# The C++ runtime (cpp/build: libdit_runtime.so, dit_sample, the ctest tests) compiles on the cores
# while the Triton environment's pip install waits on the registry; tests/runtime/test_cpp.py's own
# build is then a no-op. A failed build is left for that test to show (it runs the build again).
cpp_log="$(mktemp)"
bash scripts/build_cpp.sh >"$cpp_log" 2>&1 &
cpp_build=$!
bash scripts/triton_smoke.sh --setup || echo "warning: Triton setup failed; tests/serve/test_triton.py will skip" >&2
if wait "$cpp_build"; then tail -n 1 "$cpp_log"; else echo "warning: the C++ build failed; tests/runtime/test_cpp.py shows why" >&2; fi
rm -f "$cpp_log"
ruff check dit_export tests scripts benchmarks
# A GPU + TensorRT machine: the TensorRT folders (one S/8 per precision) and the Python runtime's
# reference images that ctest's test_tensorrt runs on (scripts/trt_test_engines.py, ~1-2 min),
# and DIT_EXPORT_EXPECT_GPU=1 (a skip that names TensorRT, CUDA or a GPU fails). Without
# nvidia-smi nothing happens here; with a GPU but no usable TensorRT, one line says why.
if command -v nvidia-smi >/dev/null 2>&1; then
    trt_engines=$(python scripts/trt_test_engines.py --out "${DIT_TRT_TEST_DIR:-engines/trt_test}")
    if [[ -n "$trt_engines" ]]; then
        export DIT_TEST_TRT_ENGINES="$trt_engines" DIT_EXPORT_EXPECT_GPU="${DIT_EXPORT_EXPECT_GPU:-1}"
    fi
fi
# One pytest-xdist worker per core (at most 4; each worker and its processes use one CPU thread,
# tests/conftest.py), whole files per worker so each module's exported folders are made once.
workers=$(python -c "import os; print(min(4, len(os.sched_getaffinity(0))))")
python -m pytest -q -rs -n "$workers" --dist loadfile "$@"
