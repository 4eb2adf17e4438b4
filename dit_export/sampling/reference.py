"""The PyTorch reference sampler: the official loop restated around `SamplerStep`.

The multistep solvers' history (`schedule.STATE_NAMES`) is carried from one step's outputs to the
next step's inputs exactly as every runtime does it, starting from zeros.

Everything else in dit_export is measured against this. It runs the same step module that is
exported to ONNX, fed the same noise (`noise.NoiseSource`) that every runtime uses. A step whose
output is not finite stops the loop with a one-line error naming it, as the runtime does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from dit_export.errors import UserError
from dit_export.models.dit import DiT
from dit_export.sampling import samplers
from dit_export.sampling.cache import DEFAULT_ORDER, cache_plan, check_cache, config_cache_shape
from dit_export.sampling.noise import NoiseSource, make_noise
from dit_export.sampling.request import SampleRequest
from dit_export.sampling.schedule import STATE_NAMES
from dit_export.sampling.step import CachedSamplerStep, SamplerStep


def check_request(num_classes: int, labels: Sequence[int], cfg_scale: float) -> None:
    """Reject bad labels and guidance in one line (`SampleRequest.validate`'s checks)."""
    SampleRequest(tuple(labels), cfg_scale=cfg_scale, steps=1).validate(num_classes)


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
    cache_interval: int = 1,
    cache_order: int = DEFAULT_ORDER,
    cache_slots: int | None = None,
) -> torch.Tensor:
    """Final latents (N,C,L,L) fp32 for `labels`: the official p_sample / ddim loop.

    cfg_scale 1 runs no guidance branch (N rows, as the official sample_ddp.py); above 1 the
    batch is doubled with null labels inside the step (as forward_with_cfg). `cache_interval` > 1
    runs the forecast cache (`sampling.cache`: the full and forecast steps the runtimes export,
    always on the doubled batch; `cache_slots` defaults to order + 1, the graphs' may be larger).
    """
    cfg = model.config
    check_request(cfg.num_classes, labels, cfg_scale)
    spec = samplers.get(sampler)
    schedule = spec.schedule(steps)
    total = schedule.num_steps
    n = len(labels)
    check_cache(cache_interval, cache_order)
    if cache_interval > 1:
        plan = cache_plan(total, cache_interval, cache_order, cache_slots or cache_order + 1)
        steps_of = {m: CachedSamplerStep(model, m).eval() for m in ("full", "forecast")}
        shape = config_cache_shape(model.config, n, plan.slots)
        cache = torch.zeros(shape, dtype=torch.float32)
        cache_coefs = torch.from_numpy(plan.coefs)
    else:
        step = SamplerStep(model, guided=cfg_scale > 1.0, with_state=True).eval()
    y = torch.tensor([int(c) for c in labels], dtype=torch.int64)
    guidance = torch.tensor([cfg_scale], dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(noise.initial()))
    state = [torch.zeros_like(x) for _ in STATE_NAMES]  # solver history, zero at the first step
    coefs = torch.from_numpy(schedule.coefs)
    it = tqdm(range(total), desc=f"{sampler} {schedule.spec}", unit="step", disable=not progress)
    for k in it:
        t_k = int(schedule.timesteps[k])
        t = torch.full((n,), t_k, dtype=torch.int64)
        eps_noise = torch.from_numpy(
            np.ascontiguousarray(noise.step(k))
        )  # drawn always: keeps a stream in step
        if not spec.draws_noise:  # as the runtimes bind: zeros (0 · a non-finite draw would not be 0)
            eps_noise = torch.zeros_like(eps_noise)
        if cache_interval == 1:
            x, *state = step(x, t, y, eps_noise, guidance, coefs[k], *state)
        elif plan.full[k]:
            x, *state, cache = steps_of["full"](
                x, t, y, eps_noise, guidance, coefs[k], *state, cache, cache_coefs[k]
            )
        else:
            x, *state = steps_of["forecast"](
                x, t, y, eps_noise, guidance, coefs[k], *state, cache, cache_coefs[k]
            )
        if not bool(torch.isfinite(x).all()):
            bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(x))[:, 0]})
            raise UserError(
                f"PyTorch reference: NaN/Inf in the step output first at step {k + 1}/{total} (t={t_k}; "
                f"images {', '.join(map(str, bad[:8]))}): the model's weights or inputs are not finite"
            )
    return x


def request_latents(model: DiT, request: SampleRequest, *, progress: bool = False) -> torch.Tensor:
    """`sample_latents` of one `SampleRequest` (the reference twin of the runtime's `generate`): its
    noise kind for images first_index, …, its sampler, steps, guidance and forecast cache."""
    cfg, r = model.config, request
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    noise = make_noise(r.noise, r.seed, len(r.labels), shape, guided=r.guided, first_image=r.first_index)
    return sample_latents(
        model,
        list(r.labels),
        noise,
        steps=r.steps,
        sampler=r.sampler,
        cfg_scale=r.cfg_scale,
        progress=progress,
        cache_interval=r.cache_interval,
        cache_order=r.cache_order,
    )
