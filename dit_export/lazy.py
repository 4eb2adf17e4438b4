"""The one way to import a heavy optional library (torch inside the runtime, tensorrt,
cuda-python, onnxruntime-gpu, modelopt): at first use, with a one-line error naming the install.

Our own light modules are imported at module top everywhere; only these stay lazy. The install
words below name the extras of pyproject.toml, run from a clone (`pip install -e '.[EXTRA]'`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dit_export.errors import UserError

TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
EXPORT = "pip install -e '.[export]'"  # the CPU toolchain: torch stack + onnx + ONNX Runtime (CPU)

# import name → (how to install it from a clone, what it is for)
INSTALLS = {
    "torch": (f"{TORCH_CPU} (or the CUDA build from pytorch.org), then {EXPORT}", "the PyTorch reference"),
    "diffusers": (EXPORT, "the VAE and diffusers checkpoints"),
    "safetensors": (EXPORT, "safetensors checkpoints"),
    "huggingface_hub": (EXPORT, "hub downloads"),
    "onnx": (EXPORT, "ONNX export"),
    "onnxscript": (EXPORT, "ONNX export"),
    "polygraphy": (EXPORT, "the TensorRT build"),
    "filelock": ("pip install -e .", "the build lock"),
    "psutil": ("pip install -e .", "memory measurements"),
    "fastjsonschema": ("pip install -e .", "reading manifest.json"),
    "onnxruntime": (
        "pip install -e '.[runtime]' (CPU) or '.[gpu]' (CUDA); never both",
        "the ONNX Runtime backend",
    ),
    "tensorrt": ("pip install -e '.[tensorrt]' (CUDA 13; CUDA 12: pip install tensorrt-cu12)", "TensorRT"),
    "tensorrt_lean_bindings": (
        "pip install tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs",
        "the TensorRT runtime",
    ),
    "cuda": ("pip install -e '.[gpu]' (CUDA 13; CUDA 12: pip install 'cuda-python>=12,<13')", "cuda-python"),
    "sklearn": ("pip install -e '.[score]'", "the digits score"),
    "matplotlib": ("pip install -e '.[plot]'", "plots"),
    "modelopt": ("pip install -e '.[modelopt]'", "ModelOpt"),
    "tritonclient": ("pip install -e '.[serve]'", "the Triton model config (triton-repo)"),
}


def install_hint(name: str) -> str:
    """How to install the package that provides import `name` (its top-level module)."""
    top = (name or "").split(".")[0]
    return INSTALLS.get(top, (f"pip install {top}" if top else EXPORT, top))[0]


def optional_import(name: str, purpose: str | None = None) -> ModuleType:
    """`importlib.import_module(name)`, or a one-line UserError that says what to install."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = (e.name or name).split(".")[0]
        what = INSTALLS.get(top, ("", top))[1]
        raise UserError(
            f"{purpose or what} needs {top!r}, which is not installed: {install_hint(top)}"
        ) from None
