"""The PyTorch reference sampler: the official loop restated around `SamplerStep`.

Everything else in dit_export is measured against this. It runs the same step module that is
exported to ONNX, fed the same noise (`noise.NoiseSource`) that every runtime uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from dit_export.errors import UserError
from dit_export.models.dit import DiT
from dit_export.sampling.noise import NoiseSource
from dit_export.sampling.schedule import make_schedule
from dit_export.sampling.step import SamplerStep


def check_request(num_classes: int, labels: Sequence[int], cfg_scale: float) -> None:
    """Reject labels outside [0, num_classes) and guidance below 1, in one line."""
    if len(labels) == 0:
        raise UserError("no class labels given")
    bad = [c for c in labels if not 0 <= int(c) < num_classes]
    if bad:
        raise UserError(f"class id {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    if not cfg_scale >= 1.0:  # also rejects NaN
        raise UserError(f"--cfg-scale must be ≥ 1 (1 = no guidance), got {cfg_scale}")


@torch.inference_mode()
def sample_latents(
    model: DiT,
    labels: Sequence[int],
    noise: NoiseSource,
    *,
    steps: int | str = 250,
    sampler: str = "ddpm",
    cfg_scale: float = 4.0,
    progress: bool = True,
) -> torch.Tensor:
    """Final latents (N,C,L,L) fp32 for `labels`: the official p_sample / ddim loop.

    cfg_scale 1 runs no guidance branch (N rows, as the official sample_ddp.py); above 1 the
    batch is doubled with null labels inside the step (as forward_with_cfg).
    """
    cfg = model.config
    check_request(cfg.num_classes, labels, cfg_scale)
    schedule = make_schedule(steps, sampler)
    step = SamplerStep(model, guided=cfg_scale > 1.0).eval()
    n = len(labels)
    y = torch.tensor([int(c) for c in labels], dtype=torch.int64)
    guidance = torch.tensor([cfg_scale], dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(noise.initial()))
    coefs = torch.from_numpy(schedule.coefs)
    it = tqdm(range(schedule.num_steps), desc=f"{sampler} {schedule.spec}", unit="step", disable=not progress)
    for k in it:
        t = torch.full((n,), int(schedule.timesteps[k]), dtype=torch.int64)
        eps_noise = torch.from_numpy(np.ascontiguousarray(noise.step(k)))
        x = step(x, t, y, eps_noise, guidance, coefs[k])
    return x
