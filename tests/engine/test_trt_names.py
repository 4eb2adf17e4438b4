"""Every TensorRT runtime attribute our code uses exists in the REAL TensorRT 11 lean runtime, per class.

The lean runtime wheels (`tensorrt-lean-cu13-bindings` + `tensorrt-lean-cu13-libs`, ~45 MB,
module `tensorrt_lean_bindings`) import on a CPU-only machine, so CI checks our TensorRT-facing
files against the real classes by import instead of reading names from strings: the uses are
collected from the source with `ast` (chains rooted at the tensorrt alias, names annotated with a
TensorRT class, values returned by TensorRT methods as the lean signatures declare them, methods
of TensorRT subclasses). Builder-side names (classes the lean runtime does not have) are checked
against the committed 11.x full-bindings name list, as tests/engine/test_trt_api.py does with the 10.x stubs.
"""

from __future__ import annotations

import importlib
import importlib.util
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_trt_names", ROOT / "scripts" / "check_trt_names.py")
assert _spec and _spec.loader
ctn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ctn)

try:
    lean = importlib.import_module(ctn.LEAN_MODULE)
except ImportError:  # the runtime libs missing make the import fail too (OSError is an ImportError here)
    lean = None
pytestmark = pytest.mark.skipif(
    lean is None,
    reason="cpu-only: the TensorRT 11 lean runtime is not installed "
    "(pip install tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs)",
)

# What the TensorRT backend cannot run without (trt_api.py): each must be found by the collection.
CORE = {
    ("", "Runtime"),
    ("Runtime", "deserialize_cuda_engine"),
    ("ICudaEngine", "num_io_tensors"),
    ("ICudaEngine", "get_tensor_name"),
    ("ICudaEngine", "get_tensor_mode"),
    ("ICudaEngine", "get_tensor_shape"),
    ("ICudaEngine", "get_tensor_dtype"),
    ("ICudaEngine", "create_execution_context"),
    ("ICudaEngine", "device_memory_size_v2"),
    ("IExecutionContext", "set_input_shape"),
    ("IExecutionContext", "set_tensor_address"),
    ("IExecutionContext", "set_device_memory"),
    ("IExecutionContext", "execute_async_v3"),
    ("TensorIOMode", "INPUT"),
    ("ExecutionContextAllocationStrategy", "USER_MANAGED"),
    ("ILogger", "log"),
    ("ILogger.Severity", "ERROR"),
    ("MemoryPoolType", "WORKSPACE"),
}

# Runtime API that is gone in 10.0/11.0, or never existed, written the ways our code writes TensorRT.
BAD = textwrap.dedent(
    """
    import tensorrt as trt


    class Loaded:
        def __init__(self, engine: trt.ICudaEngine) -> None:
            self.engine = engine
            self.context: trt.IExecutionContext | None = None

        def old(self, blob: bytes) -> None:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(blob)
            print(engine.num_bindings, engine.device_memory_size)
            ctx = engine.create_execution_context_without_device_memory()
            ctx2 = self.engine.create_execution_context()
            ctx2.execute_async_v2([], 0)
            self.context.set_binding_shape(0, (1,))
            print(trt.TensorIOMode.INPUTS, ctx)


    def builder_side() -> None:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        print(flags, trt.BuilderFlag.FP16, trt.Builder, trt.OnnxParser)
    """
)


def test_lean_module_is_the_tensorrt_11_runtime():
    assert lean.__version__.startswith("11.")
    assert hasattr(lean, "Runtime") and hasattr(lean, "ICudaEngine") and not hasattr(lean, "Builder")


def test_our_runtime_names_exist_in_the_real_lean_runtime_per_class():
    problems, uses = ctn.check_runtime(lean)
    assert problems == [], "\n".join(problems)
    found = {(owner, attr) for owner, attr, _ in uses}
    assert CORE <= found, sorted(CORE - found)
    for owner, attr in found:  # the check itself: per class, on the imported module
        if owner and ctn._lean_class(lean, owner) is not None:
            assert hasattr(ctn._lean_class(lean, owner), attr), (owner, attr)


def test_the_runtime_check_catches_removed_and_misspelt_names(tmp_path):
    bad = tmp_path / "old_trt.py"
    bad.write_text(BAD)
    problems, uses = ctn.check_runtime(lean, [bad])
    text = "\n".join(problems)
    for name in (
        "ICudaEngine.num_bindings",
        "ICudaEngine.device_memory_size ",
        "ICudaEngine.create_execution_context_without_device_memory",
        "IExecutionContext.execute_async_v2",
        "IExecutionContext.set_binding_shape",
        "TensorIOMode.INPUTS",
    ):
        assert f"{name.strip()} (" in text and "lean runtime" in text, (name, text)
    # builder side: checked against the 11.x full-bindings names (EXPLICIT_BATCH and FP16 are gone in 11)
    assert "NetworkDefinitionCreationFlag.EXPLICIT_BATCH (" in text and "BuilderFlag.FP16 (" in text
    assert "Builder (" not in text and "OnnxParser (" not in text  # they exist in 11.x
    assert ("ICudaEngine", "create_execution_context") in {(o, a) for o, a, _ in uses}


def test_return_types_come_from_the_lean_signatures():
    assert ctn._returns(lean, "Runtime", "deserialize_cuda_engine") == "ICudaEngine"
    assert ctn._returns(lean, "ICudaEngine", "create_execution_context") == "IExecutionContext"
    assert ctn._returns(lean, "ICudaEngine", "get_tensor_dtype") == "DataType"
