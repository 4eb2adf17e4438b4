"""Calibration data for int8 / fp8 graphs: the inputs of every step of real sampler trajectories.

The fp32 PyTorch reference loop (`sampling.reference.sample_latents`: the one loop every backend
is checked against, running the very step module exported as `dit_step`) samples a few chunks
of the export's batch — one chunk per seed, labels spread over the classes — and a forward
pre-hook records, at every step, the step module's inputs (for `dit_step.onnx`) and the DiT's own
2N-row inputs (for `dit.onnx`: both guided halves, labels then the null label). That is the
same stream the fp32 `dit_step` graph sees in ONNX Runtime (they agree to ~1e-6 rel-L2, see
compare.py), taken where the model already sits in memory: the export stage sits below the
runtime, so it drives the reference loop rather than the runtime's.

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
from dit_export.sampling.step import STEP_INPUTS

CALIB_FILE = "calibration.npz"
DIT_INPUTS = ("x", "t", "y")
_META = "__meta__"


@dataclass(frozen=True)
class CalibSettings:
    """Which trajectories calibrate: sampler and steps, one chunk (the export batch) per seed."""

    sampler: str = "ddpm"
    steps: int = 50
    seeds: tuple[int, ...] = (0, 1)
    cfg_scale: float = 4.0

    def validate(self) -> CalibSettings:
        spec = samplers.get(self.sampler)  # one-line UserError for an unknown sampler
        steps = int(spec.check_steps(self.steps))
        seeds = tuple(int(s) for s in self.seeds)
        if not seeds or any(s < 0 for s in seeds):
            raise UserError(f"calibration needs at least one seed ≥ 0, got {self.seeds!r}")
        if not self.cfg_scale > 1.0:
            raise UserError(f"calibration samples guided trajectories (cfg > 1), got {self.cfg_scale}")
        return CalibSettings(spec.name, steps, seeds, float(self.cfg_scale))


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

    @property
    def calls(self) -> int:
        return int(len(self.step["x"]))

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for d in (self.step, self.dit) for a in d.values()))

    def feeds(self, graph: str) -> Iterator[dict[str, np.ndarray]]:
        """One input dict per recorded call, in loop order (what the CalibrationDataReader yields)."""
        d = self.dit if graph == "dit" else self.step
        for k in range(len(next(iter(d.values())))):
            yield {name: a[k] for name, a in d.items()}

    def save(self, path: Path) -> None:
        arrays = {f"step/{k}": v for k, v in self.step.items()} | {f"dit/{k}": v for k, v in self.dit.items()}
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
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: not a calibration set of dit_export ({e})") from None
        return cls(step, dit, meta)


def calib_key(settings: CalibSettings, model_spec: dict, batch: int) -> dict:
    """What the set depends on: a stored set with the same key is reused as is."""
    key = {"settings": asdict(settings), "model": model_spec, "batch": int(batch)}
    return json.loads(json.dumps(key))  # as stored: tuples become lists


def capture(model, batch: int, settings: CalibSettings, key: dict, log=print) -> CalibSet:
    """Run the reference loop per seed and record every step's inputs (see the module doc)."""
    import torch

    from dit_export.sampling.noise import PhiloxNoise
    from dit_export.sampling.reference import sample_latents
    from dit_export.sampling.step import SamplerStep

    s = settings.validate()
    cfg = model.config
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    step_rec: dict[str, list[np.ndarray]] = {k: [] for k in STEP_INPUTS}
    dit_rec: dict[str, list[np.ndarray]] = {k: [] for k in DIT_INPUTS}

    def hook(module, args):
        if isinstance(module, SamplerStep):
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
            sample_latents(
                model, labels, noise, steps=s.steps, sampler=s.sampler, cfg_scale=s.cfg_scale, progress=False
            )
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
    out = CalibSet(step, dit, meta)
    out.meta["bytes"] = out.nbytes
    log(
        f"calibration: {out.calls} step calls ({s.sampler}-{s.steps}, seeds {list(s.seeds)}), {seconds:.1f} s"
    )
    return out


def load_or_capture(
    previous: Path | None, model, batch: int, settings: CalibSettings, model_spec: dict, log=print
) -> tuple[CalibSet, bool]:
    """(the set, reused?): the folder's stored set when its key matches, else a fresh capture."""
    key = calib_key(settings.validate(), model_spec, batch)
    if previous is not None and previous.is_file():
        try:
            old = CalibSet.load(previous)
        except UserError:
            old = None
        if old is not None and old.meta.get("key") == key:
            log(f"calibration: reusing {previous} ({old.calls} step calls)")
            return old, True
    return capture(model, batch, settings, key, log), False
