"""The Triton Python-backend model of the DiT sampler (copied as `<repo>/<name>/1/model.py`).

Runs inside Triton's Python-backend stub, one process per model instance, with `dit_export`
(runtime install: numpy < 2 for the stub, onnxruntime or TensorRT) importable there. The engines
folder and the runtime backend come from the config's parameters (written by `triton-repo`).

Request rows (Triton's batch dimension) are images: `class_label`, `seed` (+ optional
`cfg_scale`, `steps`, `sampler`, `first_index`, `cache_interval`, `cache_order`). The rows of one
request that share (seed, cfg_scale, steps, sampler, first_index, cache settings) form one
`SampleRequest`, so a request is exactly
`dit_export sample --classes <its labels> --seed S …`: row i is image first_index + i of that
seed, whatever else the server is doing. Rows are not run by `execute`: it queues them, and the
instance's worker thread fills each engine run with up to the engine's rows from the queue (of
any requests; a request larger than the free rows is split across runs) through
`Sampler.generate_many`; each row keeps its own Philox key (seed and image index), so each
response equals its request run alone. Responses go through each request's response sender
(Triton ≥ 24.06 allows it for non-decoupled models); the order of a request's rows is kept.

A bad request (unknown class, steps 0, a wrong sampler) gets a Triton error response; the model
and the other requests carry on.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.images import to_uint8
from dit_export.runtime import Sampler
from dit_export.sampling.request import DEFAULT_CACHE_ORDER, SampleRequest

try:  # provided by the stub; absent when this file is imported elsewhere (import checks, docs)
    import triton_python_backend_utils as pb_utils
except ModuleNotFoundError:
    pb_utils = None

OPTIONAL = ("cfg_scale", "steps", "sampler", "first_index", "cache_interval", "cache_order")
CACHE_DEFAULTS = {"cache_interval": 1, "cache_order": DEFAULT_CACHE_ORDER}  # SampleRequest's


def _param(config: dict, key: str, default: str | None = None) -> str | None:
    p = config.get("parameters", {}).get(key)
    return p.get("string_value", default) if isinstance(p, dict) else default


def _column(request, name: str, rows: int | None):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return None
    a = np.asarray(t.as_numpy())
    a = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    if a.shape[1] != 1:
        raise UserError(f"input {name}: one value per row, got shape {a.shape}")
    if rows is not None and a.shape[0] != rows:
        raise UserError(f"input {name} has {a.shape[0]} rows, class_label has {rows}")
    return a[:, 0]


def pin_gpu(ordinal: int, environ=os.environ) -> str:
    """One stub process per instance: show it only its GPU before CUDA initialises. `ordinal` is the
    server's device index, i.e. an index into the server's CUDA_VISIBLE_DEVICES when that is set."""
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    device = visible[ordinal] if ordinal < len(visible) else str(ordinal)
    environ["CUDA_VISIBLE_DEVICES"] = device
    return device


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _groups(request, defaults: dict) -> list[tuple[SampleRequest, list[int]]]:
    """[(request of one seed/cfg/steps/sampler, its row indices)] in first-row order."""
    labels = _column(request, "class_label", None)
    if labels is None or len(labels) == 0:
        raise UserError("input class_label is missing or empty")
    n = len(labels)
    seeds = _column(request, "seed", n)
    if seeds is None:
        raise UserError("input seed is missing")
    cols = {k: _column(request, k, n) for k in OPTIONAL}
    keys: dict[tuple, list[int]] = {}
    for i in range(n):
        key = (
            int(seeds[i]),
            float(cols["cfg_scale"][i]) if cols["cfg_scale"] is not None else defaults["cfg_scale"],
            int(cols["steps"][i]) if cols["steps"] is not None else defaults["steps"],
            _text(cols["sampler"][i]) if cols["sampler"] is not None else defaults["sampler"],
            int(cols["first_index"][i]) if cols["first_index"] is not None else 0,
            *(int(cols[k][i]) if cols[k] is not None else v for k, v in CACHE_DEFAULTS.items()),
        )
        keys.setdefault(key, []).append(i)
    out = []
    for (seed, cfg, steps, sampler, first, interval, order), rows in keys.items():
        labs = tuple(int(labels[i]) for i in rows)
        req = SampleRequest(labs, seed=seed, cfg_scale=cfg, steps=steps, sampler=sampler, first_index=first,
                            cache_interval=interval, cache_order=order)  # fmt: skip
        out.append((req, rows))
    return out


class _Job:
    """One Triton request in flight: its row groups, its response sender and its images so far."""

    def __init__(self, sender, groups: list[tuple[SampleRequest, list[int]]]) -> None:
        self.sender, self.groups = sender, groups
        self.left = sum(len(rows) for _, rows in groups)
        self.out: np.ndarray | None = None
        self.done = False


class TritonPythonModel:
    """One instance: `workers` Samplers on the engines folder, loaded once, fed by a row scheduler.

    `execute` only validates and queues: each request's rows go to the instance's queue and its
    response sender answers once all its rows have run. Each worker thread owns one Sampler
    (ONNX Runtime releases the GIL while it computes); when it is free it takes up to the engine's
    rows from the queue, oldest first (rows with the oldest row's cfg scale, steps and sampler), waiting at most `fill_delay_us` for more rows
    when fewer are queued, so a run is full whenever enough rows wait. A request may be split
    across runs and a run may hold rows of many requests; each row keeps its Philox key (seed,
    image index), so every response equals its request run alone. Runs and their filled rows
    are counted (`engine_runs`; Triton custom metric `dit_sampler_engine_runs{rows=...}`).
    """

    def initialize(self, args: dict) -> None:
        if pb_utils is None:
            raise RuntimeError(
                "triton_python_backend_utils is missing: model.py runs inside Triton's Python backend"
            )
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        engines = Path(_param(config, "engines", "engines"))
        self.engines = engines if engines.is_absolute() else version_dir / engines
        backend = _param(config, "backend", "ort")
        if args.get("model_instance_kind") == "GPU" and "model_instance_device_id" in args:
            pin_gpu(int(args["model_instance_device_id"]))
        options: dict = {}
        if backend == "ort" and args.get("model_instance_kind") != "GPU":
            options["providers"] = ["CPUExecutionProvider"]  # KIND_CPU even where CUDA is there
        threads = int(_param(config, "threads", "0") or 0)
        if backend == "ort" and threads > 0:  # the config decides, not the server's OMP_NUM_THREADS
            options["threads"] = threads
        self.defaults = {
            "cfg_scale": float(_param(config, "default_cfg_scale", "4.0")),
            "steps": int(_param(config, "default_steps", "250")),
            "sampler": _param(config, "default_sampler", "ddpm"),
        }
        self.fill_delay = int(_param(config, "fill_delay_us", "2000") or 0) / 1e6
        workers = max(1, int(_param(config, "workers", "1") or 1))
        # One Sampler per worker (its own sessions / CUDA stream); the first also validates requests.
        self.samplers = [Sampler.load(self.engines, backend, **options) for _ in range(workers)]
        self.sampler = self.samplers[0]
        self.rows = self.sampler.batch
        self.engine_runs: dict[int, int] = {}  # filled rows → runs
        self._metrics = _metrics(args.get("model_name", "dit_sampler"), args.get("model_instance_name", ""))
        self._queue: deque[list] = deque()  # [job, group index, next row] per row group, oldest first
        self._cond = threading.Condition()
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._work, args=(s,), name=f"dit_sampler_rows_{i}", daemon=True)
            for i, s in enumerate(self.samplers)
        ]
        for w in self._workers:
            w.start()

    # -- requests in ---------------------------------------------------------------------------------
    def execute(self, requests: list):
        """Queue the rows of each request; a bad request is answered with its error at once."""
        jobs = []
        for request in requests:
            sender = request.get_response_sender()
            try:
                groups = [(self.sampler.request(req), rows) for req, rows in _groups(request, self.defaults)]
            except Exception as e:  # noqa: BLE001 — a bad request must not take the model down
                self._send(sender, error=e)
                continue
            jobs.append(_Job(sender, groups))
        with self._cond:  # all at once: a worker sees the whole batch Triton handed over
            self._queue.extend([job, g, 0] for job in jobs for g in range(len(job.groups)))
            self._cond.notify_all()
        return None  # the responses go through each request's response sender

    # -- the worker ------------------------------------------------------------------------------------
    @staticmethod
    def _key(entry: list) -> tuple:
        req = entry[0].groups[entry[1]][0]
        return (req.cfg_scale, req.steps, req.sampler, req.noise, req.cache_interval, req.cache_order)

    def _rows_like_head(self) -> int:
        key = self._key(self._queue[0])
        return sum(len(e[0].groups[e[1]][0].labels) - e[2] for e in self._queue if self._key(e) == key)

    def _take(self) -> list[tuple[_Job, int, int, int]]:
        """Up to the engine's rows from the queue: (job, group, first row, end row), oldest first."""
        key, free, parts = self._key(self._queue[0]), self.rows, []
        for entry in list(self._queue):
            if self._key(entry) != key:
                continue
            job, g, lo = entry
            hi = min(len(job.groups[g][0].labels), lo + free)
            parts.append((job, g, lo, hi))
            free -= hi - lo
            entry[2] = hi
            if hi == len(job.groups[g][0].labels):
                self._queue.remove(entry)
            if not free:
                break
        return parts

    def _work(self, sampler: Sampler) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                deadline = time.monotonic() + self.fill_delay
                while self._queue and self._rows_like_head() < self.rows and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._queue:  # another worker took the rows meanwhile
                    continue
                parts = self._take()
            self._run(parts, sampler)

    def _run(self, parts: list[tuple[_Job, int, int, int]], sampler: Sampler) -> None:
        subs = []
        for job, g, lo, hi in parts:
            req = job.groups[g][0]
            subs.append(replace(req, labels=req.labels[lo:hi], first_index=req.first_index + lo))
        try:
            images: list = self._generate(subs, sampler)
        except Exception:  # noqa: BLE001 — run each alone to give the failure to its own request
            images = []
            for sub in subs:
                try:
                    images.append(self._generate([sub], sampler)[0])
                except Exception as e:  # noqa: BLE001
                    images.append(e)
        rows = sum(hi - lo for _, _, lo, hi in parts)
        finished: list[tuple[_Job, Exception | None]] = []
        with self._cond:  # parts of one request may finish on two workers at once
            self.engine_runs[rows] = self.engine_runs.get(rows, 0) + 1
            self._metrics(rows)
            for (job, g, lo, hi), img in zip(parts, images):
                if job.done:
                    continue
                if isinstance(img, Exception):
                    finished.append((job, self._drop(job, img)))
                    continue
                if job.out is None:
                    job.out = np.empty((sum(len(r) for _, r in job.groups), *img.shape[1:]), dtype=np.uint8)
                job.out[job.groups[g][1][lo:hi]] = img
                job.left -= hi - lo
                if job.left == 0:
                    job.done = True
                    finished.append((job, None))
        for job, error in finished:
            self._send(job.sender, out=job.out, error=error)

    @staticmethod
    def _generate(reqs: list[SampleRequest], sampler: Sampler) -> list[np.ndarray]:
        """uint8 images per request; rows of compatible requests share engine runs (`generate_many`)."""
        if len(reqs) > 1:
            return [to_uint8(r.images) for r in sampler.generate_many(reqs)]
        return [to_uint8(sampler.generate(reqs[0]).images)]

    # -- responses out ---------------------------------------------------------------------------------
    def _drop(self, job: _Job, error: Exception) -> Exception:
        """Mark a failed request done and drop its rows still queued (call with the lock held)."""
        job.done = True
        for entry in [e for e in self._queue if e[0] is job]:
            self._queue.remove(entry)
        return error

    def _send(self, sender, out: np.ndarray | None = None, error: Exception | None = None) -> None:
        if error is not None:
            resp = pb_utils.InferenceResponse(error=self._error(error))
        else:
            resp = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", out)])
        sender.send(resp, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _error(self, e: Exception):
        if isinstance(e, UserError):  # the client's mistake: INVALID_ARG (HTTP 400) where the stub has codes
            code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
            return pb_utils.TritonError(str(e), code) if code is not None else pb_utils.TritonError(str(e))
        return pb_utils.TritonError(f"{type(e).__name__}: {e}")

    def finalize(self) -> None:
        workers = getattr(self, "_workers", [])
        if workers:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            for w in workers:
                w.join(timeout=60)
        for entry in list(getattr(self, "_queue", ())):
            if not entry[0].done:
                entry[0].done = True
                self._send(entry[0].sender, error=RuntimeError("the model is being unloaded"))
        for sampler in getattr(self, "samplers", []):
            sampler.close()


def _metrics(model: str, instance: str):
    """A counter of engine runs per filled rows as a Triton custom metric (a no-op without metrics)."""
    family_cls = getattr(pb_utils, "MetricFamily", None)
    if family_cls is None:
        return lambda rows: None
    try:
        family = family_cls(
            name="dit_sampler_engine_runs",
            description="sampler engine runs (one step loop over one engine batch) by rows filled",
            kind=family_cls.COUNTER,
        )
    except Exception:  # noqa: BLE001 — metrics disabled in this server
        return lambda rows: None
    metrics: dict[int, object] = {}

    def count(rows: int) -> None:
        try:
            if rows not in metrics:
                metrics[rows] = family.Metric(
                    labels={"model": model, "instance": instance, "rows": str(rows)}
                )
            metrics[rows].increment(1)
        except Exception:  # noqa: BLE001 — counting must never fail a request
            pass

    count.family = family  # keep the family alive as long as its metrics
    return count
