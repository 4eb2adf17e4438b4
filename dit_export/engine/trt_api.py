"""Every direct use of the `tensorrt` module: probing, building (via polygraphy) and loading plans.

Kept in one small file so that it can be checked without TensorRT: `scripts/check_trt_names.py`
verifies that each attribute used here exists in the TensorRT 11.x Python bindings (names read
from the real `tensorrt-cu13-bindings` wheel), that each runtime attribute exists on its class in
the real TensorRT 11 lean runtime module (`tensorrt_lean_bindings`, imported; tests/engine/test_trt_names.py),
and mypy checks it against `tensorrt-stubs` (10.x).
Only API that exists in both 10.x and 11.x is used, with two version-gated exceptions (see
`NEEDS_10_1`): the shared scratch block needs `device_memory_size_v2` and `set_device_memory`,
which appeared in 10.1; on 10.0 each context allocates its own scratch instead.

Builds are strongly typed (the ONNX graph carries the precision; no precision builder flags:
they are gone in 11.x) through polygraphy's loaders: `NetworkFromOnnxPath(strongly_typed=True)`
(parse_from_file, so external data works), `CreateConfig` with a static-shape profile, workspace
limit and builder optimisation level, and a timing cache. TF32 stays off (polygraphy's default):
fp32 islands stay true fp32.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dit_export.engine import cuda
from dit_export.errors import UserError
from dit_export.export.manifest import dtypes

if TYPE_CHECKING:
    import tensorrt as trt

# Attributes outside the 10.0 ∩ 11.x API that this file uses behind hasattr() checks.
NEEDS_10_1 = ("device_memory_size_v2", "set_device_memory")
# Manifest dtype names of TensorRT DataType members.
DTYPE_NAMES: dict[str, str] = dtypes.names_by("tensorrt")  # "HALF" → "float16", from the one dtype table


def require() -> None:
    """Raise a one-line error unless the real tensorrt module imports (then `import tensorrt` is safe)."""
    ok, why, _ = _probe_import()
    if not ok:
        raise UserError(f"TensorRT is not usable here: {why}")


def _probe_import() -> tuple[bool, str, Any]:
    try:
        import tensorrt as trt_mod
    except ImportError as e:
        return False, f"tensorrt is not installed ({e.msg.splitlines()[0] if e.msg else e.name})", None
    except OSError as e:  # libnvinfer missing or for another CUDA
        return False, f"tensorrt cannot load its libraries ({str(e).splitlines()[0]})", None
    if not hasattr(trt_mod, "Builder"):
        return False, "only type stubs are installed (tensorrt-stubs), not TensorRT", None
    return True, "", trt_mod


def probe() -> tuple[bool, str]:
    """(usable, reason): TensorRT imports, cuda-python imports and a CUDA GPU is visible."""
    ok, why, trt_mod = _probe_import()
    if not ok:
        return False, why
    try:
        n = cuda.gpu_count()
    except UserError as e:
        return False, str(e)
    if n == 0:
        return False, f"TensorRT {trt_mod.__version__} is installed but no CUDA GPU is visible"
    g = cuda.gpu_info()
    return True, f"TensorRT {trt_mod.__version__} and {g.name} ({g.sm}) found"


def version() -> str:
    require()
    import tensorrt as trt

    return str(trt.__version__)


def short_version(full: str) -> str:
    """'10.13.0.35' → '10.13' (engines are tied to major.minor; the full version is recorded too)."""
    return ".".join(full.split(".")[:2])


class _Logger:
    """Collects TensorRT's messages so a failure becomes one line (and warnings stay quiet)."""

    def __init__(self) -> None:
        require()
        import tensorrt as trt

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                elif severity == trt.ILogger.Severity.WARNING and os.environ.get("DIT_EXPORT_TRT_VERBOSE"):
                    print(f"[TensorRT] {msg}")

        self.logger = Logger()

    def last_error(self) -> str:
        errs = self.logger.errors
        return errs[-1].strip().splitlines()[0][:300] if errs else "no message from TensorRT"


# -------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildOptions:
    workspace_bytes: int = 4 << 30
    optimization_level: int = 3  # TensorRT's default; 0–5

    def to_dict(self) -> dict:
        return {
            "strongly_typed": True,
            "precision_flags": [],
            "tf32": False,
            "workspace_bytes": self.workspace_bytes,
            "builder_optimization_level": self.optimization_level,
            "profile": "static (min = opt = max = the exported shapes)",
        }


def build_plan(
    onnx_path: Path,
    shapes: dict[str, Sequence[int]],
    options: BuildOptions,
    timing_cache: Path | None = None,
) -> bytes:
    """A serialized engine for a static-shape ONNX graph; updates `timing_cache` (atomically)."""
    require()
    import tensorrt as trt

    try:
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise UserError(
            "building TensorRT engines needs polygraphy: pip install 'dit_export[tensorrt]'"
        ) from None
    if not os.environ.get("DIT_EXPORT_TRT_VERBOSE"):
        G_LOGGER.module_severity = G_LOGGER.ERROR
    profile = Profile()
    for name, shape in shapes.items():
        profile.add(name, min=tuple(shape), opt=tuple(shape), max=tuple(shape))
    try:
        with _scratch_timing_cache(timing_cache) as scratch:
            network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
            config = CreateConfig(
                profiles=[profile],
                memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(options.workspace_bytes)},
                builder_optimization_level=int(options.optimization_level),
                load_timing_cache=str(scratch) if scratch is not None and scratch.is_file() else None,
            )
            plan = EngineBytesFromNetwork(
                network, config=config, save_timing_cache=str(scratch) if scratch is not None else None
            )()
    except PolygraphyException as e:
        raise UserError(f"TensorRT could not build {onnx_path.name}: {_first_line(e)}") from None
    if not plan:
        raise UserError(f"TensorRT could not build {onnx_path.name} (no engine returned)")
    return bytes(plan)


@contextlib.contextmanager
def _scratch_timing_cache(cache: Path | None) -> Iterator[Path | None]:
    """A private copy of the timing cache for polygraphy to load from and save into.

    Polygraphy reads and writes the cache in place and puts a `<cache>.lock` file beside every
    cache path it touches; giving it only a scratch copy keeps the real cache whole until the
    build succeeds (then it is renamed over it) and keeps every lock file out of the folder.
    """
    if cache is None:
        yield None
        return
    cache = Path(cache)
    scratch = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        if cache.is_file():
            shutil.copyfile(cache, scratch)
        yield scratch
        if scratch.is_file():
            os.replace(scratch, cache)
    finally:
        for leftover in (
            scratch,
            scratch.with_name(scratch.name + ".lock"),
            cache.with_name(cache.name + ".lock"),
        ):
            leftover.unlink(missing_ok=True)


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


# -------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class EngineTensor:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str


class LoadedEngine:
    """A deserialized engine, its I/O as TensorRT reports it, and (later) its execution context."""

    def __init__(self, engine: trt.ICudaEngine, runtime: trt.Runtime, logger: _Logger, label: str) -> None:
        self.engine, self.runtime, self.logger, self.label = (
            engine,
            runtime,
            logger,
            label,
        )  # runtime and logger outlive the engine
        self.context: trt.IExecutionContext | None = None

    def tensors(self) -> list[EngineTensor]:
        import tensorrt as trt

        e = self.engine
        out = []
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            mode = e.get_tensor_mode(name)
            dtype = e.get_tensor_dtype(name)
            dims = e.get_tensor_shape(name)
            out.append(
                EngineTensor(
                    name=name,
                    is_input=mode == trt.TensorIOMode.INPUT,
                    shape=tuple(int(dims[i]) for i in range(len(dims))),
                    dtype=DTYPE_NAMES.get(dtype.name, dtype.name),
                )
            )
        return out

    def scratch_bytes(self) -> int | None:
        """Device memory a context needs (None on TensorRT 10.0, which cannot share it)."""
        if not hasattr(self.engine, "device_memory_size_v2"):
            return None
        return int(self.engine.device_memory_size_v2)

    def create_context(self, scratch_ptr: int | None, scratch_bytes: int) -> None:
        """A context on the shared scratch block when given, else one that allocates its own."""
        import tensorrt as trt

        if scratch_ptr is not None:
            ctx = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if ctx is None:
                raise UserError(f"TensorRT could not create an execution context for {self.label}")
            ctx.set_device_memory(scratch_ptr, scratch_bytes)
        else:
            ctx = self.engine.create_execution_context()
            if ctx is None:
                raise UserError(f"TensorRT could not create an execution context for {self.label}")
        for t in self.tensors():
            if t.is_input:
                ctx.set_input_shape(t.name, t.shape)
        self.context = ctx

    def set_address(self, name: str, ptr: int) -> None:
        assert self.context is not None
        if not self.context.set_tensor_address(name, ptr):
            raise UserError(f"TensorRT refused the address of {name} in {self.label}")

    def execute(self, stream_handle: int) -> None:
        assert self.context is not None
        if not self.context.execute_async_v3(stream_handle):
            raise UserError(f"TensorRT failed to run {self.label}")

    def close(self) -> None:
        self.context = None
        self.engine = None  # type: ignore[assignment]


def load_plans(plans: Iterable[tuple[str, bytes]]) -> list[LoadedEngine]:
    """Deserialize (label, plan bytes) pairs with one runtime; one-line error for a bad plan."""
    require()
    import tensorrt as trt

    log = _Logger()
    runtime = trt.Runtime(log.logger)
    out = []
    for label, blob in plans:
        try:
            engine = runtime.deserialize_cuda_engine(blob)
        except Exception as e:  # pybind raises for some malformed inputs instead of returning None
            raise UserError(f"TensorRT cannot load {label}: {_first_line(e)}") from None
        if engine is None:
            raise UserError(
                f"TensorRT {trt.__version__} cannot load {label} (corrupt, or built by another "
                f"TensorRT version or for another GPU): {log.last_error()}"
            )
        out.append(LoadedEngine(engine, runtime, log, label))
    return out


def shared_scratch_supported() -> bool:
    """True where a context can run on caller-provided scratch memory (TensorRT ≥ 10.1)."""
    require()
    import tensorrt as trt

    return hasattr(trt.ICudaEngine, "device_memory_size_v2") and hasattr(
        trt.IExecutionContext, "set_device_memory"
    )
