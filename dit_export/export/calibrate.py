"""Calibration data for int8 / fp8 graphs: the inputs of every step of real sampler trajectories.

The fp32 PyTorch reference loop (`sampling.reference.sample_latents`: the one loop every backend
is checked against, running the very step module exported as `dit_step`) samples a few chunks
of the export's batch — one chunk per seed, labels spread over the classes — and a forward
pre-hook records, at every step, the step module's inputs (for `dit_step.onnx`) and the DiT's own
2N-row inputs (for `dit.onnx`: both guided halves, labels then the null label). That is the
same stream the fp32 `dit_step` graph sees in ONNX Runtime (they agree to ~1e-6 rel-L2, see
compare.py), taken where the model already sits in memory: the export stage sits below the
runtime, so it drives the reference loop rather than the runtime's.

With the forecast cache's graphs in the export, the full-step graph (`dit_step_full`) is
calibrated WITH THE CACHE ON, as Q&C (Ding et al., arXiv 2503.02508) found necessary — naive
quantization plus caching raised DiT FID 5.45 → 13.67 until calibrated on cached trajectories:
the same seeds also run the reference loop cached (`CalibSettings.cache`: (interval, order) pairs,
default the README's recommended N = 4, O = 0) and the pre-hook records the full step's inputs at
its full steps, `cache` and `cache_coef` included. Cache slots above a setting's order are zero
at every full step (their coefficients are 0), so the set stores only the used slots and `feeds`
pads the rest with zeros: lossless. The stored file keeps no `cache` at all when the traced full
graph proves it reaches no quantized GEMM (`CalibSet.without_cache`; the policy's GEMMs read the
step's activations, the cache only feeds the refreshed cache's differences), as no calibrated range
can depend on it: 2.6 MB instead of 39 MB for tiny-digits (and XL/2 would store 0.13 GB per image
per full step otherwise).
`cache=()` calibrates the full graph on the uncached trajectories instead (zero cache; the
comparison the Q&C claim is measured against). The forecast graph has no GEMM the policy
quantizes (no attention or MLP), so it needs no calibration.

The set is written beside the graphs (`calibration.npz`, its settings in the same file) and
reused by the next export of the same folder when model, batch and settings are unchanged.
Deterministic for a seed: Philox noise, fixed labels, one thread count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.sampling import samplers
from dit_export.sampling.cache import CACHE_INPUT, FULL_GRAPH, check_cache
from dit_export.sampling.step import STEP_INPUTS, cached_step_io

CALIB_FILE = "calibration.npz"
DIT_INPUTS = ("x", "t", "y")
FULL_INPUTS = cached_step_io("full")[0]
DEFAULT_CACHE = ((4, 0),)  # the README's recommended ddpm-50 setting (--cache-interval 4 --cache-order 0)
_META = "__meta__"


@dataclass(frozen=True)
class CalibSettings:
    """Which trajectories calibrate: sampler and steps, one chunk (the export batch) per seed."""

    sampler: str = "ddpm"
    steps: int = 50
    seeds: tuple[int, ...] = (0, 1)
    cfg_scale: float = 4.0
    # (cache interval N ≥ 2, cache order O) per cached trajectory that calibrates dit_step_full at its
    # full steps (exports with the cache graphs only); (): the uncached trajectories' steps instead
    cache: tuple[tuple[int, int], ...] = DEFAULT_CACHE

    def validate(self, max_order: int | None = None) -> CalibSettings:
        """Normalised settings; `max_order`: the export's --max-cache-order (a cache order above it
        cannot run on its graphs)."""
        spec = samplers.get(self.sampler)  # one-line UserError for an unknown sampler
        steps = int(spec.check_steps(self.steps))
        seeds = tuple(int(s) for s in self.seeds)
        if not seeds or any(s < 0 for s in seeds):
            raise UserError(f"calibration needs at least one seed ≥ 0, got {self.seeds!r}")
        if not self.cfg_scale > 1.0:
            raise UserError(f"calibration samples guided trajectories (cfg > 1), got {self.cfg_scale}")
        cache = []
        for pair in self.cache:
            n, o = (int(v) for v in pair)
            if n < 2:
                raise UserError(
                    f"calibration cache interval {n}: ≥ 2 (a cached trajectory), or no cache setting"
                )
            check_cache(n, o, max_order)
            cache.append((n, o))
        return CalibSettings(spec.name, steps, seeds, float(self.cfg_scale), tuple(dict.fromkeys(cache)))


def calib_labels(seed: int, batch: int, num_classes: int) -> list[int]:
    """The chunk's labels: `batch` classes spread over all of them, a different offset per seed."""
    stride = max(1, num_classes // batch)
    return [int((seed * 7 + i * stride) % num_classes) for i in range(batch)]


@dataclass
class CalibSet:
    """Per graph, per input name: the stacked inputs of every recorded call (K, *shape)."""

    step: dict[str, np.ndarray]
    dit: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)
    full: dict[str, np.ndarray] = field(default_factory=dict)  # dit_step_full's inputs at full steps

    @property
    def calls(self) -> int:
        return int(len(self.step["x"]))

    @property
    def full_calls(self) -> int:
        return int(len(self.full["x"])) if self.full else 0

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for d in (self.step, self.dit, self.full) for a in d.values()))

    def feeds(self, graph: str) -> Iterator[dict[str, np.ndarray]]:
        """One input dict per recorded call, in loop order (what the CalibrationDataReader yields);
        the full graph's `cache` padded with the zero slots the set does not store."""
        if graph == FULL_GRAPH and not self.full:
            raise UserError(
                "this calibration set has no dit_step_full inputs (captured without cache graphs)"
            )
        d = {"dit": self.dit, FULL_GRAPH: self.full}.get(graph, self.step)
        slots = int(self.meta.get("cache", {}).get("slots", 0))
        for k in range(len(next(iter(d.values())))):
            feed = {name: a[k] for name, a in d.items()}
            if graph == FULL_GRAPH and feed[CACHE_INPUT].shape[2] < slots:
                c = feed[CACHE_INPUT]
                pad = np.zeros((*c.shape[:2], slots - c.shape[2], *c.shape[3:]), dtype=c.dtype)
                feed[CACHE_INPUT] = np.concatenate([c, pad], axis=2)
            yield feed

    def without_cache(self, why: str) -> CalibSet:
        """The same set storing none of the full graph's `cache` (fed as zeros): for a graph where it
        reaches no quantized GEMM, so no calibrated range depends on it (`quantize.apply` checks)."""
        if not self.full or self.full[CACHE_INPUT].shape[3] == 0:
            return self
        c = self.full[CACHE_INPUT]
        full = self.full | {CACHE_INPUT: np.zeros((*c.shape[:3], 0, *c.shape[4:]), dtype=c.dtype)}
        meta = json.loads(json.dumps(self.meta))
        meta["cache"] |= {"stored_slots": 0, "cache_bytes_not_stored": int(c.nbytes), "cache_not_stored": why}
        out = CalibSet(self.step, self.dit, meta, full)
        out.meta["bytes"] = out.nbytes
        return out

    def save(self, path: Path) -> None:
        arrays = {f"step/{k}": v for k, v in self.step.items()} | {f"dit/{k}": v for k, v in self.dit.items()}
        arrays |= {f"full/{k}": v for k, v in self.full.items()}
        arrays[_META] = np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), dtype=np.uint8)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CalibSet:
        try:
            with np.load(path) as z:
                meta = json.loads(bytes(z[_META]).decode())
                step = {k[5:]: z[k] for k in z.files if k.startswith("step/")}
                dit = {k[4:]: z[k] for k in z.files if k.startswith("dit/")}
                full = {k[5:]: z[k] for k in z.files if k.startswith("full/")}
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: not a calibration set of dit_export ({e})") from None
        return cls(step, dit, meta, full)


def calib_key(settings: CalibSettings, model_spec: dict, batch: int, cache_slots: int = 0) -> dict:
    """What the set depends on: a stored set with the same key is reused as is. Without cache
    graphs (`cache_slots` 0) the cache settings play no part."""
    d = asdict(settings)
    if not cache_slots:
        d.pop("cache")
    key = {"settings": d, "model": model_spec, "batch": int(batch)}
    if cache_slots:
        key["cache_slots"] = int(cache_slots)
    return json.loads(json.dumps(key))  # as stored: tuples become lists


def capture(
    model, batch: int, settings: CalibSettings, key: dict, log=print, cache_slots: int = 0
) -> CalibSet:
    """Run the reference loop per seed and record every step's inputs (see the module doc); with
    `cache_slots` (the export's cache graphs), also the cached loops' full-step inputs."""
    import torch

    from dit_export.sampling.noise import PhiloxNoise
    from dit_export.sampling.reference import sample_latents
    from dit_export.sampling.step import CachedSamplerStep, SamplerStep

    s = settings.validate(cache_slots - 1 if cache_slots else None)
    cfg = model.config
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    step_rec: dict[str, list[np.ndarray]] = {k: [] for k in STEP_INPUTS}
    dit_rec: dict[str, list[np.ndarray]] = {k: [] for k in DIT_INPUTS}
    full_rec: dict[str, list[np.ndarray]] = {k: [] for k in FULL_INPUTS}
    # slots stored: those a setting's order can fill (the rest are zero at every full step)
    stored = max((o + 1 for _, o in s.cache), default=0) if cache_slots else 0
    running = {"cached": False}

    def hook(module, args):
        if isinstance(module, CachedSamplerStep):
            if module.mode == "full":
                for name, a in zip(FULL_INPUTS, args, strict=True):
                    a = a.detach().cpu().numpy()
                    if name == CACHE_INPUT:
                        if a[:, :, stored:].any():  # what makes storing only the used slots lossless
                            raise RuntimeError(f"cache slots ≥ {stored} are not zero at a full step")
                        a = a[:, :, :stored]
                    full_rec[name].append(a.copy())
        elif running["cached"]:
            return
        elif isinstance(module, SamplerStep):
            for name, a in zip(STEP_INPUTS, args, strict=True):
                step_rec[name].append(a.detach().cpu().numpy().copy())
        elif module is model:
            for name, a in zip(DIT_INPUTS, args[:3], strict=True):
                dit_rec[name].append(a.detach().cpu().numpy().copy())

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    # One thread: the same bits on any machine load (and a loaded 2-core machine runs torch's
    # spinning 2-thread pool ~18x slower than one thread: 37 s vs 2.1 s for tiny-digits ddpm-50).
    torch.set_num_threads(1)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        for seed in s.seeds:
            labels = calib_labels(seed, batch, cfg.num_classes)
            noise = PhiloxNoise(seed, np.arange(batch, dtype=np.int64), shape)
            run = dict(steps=s.steps, sampler=s.sampler, cfg_scale=s.cfg_scale, progress=False)
            sample_latents(model, labels, noise, **run)
            running["cached"] = True
            for interval, order in s.cache if cache_slots else ():
                noise = PhiloxNoise(seed, np.arange(batch, dtype=np.int64), shape)
                sample_latents(
                    model,
                    labels,
                    noise,
                    **run,
                    cache_interval=interval,
                    cache_order=order,
                    cache_slots=cache_slots,
                )
            running["cached"] = False
    finally:
        handle.remove()
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    if not step_rec["x"] or len(dit_rec["x"]) != len(step_rec["x"]):
        raise UserError("calibration recorded no step inputs: the reference loop did not run the step module")
    step = {k: np.stack(v) for k, v in step_rec.items()}
    step["coef"] = step["coef"].reshape(len(step["coef"]), -1)
    dit = {k: np.stack(v) for k, v in dit_rec.items()}
    meta = {
        "key": key,
        "calls": len(step["x"]),
        "seconds": round(seconds, 3),
        "labels": {str(seed): calib_labels(seed, batch, cfg.num_classes) for seed in s.seeds},
        "source": "PyTorch fp32 reference loop (sampling.reference), every step, both guided halves",
    }
    full = _full_inputs(full_rec, step, model, batch, cache_slots, s, meta)
    out = CalibSet(step, dit, meta, full)
    out.meta["bytes"] = out.nbytes
    cached = f"; dit_step_full: {out.full_calls} full-step calls, {meta['cache']['source']}" if full else ""
    log(
        f"calibration: {out.calls} step calls ({s.sampler}-{s.steps}, seeds {list(s.seeds)}){cached}, "
        f"{seconds:.1f} s"
    )
    return out


def _full_inputs(full_rec, step, model, batch, cache_slots, s: CalibSettings, meta: dict) -> dict:
    """The full graph's stacked inputs (and `meta["cache"]`): the cached loops' full steps, or with
    `s.cache` empty the uncached steps with a zero cache and the [1, 0, …] coefficient row."""
    if not cache_slots:
        return {}
    if s.cache:
        if not full_rec["x"]:
            raise UserError("calibration recorded no full-step inputs: the cached reference loop did not run")
        full = {k: np.stack(v) for k, v in full_rec.items()}
        full["coef"] = full["coef"].reshape(len(full["coef"]), -1)
        how = f"cached reference loops (N, O) {[list(p) for p in s.cache]}, full steps, cache on"
    else:
        from dit_export.sampling.cache import config_cache_shape

        calls = len(step["x"])
        full = dict(step)
        rows = config_cache_shape(model.config, batch, 0)
        full[CACHE_INPUT] = np.zeros((calls, *rows), dtype=np.float32)  # 0 slots stored: all zero
        full["cache_coef"] = np.tile(np.eye(1, cache_slots, dtype=np.float32), (calls, 1))
        how = "uncached reference loop, every step, zero cache (cache off)"
    meta["cache"] = {
        "settings": [list(p) for p in s.cache],
        "slots": int(cache_slots),
        "stored_slots": int(full[CACHE_INPUT].shape[3]),
        "full_calls": len(full["x"]),
        "source": how,
    }
    return full


def load_or_capture(
    previous: Path | None,
    model,
    batch: int,
    settings: CalibSettings,
    model_spec: dict,
    log=print,
    cache_slots: int = 0,
) -> tuple[CalibSet, bool]:
    """(the set, reused?): the folder's stored set when its key matches, else a fresh capture."""
    key = calib_key(
        settings.validate(cache_slots - 1 if cache_slots else None), model_spec, batch, cache_slots
    )
    if previous is not None and previous.is_file():
        try:
            old = CalibSet.load(previous)
        except UserError:
            old = None
        if old is not None and old.meta.get("key") == key:
            log(f"calibration: reusing {previous} ({old.calls} step calls)")
            return old, True
    return capture(model, batch, settings, key, log, cache_slots), False
