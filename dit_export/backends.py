"""The one backend vocabulary of every command and API (base helper: imports nothing of ours).

`ort | trt | torch | cpp` name the runtime backends; `auto` (where a command offers it) picks
TensorRT when it works, else ONNX Runtime. The long names are accepted everywhere as aliases.
"""

from __future__ import annotations

import os

from dit_export.errors import UserError

BACKENDS = ("ort", "trt", "torch", "cpp")
ALIASES = {"onnxruntime": "ort", "tensorrt": "trt", "pytorch": "torch", "c++": "cpp"}
LONG_NAMES = {"ort": "onnxruntime", "trt": "tensorrt", "torch": "torch", "cpp": "cpp"}


def canonical_backend(name: str, *, allow_auto: bool = False, allowed: tuple[str, ...] = BACKENDS) -> str:
    """`ort`, `trt`, `torch`, `cpp` (or `auto`) for any accepted word; one-line error otherwise."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key == "auto" and allow_auto:
        return key
    if key not in allowed:
        words = ", ".join((*allowed, "auto") if allow_auto else allowed)
        raise UserError(f"unknown backend {name!r}; choose one of {words}")
    return key


def env_threads() -> int:
    """CPU threads for ONNX Runtime when the caller asks for none: `$OMP_NUM_THREADS` when set
    (the limit torch and the C++ runtime already obey, so one setting caps every library of a
    process), else 0: the library's default of one thread per core."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0
