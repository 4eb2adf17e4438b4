"""Which machine a benchmark ran on, library versions, and the device's peak math rate.

Peaks are vendor datasheet figures for DENSE math (no 2:4 sparsity), in TFLOP/s. They are an
upper bound no real kernel reaches (H100 SXM fp16: 989 on paper, about 800 measured on large
GEMMs), so "% of peak" says how much of the silicon a backend uses, not how close to ideal it is.
CPUs have no entry: their peak depends on clocks, cores and vector units we cannot read reliably,
so only the achieved GFLOP/s is reported.
"""

from __future__ import annotations

import importlib.util
import platform
import socket
import sys
import time
from importlib import metadata

import psutil

from dit_export.engine.cuda import gpu_count, gpu_info
from dit_export.errors import UserError
from dit_export.host import usable_cpus
from dit_export.lazy import optional_import

# (substring of the GPU name, label, {math class: dense TFLOP/s}); first match wins, so the more
# specific names come first.
GPU_PEAKS: list[tuple[str, str, dict[str, float]]] = [
    ("H200", "H200 (SXM)", {"fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("H100 PCIe", "H100 PCIe", {"fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", "H100 NVL", {"fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", "H100 SXM", {"fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("GH200", "GH200", {"fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("A100", "A100", {"fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", "L40S", {"fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", "L4", {"fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", "A10", {"fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
]
PEAK_SOURCE = "vendor datasheet, dense (no sparsity); H100 SXM fp16 measures about 800 on large GEMMs"


def device_peak(gpu_name: str | None) -> dict | None:
    """{"label", "tflops": {fp16, tf32, fp32}, "source"} for a known GPU name, else None."""
    if not gpu_name:
        return None
    for key, label, peaks in GPU_PEAKS:
        if key.lower() in gpu_name.lower():
            return {"label": label, "tflops": dict(peaks), "source": PEAK_SOURCE}
    return None


def _cpuinfo(field: str) -> str:
    """One field of /proc/cpuinfo ('' elsewhere): the CPU's model name and flags have no portable API."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_has_fp16_math() -> bool:
    """AVX512-FP16 or AMX-FP16: the only x86 units that compute in fp16 natively."""
    return bool(set(_cpuinfo("flags").split()) & {"avx512_fp16", "amx_fp16"})


def gpu_facts() -> dict | None:
    """Name, memory and compute capability of GPU 0 (cuda-python, else torch), or None without a GPU."""
    if importlib.util.find_spec("cuda") is not None:
        try:
            if gpu_count():
                g = gpu_info()
                return {"name": g.name, "memory_bytes": None, "compute_capability": g.compute_capability}
        except UserError as e:  # a driver/runtime mismatch: say so in the machine facts
            return {"name": None, "error": str(e), "memory_bytes": None, "compute_capability": None}
    if importlib.util.find_spec("torch") is not None:
        torch = optional_import("torch")
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {
                "name": p.name,
                "memory_bytes": int(p.total_memory),
                "compute_capability": f"{p.major}.{p.minor}",
            }
    return None


def machine_info() -> dict:
    gpu = gpu_facts()
    cpus = usable_cpus()
    label = f"{cpu_name()}, {cpus} CPU{'s' if cpus != 1 else ''}"
    if gpu and gpu["name"]:
        label = f"{gpu['name']} + {label}"
    return {
        "label": label,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_name(),
        "cpus_usable": cpus,
        "cpu_fp16_math": cpu_has_fp16_math(),
        "memory_bytes": int(psutil.virtual_memory().total),
        "load_average": list(psutil.getloadavg()),
        "gpu": gpu,
    }


class OtherLoad:
    """CPU time other processes used while we ran, as a share of all CPUs.

    The load average cannot tell our own threads from anyone else's; this can: the machine's busy
    time minus this process's and its children's CPU time, over the wall time.
    """

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = time.monotonic(), _busy_seconds(), _our_seconds()

    def percent(self) -> float | None:
        wall = time.monotonic() - self.t0
        if wall <= 0:
            return None
        other = (_busy_seconds() - self.busy0) - (_our_seconds() - self.ours0)
        return max(0.0, 100.0 * other / (wall * (psutil.cpu_count() or 1)))


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return (
        sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    )


def _our_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


VERSIONED = (
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "diffusers",
    "matplotlib",
)


def versions() -> dict:
    """Installed versions of every library a backend may use (None when absent), read from the
    package metadata: nothing is imported."""
    out: dict[str, str | None] = {"dit_export": _version("dit_export"), "python": sys.version.split()[0]}
    for dist in VERSIONED:
        out[dist] = _version(dist)
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
