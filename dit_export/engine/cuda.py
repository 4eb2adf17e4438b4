"""The few CUDA runtime calls the TensorRT path needs, through cuda-python (imported lazily).

Streams, device memory, copies and CUDA graphs, as NVIDIA's own TensorRT Python samples do them
(`cuda.bindings.runtime`, or `cuda.cudart` in cuda-python < 12.6). Every call's error code is
checked and turned into a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dit_export.errors import UserError

_cudart: Any = None


def cudart() -> Any:
    """The cuda-python runtime module; a one-line error when cuda-python is missing."""
    global _cudart
    if _cudart is None:
        try:
            from cuda.bindings import runtime as rt  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart as rt  # older cuda-python
            except ImportError:
                raise UserError(
                    "the TensorRT backend needs cuda-python: pip install 'dit_export[tensorrt]'"
                ) from None
        _cudart = rt
    return _cudart


def check(result: Any, what: str = "CUDA call") -> Any:
    """Unpack a cuda-python result tuple (err, *values); raise on an error code."""
    rt = cudart()
    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    if err != rt.cudaError_t.cudaSuccess:
        try:
            msg = rt.cudaGetErrorString(err)[1].decode()
        except Exception:  # the error string itself is best effort
            msg = str(err)
        raise UserError(f"{what} failed: {msg}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


# cudaGetDeviceCount errors that mean the driver and cuda-python's CUDA runtime do not fit together
# (any other error, cudaErrorNoDevice included, means "no GPU here": count 0).
DRIVER_MISMATCH_ERRORS = (
    "cudaErrorInsufficientDriver",
    "cudaErrorCallRequiresNewerDriver",
    "cudaErrorSystemDriverMismatch",
    "cudaErrorCompatNotSupportedOnDevice",
)


def _cuda_version(fn) -> str | None:
    """'12.4' from cudaDriverGetVersion / cudaRuntimeGetVersion (None when unknown or 0)."""
    try:
        err, v = fn()
    except Exception:  # best effort: this only decorates an error message
        return None
    if err != cudart().cudaError_t.cudaSuccess or not v:
        return None
    return f"{int(v) // 1000}.{int(v) % 1000 // 10}"


def driver_mismatch_message(err_name: str) -> str:
    """One line: which CUDA the driver supports, which cuda-python needs, what to install."""
    rt = cudart()
    driver = _cuda_version(rt.cudaDriverGetVersion)
    runtime = _cuda_version(rt.cudaRuntimeGetVersion)
    have = f"the NVIDIA driver supports CUDA {driver}" if driver else "the NVIDIA driver is too old"
    need = f"cuda-python's runtime is CUDA {runtime}" if runtime else "cuda-python needs a newer driver"
    major = driver.split(".")[0] if driver else "12"
    return (
        f"CUDA driver/runtime mismatch ({err_name}): {have}, {need}; install the builds for your driver, "
        f"e.g. pip install 'cuda-python>={major},<{int(major) + 1}' and tensorrt-cu{major}, or update the driver"
    )


def gpu_count() -> int:
    """Visible CUDA devices: 0 when no GPU is visible; a one-line error when the driver does not fit.

    cuda-python 13 (what `cuda-python>=12` resolves to today) needs a CUDA 13 driver: on a CUDA 12
    driver every call fails with cudaErrorInsufficientDriver, which is a broken installation to
    name, not "no GPU".
    """
    rt = cudart()
    err, n = rt.cudaGetDeviceCount()
    if err == rt.cudaError_t.cudaSuccess:
        return int(n)
    name = getattr(err, "name", str(err))
    if name in DRIVER_MISMATCH_ERRORS:
        raise UserError(driver_mismatch_message(name))
    return 0


def gpu_info(index: int | None = None) -> GpuInfo:
    rt = cudart()
    if index is None:
        index = int(check(rt.cudaGetDevice(), "cudaGetDevice"))
    props = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return GpuInfo(index, str(name).strip(), f"{props.major}.{props.minor}")


def mem_free() -> int:
    """Free bytes on the current device (cudaMemGetInfo)."""
    free, _total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free)


class Stream:
    """A non-blocking CUDA stream; `handle` is the int TensorRT's execute_async_v3 takes."""

    def __init__(self) -> None:
        rt = cudart()
        self.stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.stream is not None:
            cudart().cudaStreamDestroy(self.stream)
            self.stream = None


class DeviceMemory:
    """One cudaMalloc block, freed on close."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes} bytes)"))

    def close(self) -> None:
        if self.ptr:
            cudart().cudaFree(self.ptr)
            self.ptr = 0


def copy_h2d(dst: int, host_ptr: int, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(dst, host_ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.stream),
        "copy to GPU",
    )


def copy_d2h(host_ptr: int, src: int, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(host_ptr, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.stream),
        "copy from GPU",
    )


def copy_d2d(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.stream),
        "device copy",
    )


class Graph:
    """A captured CUDA graph: `capture(stream, fn)` records fn's work on the stream; `launch` replays it."""

    def __init__(self, stream: Stream, fn) -> None:
        rt = cudart()
        check(
            rt.cudaStreamBeginCapture(stream.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
            "cudaStreamBeginCapture",
        )
        self.graph = self.exec = None
        try:
            fn()
        except BaseException:  # end the capture whatever it holds, drop its graph, re-raise
            err, *rest = rt.cudaStreamEndCapture(stream.stream)
            if err == rt.cudaError_t.cudaSuccess and rest and rest[0] is not None:
                rt.cudaGraphDestroy(rest[0])
            raise
        self.graph = check(rt.cudaStreamEndCapture(stream.stream), "cudaStreamEndCapture")
        try:
            self.exec = check(rt.cudaGraphInstantiate(self.graph, 0), "cudaGraphInstantiate")
        except UserError:
            self.close()
            raise

    def launch(self, stream: Stream) -> None:
        check(cudart().cudaGraphLaunch(self.exec, stream.stream), "cudaGraphLaunch")

    def close(self) -> None:
        rt = cudart()
        if self.exec is not None:
            rt.cudaGraphExecDestroy(self.exec)
            self.exec = None
        if self.graph is not None:
            rt.cudaGraphDestroy(self.graph)
            self.graph = None
