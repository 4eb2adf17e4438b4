"""The TensorRT-facing code, checked without TensorRT: API names (11.x bindings), types (10.x stubs).

The name lists are committed (scripts/check_trt_names.py --refresh made them from the PyPI
wheels); the mypy part needs `tensorrt-stubs` and skips with that reason otherwise.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("check_trt_names", ROOT / "scripts" / "check_trt_names.py")
assert spec and spec.loader
ctn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ctn)

HAVE_STUBS = bool(ctn._stub_files())
needs_stubs = pytest.mark.skipif(
    not HAVE_STUBS, reason="tensorrt-stubs not installed (pip install --no-deps tensorrt-stubs)"
)

# API that must stay out of our code: removed in 10.0 or 11.0 (tensorrt.md).
REMOVED = textwrap.dedent(
    """
    import tensorrt as trt

    def old_style(onnx: str, blob: bytes) -> None:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        if builder.platform_has_fast_fp16:
            pass
        engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
        if engine is not None:
            print(engine.device_memory_size)
            ctx = engine.create_execution_context_without_device_memory()
            print(ctx, network)
    """
)


def test_committed_name_lists_read_as_expected():
    n11, n10 = ctn.read_names(ctn.NAMES_11), ctn.read_names(ctn.NAMES_10_0)
    assert len(n11) > 1000 and len(n10) > 1000
    both = {"execute_async_v3", "set_tensor_address", "deserialize_cuda_engine", "build_serialized_network",
            "parse_from_file", "STRONGLY_TYPED", "set_memory_pool_limit", "Logger", "Runtime"}  # fmt: skip
    assert both <= n11 and both <= n10
    gone_in_11 = {
        "FP16",
        "EXPLICIT_BATCH",
        "platform_has_fast_fp16",
        "create_execution_context_without_device_memory",
    }
    assert gone_in_11 <= n10 and not gone_in_11 & n11
    assert {"set_device_memory", "device_memory_size_v2"} <= n11 - n10  # 10.1+: hence NEEDS_10_1
    assert "get_binding_index" not in n11 and "execute_async_v2" not in n11


def test_our_tensorrt_names_exist_in_11x():
    problems, used, how = ctn.check_names()
    assert problems == [], problems
    core = {"execute_async_v3", "set_tensor_address", "deserialize_cuda_engine", "set_input_shape"}
    if HAVE_STUBS:
        core |= {"num_io_tensors", "get_tensor_name", "create_execution_context", "set_device_memory"}
        assert how.startswith("typed")
    assert core <= set(used) or not HAVE_STUBS and {"MemoryPoolType", "WORKSPACE"} <= set(used)


def test_the_check_catches_removed_api(tmp_path):
    bad = tmp_path / "old_trt.py"
    bad.write_text(REMOVED)
    problems, used, _ = ctn.check_names([bad])
    text = "\n".join(problems)
    for name in ("FP16", "EXPLICIT_BATCH"):
        assert f"{name} (" in text
    if HAVE_STUBS:  # typed collection also sees methods on TensorRT objects
        for name in (
            "platform_has_fast_fp16",
            "create_execution_context_without_device_memory",
            "device_memory_size",
        ):
            assert f"{name} (" in text


@needs_stubs
def test_mypy_against_tensorrt_stubs(tmp_path):
    rc, out = ctn.run_mypy()
    assert rc == 0, out
    bad = tmp_path / "bad_types.py"
    bad.write_text(
        "import tensorrt as trt\n\n"
        "def f(blob: bytes) -> None:\n"
        "    e = trt.Runtime(trt.Logger()).deserialize_cuda_engine(blob)\n"
        "    print(e.get_binding_index('x'))\n"
    )
    rc, out = ctn.run_mypy([bad])
    assert rc != 0 and "get_binding_index" in out, out


def test_stub_repair_fixes_the_known_syntax_errors():
    line = "    def get_workspace_size(self, in: list[int], out: list[int]) -> int:"
    assert "in_: list[int]" in ctn._repair_def(line)
    line = (
        "    def add_scale_nd(self, input: ITensor, shift: Weights = None, channel_axis: int) -> IScaleLayer:"
    )
    assert "channel_axis: int = ..." in ctn._repair_def(line)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to make a test ELF module")
def test_elf_scan_finds_tail_merged_names(tmp_path):
    """The string-literal scan sees names the linker stored inside longer ones ("Logger" in "ILogger")."""
    src = tmp_path / "m.c"
    src.write_text(
        "extern void reg(const char *);\n"
        'void init(void) { reg("ILogger"); reg("Logger"); reg("set_tensor_address"); reg("not an ident"); }\n'
    )
    so = tmp_path / "m.so"
    subprocess.run(["cc", "-O2", "-fPIC", "-shared", str(src), "-o", str(so)], check=True)
    names = ctn.registered_names(so.read_bytes())
    assert {"ILogger", "Logger", "set_tensor_address"} <= names and "not an ident" not in names


def test_probe_explains_why_tensorrt_is_unusable_here():
    from dit_export.engine import trt_api

    ok, why = trt_api.probe()
    if ok:
        pytest.skip(f"TensorRT is usable here: {why}")
    assert why and "\n" not in why


@pytest.mark.skipif(
    not __import__("os").environ.get("DIT_EXPORT_NETWORK_TESTS"),
    reason="needs PyPI (set DIT_EXPORT_NETWORK_TESTS=1)",
)
def test_committed_lists_match_the_wheels(tmp_path):
    names, _ = ctn.wheel_names(ctn.WHEELS_11[-1], tmp_path)
    assert ctn.read_names(ctn.NAMES_11) <= names


def test_the_checker_runs_without_mypy(monkeypatch, capsys):
    """scripts/check_trt_names.py falls back to trt.X chains and skips mypy when mypy is absent."""
    for name in [m for m in sys.modules if m == "mypy" or m.startswith("mypy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mypy", None)  # `import mypy` raises ImportError
    assert ctn.typed_attributes(ctn.TRT_FILES) is None
    rc, out = ctn.run_mypy()
    assert rc == 0 and "mypy is not installed" in out
    problems, used, how = ctn.check_names()
    assert problems == [] and how.startswith("trt.X chains") and {"MemoryPoolType", "WORKSPACE"} <= set(used)
    assert ctn.main([]) == 0
    assert "mypy is not installed" in capsys.readouterr().out
