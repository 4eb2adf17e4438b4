"""The one backend vocabulary of every command and API (base helper: imports nothing of ours).

`ort | trt | torch | cpp` name the runtime backends; `auto` (where a command offers it) follows
the one rule of `runtime.folder` (TensorRT when it works and the folder has plans for this GPU,
else ONNX Runtime). The long names (onnxruntime, tensorrt, pytorch, c++) are accepted wherever
their backend is; each command's --help lists exactly the words it takes (`backend_words`).
"""

from __future__ import annotations

import os

from dit_export.errors import UserError
from dit_export.lazy import optional_import

BACKENDS = ("ort", "trt", "torch", "cpp")
ALIASES = {"onnxruntime": "ort", "tensorrt": "trt", "pytorch": "torch", "c++": "cpp"}
LONG_NAMES = {"ort": "onnxruntime", "trt": "tensorrt", "torch": "torch", "cpp": "cpp"}


def aliases_of(allowed: tuple[str, ...] = BACKENDS) -> list[str]:
    """The long words accepted for `allowed` (onnxruntime for ort, ...), in `ALIASES` order."""
    return [word for word, key in ALIASES.items() if key in allowed]


def backend_words(allowed: tuple[str, ...] = BACKENDS, allow_auto: bool = False) -> str:
    """What a command takes, exactly: `ort, trt or auto (aliases onnxruntime, tensorrt)`."""
    words = [*allowed, "auto"] if allow_auto else list(allowed)
    text = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    aliases = aliases_of(allowed)
    return f"{text} (aliases {', '.join(aliases)})" if aliases else text


def canonical_backend(name: str, *, allow_auto: bool = False, allowed: tuple[str, ...] = BACKENDS) -> str:
    """`ort`, `trt`, `torch`, `cpp` (or `auto`) for any accepted word; one-line error otherwise.

    Every command and API that takes a backend goes through here with the words it can run
    (`allowed`), so the aliases work wherever their backend does; a known backend that the
    command cannot run is told apart from a word that is no backend at all.
    """
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key == "auto" and allow_auto:
        return key
    if key not in allowed:
        words = backend_words(tuple(allowed), allow_auto)
        if key in BACKENDS:
            raise UserError(f"unknown backend {name!r} for this command: it takes {words}")
        raise UserError(f"unknown backend {name!r}; choose one of {words}")
    return key


def default_ort_providers() -> list[str]:
    """ONNX Runtime's providers when none are asked for: CUDA when onnxruntime-gpu provides it,
    else CPU (the TensorRT execution provider only when asked for)."""
    have = optional_import("onnxruntime").get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) + ["CPUExecutionProvider"]


def env_threads() -> int:
    """CPU threads for ONNX Runtime when the caller asks for none: `$OMP_NUM_THREADS` when set
    (the limit torch and the C++ runtime already obey, so one setting caps every library of a
    process), else 0: the library's default of one thread per core."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0
