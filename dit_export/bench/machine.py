"""Which machine a benchmark ran on, library versions, and the device's peak math rate.

Peaks are vendor datasheet figures for DENSE math (no 2:4 sparsity), in TFLOP/s. They are an
upper bound no real kernel reaches (H100 SXM fp16: 989 on paper, about 800 measured on large
GEMMs), so "% of peak" says how much of the silicon a backend uses, not how close to ideal it is.
CPUs have no entry: their peak depends on clocks, cores and vector units we cannot read reliably,
so only the achieved GFLOP/s is reported.
"""

from __future__ import annotations

import importlib
import os
import platform
import socket
import sys
import time

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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fp16_math() -> bool:
    """AVX512-FP16 or AMX-FP16: the only x86 units that compute in fp16 natively."""
    return bool(cpu_flags() & {"avx512_fp16", "amx_fp16"})


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_facts() -> dict | None:
    """Name, memory and compute capability of GPU 0 (torch first, then cuda-python), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {
                "name": p.name,
                "memory_bytes": int(p.total_memory),
                "compute_capability": f"{p.major}.{p.minor}",
                "cuda": torch.version.cuda,
            }
    except ModuleNotFoundError:
        pass
    try:
        from dit_export.engine.cuda import gpu_count, gpu_info

        if gpu_count():
            g = gpu_info()
            return {
                "name": g.name,
                "memory_bytes": None,
                "compute_capability": g.compute_capability,
                "cuda": None,
            }
    except Exception:  # no cuda-python or no driver: a CPU machine
        pass
    return None


def machine_info() -> dict:
    gpu = gpu_facts()
    cpus = usable_cpus()
    label = f"{cpu_name()}, {cpus} CPU{'s' if cpus != 1 else ''}"
    if gpu:
        label = f"{gpu['name']} + {label}"
    return {
        "label": label,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_name(),
        "cpus_usable": cpus,
        "cpu_fp16_math": cpu_has_fp16_math(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": gpu,
    }


class OtherLoad:
    """CPU time other processes used while we ran, as a share of all CPUs (Linux /proc/stat).

    The load average cannot tell our own threads from anyone else's; this can: the machine's busy
    time minus this process's and its reaped children's CPU time, over the wall time.
    """

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = time.monotonic(), _busy_seconds(), _our_seconds()

    def percent(self) -> float | None:
        busy = _busy_seconds()
        if busy is None or self.busy0 is None:
            return None
        wall = time.monotonic() - self.t0
        if wall <= 0:
            return None
        other = (busy - self.busy0) - (_our_seconds() - self.ours0)
        return max(0.0, 100.0 * other / (wall * usable_cpus()))


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _our_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def versions() -> dict:
    """Versions of every library a backend may use (None when not installed)."""
    from dit_export import __version__

    out: dict[str, str | None] = {"dit_export": __version__, "python": sys.version.split()[0]}
    for mod in ("numpy", "torch", "onnx", "onnxruntime", "tensorrt", "diffusers", "matplotlib"):
        try:
            out[mod] = str(importlib.import_module(mod).__version__)
        except Exception:  # missing, or broken install: report as absent
            out[mod] = None
    return out
