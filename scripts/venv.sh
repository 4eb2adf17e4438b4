# Sourced by scripts/test.sh and scripts/demo.sh: make and activate .venv, install a CPU torch.
#
# PyPI's `torch` is the multi-GB CUDA build on Linux (cudnn, cublas, nccl, triton...), pinned or
# not; the CPU build comes from PyTorch's own wheel index. We try that index first, failing fast
# (--timeout 10 --retries 0) where it is unreachable, e.g. on a CI machine that reaches only PyPI
# and its own wheel mirror. There we fall back to the plain PyPI pin, but only after a dry-run
# resolution shows it yields a CPU build (a local `+cpu` wheel, no nvidia-* packages): never a
# silent multi-GB CUDA download.

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

make_venv() {
    python3 -m venv .venv
    . .venv/bin/activate
    python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
}

install_cpu_torch() {
    if python -c 'import torch' 2>/dev/null; then
        return 0  # a torch is already there (CPU, or a CUDA build installed on purpose): keep it
    fi
    if python -m pip install -q --timeout 10 --retries 0 --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION"; then
        return 0
    fi
    echo "PyTorch's CPU index is unreachable; checking what the plain pin torch==$TORCH_VERSION resolves to" >&2
    local report
    report="$(mktemp)"
    python -m pip install -q --dry-run --ignore-installed --report "$report" "torch==$TORCH_VERSION"
    if ! python - "$report" <<'PY'
import json, sys
names = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.load(open(sys.argv[1]))["install"]]
cuda = [n for n, _ in names if n.startswith(("nvidia-", "triton"))]
torch = [v for n, v in names if n == "torch"]
if cuda or not torch:
    sys.exit(f"refusing: torch {torch} from PyPI would pull the CUDA build ({', '.join(cuda[:4])}, ...); "
             "install a CPU torch by hand: pip install torch --index-url https://download.pytorch.org/whl/cpu")
print(f"torch {torch[0]} resolves to a CPU build here")
PY
    then
        rm -f "$report"
        return 1
    fi
    rm -f "$report"
    python -m pip install -q "torch==$TORCH_VERSION"
}
