#!/usr/bin/env bash
# Serve an engines folder through a real tritonserver on 127.0.0.1 and check it end to end.
#
#   bash scripts/triton_smoke.sh ENGINES_DIR        e.g. a tiny-digits folder built with --backend ort
#   bash scripts/triton_smoke.sh --setup            only create the server's environment (.venv-triton)
#
# The server is the `tritonserver` binary shipped in the nvidia-pytriton wheel (Python backend only,
# all the sampler model needs). Its Python-backend stub runs the first `python` on PATH and needs
# numpy < 2 (with numpy >= 2 every tensor arrives empty), so the server gets its own environment,
# $TRITON_VENV (default .venv-triton, git-ignored): nvidia-pytriton (tritonserver, tritonclient),
# numpy < 2, dit_export's runtime dependencies + onnxruntime (no torch), and dit_export itself from
# this checkout through a .pth file. The stub also needs the wheel's bundled libraries
# (nvidia_pytriton.libs) on LD_LIBRARY_PATH and the stub binary for this Python in
# backends/python/ (what pytriton's own launcher does in its workspace).
#
# Steps: triton-repo → tritonserver (timeout-bounded, stops by itself) → ready (bounded) → two
# concurrent requests compared with `dit_export sample --backend ort` → bad input (class 99,
# steps 0) must come back as error responses → stop. The last line says `ok` or the failure.
# Env: TRITON_VENV, TRITON_SMOKE_STEPS (default 10), TRITON_SMOKE_LIMIT (server lifetime, 600 s).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
V=${TRITON_VENV:-$ROOT/.venv-triton}
STEPS=${TRITON_SMOKE_STEPS:-10}
LIMIT=${TRITON_SMOKE_LIMIT:-600}
# No OMP_NUM_THREADS here: the model's ONNX Runtime threads come from its config (triton-repo).

fail() { echo "triton smoke FAILED: $*"; exit 1; }

setup_venv() {
    local py=${TRITON_PYTHON:-python3}
    if [[ ! -x "$V/bin/python" ]]; then
        echo "creating $V (python: $($py --version 2>&1)) ..."
        "$py" -m venv "$V"
        echo '*' >"$V/.gitignore"   # never committed, whatever the checkout's .gitignore says
        "$V/bin/python" -m pip install -q --upgrade pip
    fi
    # dit_export's core + runtime dependencies from pyproject.toml, with numpy pinned below 2; run on
    # every setup/smoke so that an environment made before a new dependency catches up (a no-op else).
    mapfile -t deps < <("$V/bin/python" - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
for d in p["dependencies"] + p["optional-dependencies"]["runtime"]:
    if not d.startswith("numpy"):
        print(d)
PY
)
    "$V/bin/python" -m pip install -q "numpy<2" nvidia-pytriton "${deps[@]}"
    local sp
    sp=$("$V/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$ROOT" >"$sp/dit_export_checkout.pth"   # dit_export from this checkout, no build, no egg-info
}

if [[ "${1:-}" == "--setup" ]]; then
    setup_venv
    echo "triton env ready: $V"
    exit 0
fi
[[ $# -eq 1 ]] || { echo "usage: $0 ENGINES_DIR | --setup" >&2; exit 2; }
[[ -f "$1/manifest.json" ]] || fail "$1 is not an engines folder (no manifest.json)"
ENGINES=$(cd "$1" && pwd)
setup_venv
PY=$V/bin/python

SP=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
TS=$SP/pytriton/tritonserver
LIBS=$SP/nvidia_pytriton.libs
[[ -x "$TS/bin/tritonserver" ]] || fail "no tritonserver in $TS (is nvidia-pytriton installed in $V?)"
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
STUB=$TS/backends/python/triton_python_backend_stub
if [[ ! -x "$STUB" ]]; then
    [[ -x "$TS/python_backend_stubs/$PYVER/triton_python_backend_stub" ]] ||
        fail "nvidia-pytriton has no Python-backend stub for Python $PYVER"
    cp "$TS/python_backend_stubs/$PYVER/triton_python_backend_stub" "$STUB"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/triton_smoke.XXXXXX")
SERVER=""
cleanup() {
    if [[ -n "$SERVER" ]] && kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM "$SERVER" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

t0=$(date +%s)
# `python -m dit_export triton-repo` once the command is registered; the module itself until then.
REPO_CMD=(-m dit_export triton-repo)
"$PY" -m dit_export triton-repo --help >/dev/null 2>&1 || REPO_CMD=(-m dit_export.cli.triton_repo)
"$PY" "${REPO_CMD[@]}" --engines "$ENGINES" --out "$WORK/repo" \
    --queue-delay-us 200000 || fail "triton-repo"  # fill delay 0.2 s: the two requests share one engine run
read -r HTTP GRPC < <("$PY" - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
)
# The stub runs the first python on PATH: this environment's.
PATH="$V/bin:$PATH" LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    timeout -k 10 "$LIMIT" "$TS/bin/tritonserver" \
    --model-repository "$WORK/repo" \
    --backend-directory "$TS/backends" --cache-directory "$TS/caches" \
    --http-address 127.0.0.1 --http-port "$HTTP" \
    --grpc-address 127.0.0.1 --grpc-port "$GRPC" \
    --allow-metrics false --exit-timeout-secs 10 --strict-readiness true \
    >"$WORK/server.log" 2>&1 &
SERVER=$!
echo "tritonserver pid $SERVER on 127.0.0.1:$HTTP (http) / $GRPC (grpc), log $WORK/server.log"

if ! "$PY" "$ROOT/scripts/triton_client.py" --url "127.0.0.1:$HTTP" smoke \
    --engines "$ENGINES" --steps "$STEPS" --ready-timeout 180 --server-pid "$SERVER"; then
    echo "---- server log (last 30 lines)"
    tail -n 30 "$WORK/server.log" || true
    fail "client checks (see above)"
fi
grep -q "Started HTTPService" "$WORK/server.log" || echo "(note: no HTTPService line in the log)"
kill -TERM "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=""
echo "triton smoke ok: a real tritonserver served $(basename "$ENGINES") ($STEPS steps) in $(($(date +%s) - t0)) s"
