"""Clocks, latency statistics and memory probes for `bench`.

A clock times `repeat` back-to-back calls of a function after `warmup` untimed ones and returns
one latency per call:

- `CpuClock`: `time.perf_counter` around each call plus its `sync` (CPU backends, and GPU
  libraries whose run call is synchronous, such as ONNX Runtime with I/O binding).
- `TorchEventClock`: CUDA events recorded on torch's current stream around each call; one
  synchronisation at the end, so the host never stalls the GPU between calls.
- `CudartEventClock`: the same with cuda-python events on a raw stream (the TensorRT backend).

Events measure what the GPU saw between the two records, including any gap the host leaves
(launch overhead), which is the latency a loop of such calls really has.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import psutil

from dit_export.engine.cuda import check, cudart
from dit_export.lazy import optional_import


@dataclass(frozen=True)
class Stats:
    """Latency statistics of one timed call, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("no timings")
        return cls(
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            min_ms=float(ms.min()),
            mean_ms=float(ms.mean()),
            n=int(ms.size),
        )

    def to_dict(self) -> dict:
        return {
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "min_ms": self.min_ms,
            "mean_ms": self.mean_ms,
            "n": self.n,
        }


class Clock:
    """Times calls of `fn`; `kind` names the method in the results."""

    kind = ""

    def time(self, fn: Callable[[], None], warmup: int, repeat: int) -> list[float]:
        raise NotImplementedError

    def span(self, fn: Callable[[], None]) -> float:
        """Seconds for one (long) call, e.g. a whole sample."""
        return self.time(fn, 0, 1)[0]


class CpuClock(Clock):
    kind = "perf_counter"

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync or (lambda: None)

    def time(self, fn: Callable[[], None], warmup: int, repeat: int) -> list[float]:
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            self.sync()
            out.append(time.perf_counter() - t0)
        return out


class TorchEventClock(Clock):
    kind = "cuda events (torch)"

    def time(self, fn: Callable[[], None], warmup: int, repeat: int) -> list[float]:
        torch = optional_import("torch")
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeat)
        ]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in events]


class CudartEventClock(Clock):
    """CUDA events on a cuda-python stream (the cudaStream_t the TensorRT backend runs on)."""

    kind = "cuda events (cudart)"

    def __init__(self, stream, synchronize: Callable[[], None]) -> None:
        self.stream, self.synchronize = stream, synchronize

    def time(self, fn: Callable[[], None], warmup: int, repeat: int) -> list[float]:
        rt = cudart()
        for _ in range(warmup):
            fn()
        self.synchronize()
        events = [(check(rt.cudaEventCreate()), check(rt.cudaEventCreate())) for _ in range(repeat)]
        try:
            for start, end in events:
                check(rt.cudaEventRecord(start, self.stream), "cudaEventRecord")
                fn()
                check(rt.cudaEventRecord(end, self.stream), "cudaEventRecord")
            self.synchronize()
            return [
                float(check(rt.cudaEventElapsedTime(s, e), "cudaEventElapsedTime")) / 1e3 for s, e in events
            ]
        finally:
            for s, e in events:
                rt.cudaEventDestroy(s)
                rt.cudaEventDestroy(e)


# ------------------------------------------------------------------------------ memory


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return int(psutil.Process().memory_info().rss)


class PeakRss:
    """Peak RSS of this process over a window.

    On Linux, writing 5 to /proc/self/clear_refs resets the high-water mark (VmHWM) to the
    current RSS, so the peak is exact per window (psutil has no high-water mark). Elsewhere only
    `ru_maxrss` (the peak over the whole process life) is available; the result says which.
    """

    def __init__(self) -> None:
        self.baseline = rss_bytes()
        self.kind = "VmHWM since reset"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "ru_maxrss (peak over the whole process)"

    def peak(self) -> int:
        if self.kind.startswith("VmHWM"):
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def cuda_used_bytes() -> int | None:
    """Device memory in use on GPU 0 (all processes), via cuda-python; None without CUDA."""
    try:
        free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
        return int(total - free)
    except Exception:  # no cuda-python, no GPU: nothing to report
        return None


class Memory:
    """Peak memory of one backend over its timings: RSS on a CPU; on a GPU the device memory in
    use (sampled after each stage), and for torch its allocator's exact peak."""

    def __init__(self, device: str, torch_gpu: bool = False) -> None:
        self.device, self.torch = device, optional_import("torch") if torch_gpu else None
        self.rss = PeakRss() if device == "cpu" else None
        self.base = self.peak_dev = cuda_used_bytes() if device == "cuda" else None
        if self.torch is not None:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.alloc_base = int(self.torch.cuda.memory_allocated())

    def sample(self) -> None:
        if self.device == "cuda":
            now = cuda_used_bytes()
            if now is not None:
                self.peak_dev = max(self.peak_dev or 0, now)

    def result(self) -> dict:
        if self.rss is not None:
            peak, base = self.rss.peak(), self.rss.baseline
            return {
                "kind": "peak RSS",
                "method": self.rss.kind,
                "peak_bytes": peak,
                "baseline_bytes": base,
                "delta_bytes": max(0, peak - base),
            }
        self.sample()
        whole = {
            "kind": "device memory in use",
            "method": "cudaMemGetInfo (whole GPU), sampled after each stage",
            "peak_bytes": self.peak_dev,
            "baseline_bytes": self.base,
            "delta_bytes": None
            if self.peak_dev is None or self.base is None
            else max(0, self.peak_dev - self.base),
        }
        if self.torch is None:
            return whole
        peak = int(self.torch.cuda.max_memory_allocated())
        return {
            "kind": "device memory",
            "method": "torch.cuda.max_memory_allocated (this process: weights + activations)",
            "peak_bytes": peak,
            "baseline_bytes": self.alloc_base,
            "delta_bytes": max(0, peak - self.alloc_base),
            "gpu_in_use_peak_bytes": whole["peak_bytes"],
        }
