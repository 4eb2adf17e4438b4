"""The forecast step cache (`dit_export.sampling.cache`, `models.cached`, `CachedSamplerStep`).

- schedule: the full steps are TaylorSeer-DiT's `cal_type` (restated here from its counter rule:
  the first two loop steps full, then a counter that forces a full step when it reaches N−1);
- Newton forecast: on uneven step spacing it reproduces every polynomial of degree ≤ O exactly;
- order 0 (FORA) reuses the last full step's branch outputs exactly, against a plain torch loop
  that stores and reuses them; interval 1 is the uncached sampler bit for bit;
- the full step computes exactly the uncached network; bad (interval, order) → one line.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dit_export.errors import UserError
from dit_export.models.checkpoints import perturb_zero_initialised
from dit_export.models.configs import DiTConfig
from dit_export.models.dit import DiT
from dit_export.sampling import samplers
from dit_export.sampling.cache import MAX_ORDER, cache_plan, cache_shape, check_cache, full_steps
from dit_export.sampling.noise import make_noise
from dit_export.sampling.reference import sample_latents
from dit_export.sampling.step import CachedSamplerStep, SamplerStep, cached_example_inputs, example_inputs

LABELS = [3, 7]


def _taylorseer_full(steps: int, interval: int) -> list[bool]:
    """TaylorSeer-DiT's rule: step index counts down from steps−1; `first_enhance` = 2."""
    counter, out = 0, []
    for step in range(steps - 1, -1, -1):
        first = step > steps - 2 - 1
        if first or counter == interval - 1:
            counter = 0
            out.append(True)
        else:
            counter += 1
            out.append(False)
    return out


@pytest.mark.parametrize("steps", [1, 2, 7, 50, 250])
@pytest.mark.parametrize("interval", [1, 2, 3, 4, 5])
def test_full_steps_follow_taylorseer(steps, interval):
    assert full_steps(steps, interval).tolist() == _taylorseer_full(steps, interval)


@pytest.mark.parametrize("order", range(MAX_ORDER + 1))
@pytest.mark.parametrize("interval", [2, 3, 5])
def test_newton_forecast_is_exact_for_polynomials(order, interval):
    """Refresh and forecast exactly as the graphs do (float64 here) on f(k) = a polynomial of degree O."""
    steps, slots = 40, MAX_ORDER + 1
    plan = cache_plan(steps, interval, order, slots)
    coeffs = np.random.default_rng(order).normal(size=order + 1)
    f = lambda k: np.polyval(coeffs, k / 10.0)  # noqa: E731
    d = np.zeros(slots)
    seen = 0
    for k in range(steps):
        row = plan.coefs[k].astype(np.float64)
        if plan.full[k]:
            new = [f(k)]
            for i in range(1, slots):
                new.append((new[-1] - d[i - 1]) * row[i])
            d, seen = np.array(new), seen + 1
        elif seen >= order + 1:  # enough full steps for every order: the forecast is exact
            assert abs(float(row @ d) - f(k)) <= 1e-5 * max(1.0, abs(f(k))), (k, plan.coefs[k])
    assert plan.num_full < steps


def test_first_forecasts_use_the_orders_they_have():
    plan = cache_plan(10, 3, 2, 4)
    assert plan.full.tolist() == [True, True, False, False, True, False, False, True, False, False]
    np.testing.assert_array_equal(plan.coefs[1], [1, 1, 0, 0])  # a_1 = 1/(1−0); no second difference yet
    np.testing.assert_array_equal(plan.coefs[2], [1, 1, 0, 0])  # b_1 = 2−1 (two points: linear)
    np.testing.assert_allclose(plan.coefs[4], [1, 1 / 3, 1 / 4, 0])
    np.testing.assert_allclose(plan.coefs[5], [1, 1, 1 * 4, 0])  # b_2 = (5−4)(5−1)


@pytest.mark.parametrize(
    "interval, order, match",
    [(0, 2, "interval 0"), (2, 4, "order 4"), (2, -1, "order -1"), (1.5, 2, "interval 1.5"), (3, 3, "re-export")],
)
def test_bad_cache_settings_are_one_line(interval, order, match):
    with pytest.raises(UserError, match=match) as e:
        check_cache(interval, order, max_order=2)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def net():
    cfg = DiTConfig(depth=3, hidden_size=64, num_heads=2, patch_size=8, input_size=32, num_classes=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        m = DiT(cfg).eval()
    perturb_zero_initialised(m, seed=5, std=0.1)
    return m


def _sample(net, sampler="ddim", steps=12, **cache):
    noise = make_noise("philox", 0, len(LABELS), (4, 32, 32), True)
    return sample_latents(net, LABELS, noise, steps=steps, sampler=sampler, progress=False, **cache)


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m"])
def test_interval_one_is_the_uncached_sampler(net, sampler):
    assert torch.equal(_sample(net, sampler), _sample(net, sampler, cache_interval=1, cache_order=3))


@torch.inference_mode()
def test_full_step_is_the_uncached_step(net):
    cfg = net.config
    ins = list(example_inputs(2, cfg.in_channels, cfg.input_size))
    gen = torch.Generator().manual_seed(0)
    ins[0], ins[3] = torch.randn(ins[0].shape, generator=gen), torch.randn(ins[3].shape, generator=gen)
    ins[1][:], ins[2][:] = 500, torch.tensor([1, 4])
    ins[4][:] = 3.0
    ins[5][:] = torch.from_numpy(samplers.get("ddpm").schedule(50).coefs[10])
    shape = cache_shape(cfg.depth, 2, cfg.num_tokens, cfg.hidden_size, 3)
    cached = cached_example_inputs(2, cfg.in_channels, cfg.input_size, shape)
    plain = SamplerStep(net, guided=True, with_state=True)(*ins)
    full = CachedSamplerStep(net, "full")(*ins, *cached[-2:])
    for a, b in zip(plain, full[:-1]):
        assert torch.equal(a, b)
    assert full[-1].shape == shape and bool(full[-1][:, :, 0].abs().sum() > 0)


@torch.inference_mode()
def _fora_by_hand(net, sampler: str, steps: int, interval: int) -> torch.Tensor:
    """FORA as a plain loop: run the blocks, keep each branch output at full steps, reuse it otherwise."""
    spec = samplers.get(sampler)
    sched = spec.schedule(steps)
    full = full_steps(steps, interval)
    n = len(LABELS)
    step = SamplerStep(net, guided=True, with_state=True)
    noise = make_noise("philox", 0, n, (4, 32, 32), True)
    x = torch.from_numpy(np.ascontiguousarray(noise.initial()))
    y = torch.tensor(LABELS)
    guidance = torch.tensor([4.0])
    state = [torch.zeros_like(x) for _ in range(3)]
    stored: dict[tuple[int, int], torch.Tensor] = {}
    for k in range(steps):
        t = torch.full((n,), int(sched.timesteps[k]))
        xx, tt, yy = step.denoiser.doubled(x, t, y)
        h, c = net.embed(xx, tt, yy)
        for b, blk in enumerate(net.blocks):
            sm, cm, gm, sf, cf, gf = blk.modulation(c)
            if full[k]:
                stored[b, 0] = blk.attn_branch(h, sm, cm)
            h = h + gm.unsqueeze(1) * stored[b, 0]
            if full[k]:
                stored[b, 1] = blk.mlp_branch(h, sf, cf)
            h = h + gf.unsqueeze(1) * stored[b, 1]
        out = step.denoiser.guide(net.head(h, c), guidance)
        eps_noise = torch.from_numpy(np.ascontiguousarray(noise.step(k)))
        if not spec.draws_noise:
            eps_noise = torch.zeros_like(eps_noise)
        x, *state = step.solve(x, out, eps_noise, torch.from_numpy(sched.coefs[k]), *state)
    return x


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_order_zero_reuses_branch_outputs_exactly(net, sampler):
    ours = _sample(net, sampler, cache_interval=3, cache_order=0, cache_slots=3)
    assert torch.equal(ours, _fora_by_hand(net, sampler, 12, 3))


def test_taylor_forecast_tracks_the_uncached_sampler(net):
    """Higher orders forecast better than reuse on a smooth trajectory (here: ddim-50, interval 3)."""
    ref = _sample(net, "ddim", 50)
    err = {o: float((_sample(net, "ddim", 50, cache_interval=3, cache_order=o) - ref).norm() / ref.norm()) for o in (0, 1, 2)}
    assert all(math.isfinite(e) and e < 0.2 for e in err.values()), err
    assert err[1] < err[0] and err[2] < err[0], err
