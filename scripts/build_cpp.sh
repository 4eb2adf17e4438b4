#!/usr/bin/env bash
# Configure and build the C++ runtime (cpp/): libdit_runtime.so, dit_sample and the ctest tests.
#
#   bash scripts/build_cpp.sh            # build into cpp/build (incremental: re-running is cheap)
#   bash scripts/build_cpp.sh --test     # ... then run ctest (end-to-end tests need DIT_TEST_REFERENCE)
#
# Needs cmake, a C++17 compiler and the nlohmann-json, zlib, OpenSSL and stb headers
# (nlohmann-json3-dev zlib1g-dev libssl-dev libstb-dev); run as root with apt-get
# available, it installs the missing Debian packages itself. The CPU backend uses the LibTorch
# inside the torch wheel of .venv (or of the active python); without torch it is left out.
# Env: DIT_CPP_BUILD (build folder), DIT_CPP_JOBS (parallel jobs, default 2), DIT_CPP_CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${DIT_CPP_BUILD:-cpp/build}
JOBS=${DIT_CPP_JOBS:-2}

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v c++ >/dev/null || need+=(g++)
[ -f /usr/include/nlohmann/json.hpp ] || need+=(nlohmann-json3-dev)
[ -f /usr/include/zlib.h ] || need+=(zlib1g-dev)
[ -f /usr/include/openssl/evp.h ] || need+=(libssl-dev)                # SHA-256 (OpenSSL EVP)
[ -f /usr/include/stb/stb_image_write.h ] || need+=(libstb-dev)        # PNG writer of the example
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "build_cpp: installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "build_cpp: missing ${need[*]}; install them (Debian/Ubuntu: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=$(command -v python3 || true); fi
fi
args=(-S cpp -B "$BUILD" -DCMAKE_BUILD_TYPE=Release)
[ -n "$PY" ] && args+=("-DPython3_EXECUTABLE=$PY")
if [ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja >/dev/null; then args+=(-G Ninja); fi
# shellcheck disable=SC2206
args+=(${DIT_CPP_CMAKE_ARGS:-})

start=$(date +%s)
mkdir -p "$BUILD"
log="$BUILD/configure.log"
cmake "${args[@]}" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
grep -E "dit_runtime:" "$log" || true
cmake --build "$BUILD" -j "$JOBS"
echo "build_cpp: built $BUILD in $(($(date +%s) - start)) s"
if [ "${1:-}" = "--test" ]; then
  ctest --test-dir "$BUILD" --output-on-failure
fi
