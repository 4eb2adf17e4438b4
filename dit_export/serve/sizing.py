"""How big the Triton sampler model is: instances × workers × threads, batch sizes, fill delay.

`triton-repo` asks `choose()` once; every value can be overridden and each comes with the line
that says how it was chosen (printed by the command).

- **Workers × threads (CPU).** ONNX Runtime's intra-op threads scale sub-linearly on these small
  per-step graphs (tiny-digits, batch 10, idle box: 2 threads give 1.4× one; on a loaded box two
  threads can be slower than one), while separate sessions with one thread each scale with the
  cores. So one instance runs `min(2, cores)` workers (each its own Sampler, all fed by the
  instance's one row queue, so the next free worker takes the oldest rows), each with
  cores ÷ workers threads. Two, not one per core: a worker fills its engine run only when enough
  rows wait, and fewer, faster workers serve a modest load better. Fewer when memory is short.
- **Instances (GPU).** Two per GPU, one worker each: each instance is its own process with its
  own CUDA stream, so the host-side loop of one (noise, table rows, Python) overlaps the kernels
  of the other; each holds its own engines (their size is printed).
- **Batch.** Triton's max_batch_size bounds a request (and a dynamic batch): several engine
  batches; the model's row scheduler runs a larger request in engine-sized parts, in order.
  Triton's preferred batch size is the engine's rows.
- **Fill delay.** How long a free worker waits for rows to fill its run when fewer than the
  engine's rows are queued: a fraction of one measured full-batch step (`--queue-delay-us` skips
  the measurement), long enough for clients answered by the last run to come back, at most
  `DELAY_FRACTION` of a step added to a request that waits alone. (Triton's own queue delay is 0:
  it counts from a request's arrival, so requests that waited through a run would leave at once
  in a part-filled batch.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dit_export.errors import first_line
from dit_export.export.manifest import Manifest
from dit_export.host import usable_cpus

GPU_INSTANCES = 2
CPU_WORKERS = 2
BATCHES_PER_REQUEST = 4  # default max_batch_size = this × the engine's rows
DELAY_FRACTION = 0.25  # fill delay = this × one measured full-batch step
DELAY_BOUNDS_US = (100, 100_000)
FALLBACK_DELAY_US = 2000
MEMORY_SHARE = 0.5  # all workers together may use at most this share of the available memory
MEMORY_PER_WEIGHT_BYTE = 3  # per worker: weights + ORT's arena and activations (rough)
MEASURE_STEPS = 4


@dataclass
class Sizing:
    instances: int
    workers: int  # Samplers per instance sharing its row queue
    threads: int  # ONNX Runtime intra-op threads per worker (0: not applicable, TensorRT)
    max_batch: int
    preferred: tuple[int, ...]
    queue_delay_us: int
    step_ms: float | None = None  # the measured full-batch step, when measured
    lines: list[str] = field(default_factory=list)


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def graph_bytes(manifest: Manifest) -> int:
    return sum(rec.bytes for rec in manifest.files())


def load_for_timing(folder: Path, backend: str, threads: int):
    """The folder's dit_step alone on `backend` (raises when it cannot run here: trt without a GPU)."""
    from dit_export.runtime import Sampler

    options: dict = {"threads": threads} if backend == "ort" and threads else {}
    if backend == "ort":
        options["providers"] = ["CPUExecutionProvider"]
    return Sampler.load(folder, backend, graphs=["dit_step"], check_hashes=False, **options)


def measure_step_ms(sampler) -> float:
    """Milliseconds of one full-batch sampler step (the loop's own cost included), best of 3 after a
    warm-up."""
    req = sampler.request([0] * sampler.batch, steps=MEASURE_STEPS)
    sampler.generate(sampler.request([0] * sampler.batch, steps=1), decode=False)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        sampler.generate(req, decode=False)
        best = min(best, (time.perf_counter() - t0) / MEASURE_STEPS)
    return best * 1e3


def choose(
    manifest: Manifest,
    runtime: str,
    kind: str,
    *,
    instances: int | None = None,
    workers: int | None = None,
    threads: int | None = None,
    max_batch: int | None = None,
    queue_delay_us: int | None = None,
    cores: int | None = None,
) -> Sizing:
    """The repository's sizes for this engines folder on this machine (None: choose)."""
    lines: list[str] = []
    n = manifest.batch
    given = [f"--{k}" for k, v in (("instances", instances), ("workers", workers), ("threads", threads)) if v]
    if kind == "KIND_GPU":
        instances = instances or GPU_INSTANCES
        workers, threads = workers or 1, threads or 0
        lines.append(
            f"{instances} instance(s) per GPU × {workers} worker(s) ({', '.join(given) or 'default'}: one CUDA "
            f"stream each, one's host loop overlaps the other's kernels; each holds "
            f"{graph_bytes(manifest) / 2**20:.0f} MiB of graphs)"
        )
    else:
        cores = cores or usable_cpus()
        instances = instances or 1
        if workers is None:
            per = max(1, cores // instances)
            workers = max(1, per // threads) if threads else min(CPU_WORKERS, per)
            need, avail = graph_bytes(manifest) * MEMORY_PER_WEIGHT_BYTE, available_memory()
            fit = int(avail * MEMORY_SHARE // (need * instances)) if avail and need else workers
            if fit < workers:
                workers = max(1, fit)
                lines.append(
                    f"workers {workers}: memory ({avail / 2**30:.1f} GiB available, "
                    f"~{need / 2**30:.2f} GiB per worker)"
                )
        threads = threads or max(1, cores // (instances * workers))
        lines.append(
            f"{instances} instance(s) × {workers} worker(s) × {threads} thread(s) on {cores} core(s) "
            f"({', '.join(given) or 'default'}; ONNX Runtime intra-op threads per worker, from the config, "
            "not from OMP_NUM_THREADS)"
        )
    if max_batch is None:
        max_batch = BATCHES_PER_REQUEST * n
        lines.append(
            f"max batch {max_batch} rows = {BATCHES_PER_REQUEST} engine batches (a larger request is refused; "
            "one over the engine's rows runs in engine-sized parts, in order)"
        )
    else:
        lines.append(f"max batch {max_batch} rows (--max-batch)")
    preferred = (n,) if n <= max_batch else (max_batch,)
    lines.append(f"preferred batch {preferred[0]} (the engine's rows)")
    step_ms = None
    if queue_delay_us is None:
        try:
            sampler = load_for_timing(manifest.folder, runtime, threads)
        except Exception as e:  # noqa: BLE001 — no GPU here for trt, or a backend that cannot load
            queue_delay_us = FALLBACK_DELAY_US
            lines.append(f"fill delay {queue_delay_us} µs (step not measured here: {first_line(e, 120)})")
        else:
            with sampler:
                step_ms = measure_step_ms(sampler)
            lo, hi = DELAY_BOUNDS_US
            queue_delay_us = int(min(hi, max(lo, DELAY_FRACTION * step_ms * 1e3)))
            lines.append(
                f"fill delay {queue_delay_us} µs = {DELAY_FRACTION} × one measured {n}-row step "
                f"({step_ms:.1f} ms, {runtime}, {threads or 'default'} thread(s))"
            )
    else:
        lines.append(f"fill delay {queue_delay_us} µs (--queue-delay-us)")
    return Sizing(instances, workers, threads, max_batch, preferred, queue_delay_us, step_ms, lines)
