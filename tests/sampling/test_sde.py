"""DPM-Solver++(2M) SDE and Karras sigmas (issue 23): diffusers parity, closed form, noise, bad input.

- diffusers: on a diffusers-format checkpoint, our reference loop's final latents equal
  `DiTPipeline` run with `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")` (and
  `use_karras_sigmas=True`, for the ODE solver too) when both get the same initial latent and the
  same per-step noise (fed to diffusers through `step(..., variance_noise=...)`), guided and
  unguided, at two step counts.
- closed form (Gaussian data, exact ε): the step module equals the coefficient rows propagated in
  float64 with the same noise; with many steps the SDE lands on the data distribution and the
  Karras ODE on the exact probability-flow map.
- the per-step noise is the Philox draw DDPM uses: an image depends only on (seed, its index),
  whatever the batch split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sampler_closed_form import MU, S2, GaussianDataDenoiser
from test_solvers import LABELS, PARITY_REL_L2, _CaptureVae, _exact_ode_map, _rel, diffusers_pair  # noqa: F401

from dit_export.errors import UserError
from dit_export.sampling import samplers
from dit_export.sampling.noise import make_noise
from dit_export.sampling.reference import sample_latents
from dit_export.sampling.request import SampleRequest
from dit_export.sampling.samplers import make_schedule
from dit_export.sampling.samplers.dpmpp_sde import diffusers_alphas_cumprod, karras_points
from dit_export.sampling.schedule import COEF_NAMES, linear_betas

diffusers = pytest.importorskip("diffusers")

NEW = ("dpm++2m-sde", "dpm++2m-sde-karras", "dpm++2m-karras")
SCHEDULER_KW = {
    "dpm++2m-sde": dict(algorithm_type="sde-dpmsolver++"),
    "dpm++2m-sde-karras": dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True),
    "dpm++2m-karras": dict(use_karras_sigmas=True),
}
COL = {n: i for i, n in enumerate(COEF_NAMES)}


def _scheduler(sampler: str):
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        **SCHEDULER_KW[sampler],
    )


class _TorchInitialPhiloxSteps:
    """DiTPipeline's initial latent (torch.manual_seed(seed)), Philox per-step noise; records the
    per-step noise the loop read so the same arrays can be handed to diffusers."""

    def __init__(self, n: int, shape: tuple[int, ...], seed: int = 0):
        self.torch = make_noise("torch", seed, n, shape, guided=False)
        self.philox = make_noise("philox", seed, n, shape, guided=False)
        self.read: dict[int, np.ndarray] = {}

    def initial(self) -> np.ndarray:
        return self.torch.initial()

    def step(self, k: int) -> np.ndarray:
        self.read[k] = self.philox.step(k)
        return self.read[k]


def _diffusers_latents(theirs, sampler: str, steps: int, cfg_scale: float, step_noise: list[np.ndarray]):
    sched = _scheduler(sampler)
    calls = []
    plain_step = sched.step

    def step(model_output, timestep, sample, *args, **kwargs):
        z = torch.from_numpy(step_noise[len(calls)])
        calls.append(int(timestep))
        z = torch.cat([z] * (model_output.shape[0] // z.shape[0]))  # both CFG halves (the second is dropped)
        return plain_step(model_output, timestep, sample, *args, variance_noise=z, **kwargs)

    sched.step = step
    vae = _CaptureVae()
    pipe = diffusers.DiTPipeline(transformer=theirs, vae=vae, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        pipe(LABELS, guidance_scale=cfg_scale, generator=torch.manual_seed(0), num_inference_steps=steps)
    ts, _ = samplers.get(sampler).coefficients(steps)
    assert calls == ts.tolist()  # the network saw our timesteps, one scheduler step each
    return vae.latents


def _ours(model, sampler: str, steps: int, cfg_scale: float, noise=None):
    noise = noise or _TorchInitialPhiloxSteps(len(LABELS), (4, 32, 32))
    got = sample_latents(
        model, LABELS, noise, steps=steps, sampler=sampler, cfg_scale=cfg_scale, progress=False
    )
    return got, noise


@pytest.mark.parametrize("sampler", NEW)
@pytest.mark.parametrize("steps", [6, 15])
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_latents_equal_diffusers_pipeline(diffusers_pair, sampler, steps, cfg_scale):
    ours, theirs = diffusers_pair
    got, noise = _ours(ours, sampler, steps, cfg_scale)
    step_noise = [noise.read.get(k, np.full((3, 4, 32, 32), np.nan, np.float32)) for k in range(steps)]
    ref = _diffusers_latents(theirs, sampler, steps, cfg_scale, step_noise)
    assert got.shape == ref.shape == (3, 4, 32, 32)
    assert _rel(got, ref) <= PARITY_REL_L2, _rel(got, ref)


def test_parity_is_sensitive(diffusers_pair):
    """Far above the tolerance: Karras vs linspace, SDE vs ODE, other per-step noise, other steps."""
    ours, theirs = diffusers_pair
    got, noise = _ours(ours, "dpm++2m-sde-karras", 6, 4.0)
    ref = _diffusers_latents(theirs, "dpm++2m-sde-karras", 6, 4.0, [noise.read[k] for k in range(6)])
    assert _rel(got, ref) <= PARITY_REL_L2
    for sampler, steps in (("dpm++2m-sde", 6), ("dpm++2m-karras", 6), ("dpm++2m-sde-karras", 7)):
        assert _rel(_ours(ours, sampler, steps, 4.0)[0], ref) > 20 * PARITY_REL_L2, sampler
    other = _TorchInitialPhiloxSteps(len(LABELS), (4, 32, 32))
    other.philox = make_noise("philox", 1, len(LABELS), (4, 32, 32), guided=False)
    assert _rel(_ours(ours, "dpm++2m-sde-karras", 6, 4.0, other)[0], ref) > 20 * PARITY_REL_L2


def test_karras_timesteps_and_sigmas_equal_diffusers():
    """Every step count up to 60 and a few large ones: the same integer timesteps, the same σ."""
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32), 0).numpy()
    np.testing.assert_array_equal(diffusers_alphas_cumprod(), ac)
    for steps in (*range(2, 61), 100, 250, 999, 1000):
        sched = _scheduler("dpm++2m-karras")
        sched.set_timesteps(steps)
        ts, ac = karras_points(steps)
        np.testing.assert_array_equal(ts, sched.timesteps.numpy())
        sigma = np.sqrt((1 - ac) / ac)
        np.testing.assert_allclose(sigma, sched.sigmas.numpy()[:-1], rtol=1e-6)
        assert (np.diff(ts) <= 0).all() and ts[0] == 999 and ts[-1] == 0


# --------------------------------------------------------------------------- rows and closed form


def test_rows_and_records():
    for name in NEW:
        spec = samplers.get(name)
        sde = "sde" in name
        assert (spec.kind, spec.draws_noise, spec.min_steps) == ("sde" if sde else "ode", sde, 2)
        assert spec.record()["spacing"] == ("karras" if "karras" in name else "linspace")
        assert ("pred_noise" in spec.columns) == sde
        ts, rows = spec.coefficients(10)
        assert rows.shape == (10, len(COEF_NAMES)) and rows.dtype == np.float32
        last = rows[-1]  # into σ = 0: x_next = x̂0, no noise
        assert (last[COL["pred_x"]], last[COL["pred_x0"]], last[COL["pred_noise"]]) == (0, 1, 0)
        assert rows[0, COL["pred_hist_x0"]] == 0 and (rows[1:-1, COL["pred_hist_x0"]] != 0).all()
        assert ((rows[:-1, COL["pred_noise"]] > 0) == sde).all()
    lin, kar = make_schedule(10, "dpm++2m-sde"), make_schedule(10, "dpm++2m-sde-karras")
    np.testing.assert_array_equal(lin.timesteps, make_schedule(10, "dpm++2m").timesteps)
    assert lin.timesteps[0] == kar.timesteps[0] == 999 and kar.timesteps[-1] == 0 != lin.timesteps[-1]


def _float64_rows(sampler: str, steps: int, x: np.ndarray, noise) -> np.ndarray:
    """The rows propagated in float64 with the exact ε of the rounded timestep and the given noise."""
    s = make_schedule(steps, sampler)
    ac_full = np.cumprod(1 - linear_betas())
    h0 = np.zeros_like(x)
    for k, (t, c) in enumerate(zip(s.timesteps, s.coefs.astype(np.float64))):
        ac = ac_full[t]
        eps = np.sqrt(1 - ac) / (ac * S2 + 1 - ac) * (x - np.sqrt(ac) * MU)
        x0 = c[COL["sqrt_recip_alphas_cumprod"]] * x - c[COL["sqrt_recipm1_alphas_cumprod"]] * eps
        z = noise.step(k).astype(np.float64)
        x = (
            c[COL["pred_x"]] * x
            + c[COL["pred_x0"]] * x0
            + c[COL["pred_hist_x0"]] * h0
            + c[COL["pred_noise"]] * z
        )
        h0 = x0
    return x


def _run(sampler: str, steps: int, n: int = 64, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    noise = make_noise("philox", seed, n, (4, 8, 8), guided=False)
    out = sample_latents(
        GaussianDataDenoiser().eval(),
        [k % 10 for k in range(n)],
        noise,
        steps=steps,
        sampler=sampler,
        cfg_scale=1.0,
        progress=False,
    )
    return out.numpy().astype(np.float64), noise.initial().astype(np.float64)


@pytest.mark.parametrize("sampler", NEW)
def test_step_module_equals_float64_rows(sampler):
    got, x_t = _run(sampler, 10)
    want = _float64_rows(sampler, 10, x_t, make_noise("philox", 7, 64, (4, 8, 8), guided=False))
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_many_steps_land_on_the_data():
    """Gaussian data N(μ, s²): the SDE's samples have its moments; the Karras ODE its exact map."""
    for sampler in ("dpm++2m-sde", "dpm++2m-sde-karras"):
        got, _ = _run(sampler, 100, n=256)
        assert got.mean() == pytest.approx(MU, abs=5e-3) and got.std() == pytest.approx(np.sqrt(S2), abs=1e-2)
    got, x_t = _run("dpm++2m-karras", 100)
    assert np.sqrt(np.mean((got - _exact_ode_map(x_t, 999)) ** 2)) < 2e-3


def test_sde_reads_the_step_noise_and_the_seed_is_the_image():
    """The per-step noise matters; an image depends only on (seed, its index), not the batch split."""
    model = GaussianDataDenoiser().eval()
    kw = dict(steps=8, sampler="dpm++2m-sde-karras", cfg_scale=4.0, progress=False)
    shape = (4, 8, 8)
    whole = sample_latents(model, [1, 2, 3, 4, 5], make_noise("philox", 3, 5, shape, True), **kw)
    parts = [
        sample_latents(model, [1, 2], make_noise("philox", 3, 2, shape, True), **kw),
        sample_latents(model, [3], make_noise("philox", 3, 1, shape, True, first_image=2), **kw),
        sample_latents(model, [4, 5], make_noise("philox", 3, 2, shape, True, first_image=3), **kw),
    ]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    other_steps = make_noise("philox", 3, 5, shape, True)
    other_steps.step = make_noise("philox", 4, 5, shape, True).step  # same initial latent, other step noise
    assert _rel(sample_latents(model, [1, 2, 3, 4, 5], other_steps, **kw), whole) > 0.01


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sampler", NEW)
def test_too_few_steps_is_one_line(sampler):
    with pytest.raises(UserError, match=f"{sampler.replace('+', '.')} needs at least 2 steps"):
        SampleRequest((1,), steps=1, sampler=sampler).validate(10)
    with pytest.raises(UserError, match="at least 2"):
        make_schedule(1, sampler)


@pytest.mark.parametrize("sampler", ["ddpm-karras", "unipc-karras", "ddim-karras"])
def test_karras_on_a_sampler_without_it_is_one_line(sampler):
    with pytest.raises(
        UserError, match="has no -karras variant \\(those are dpm\\+\\+2m-karras, dpm\\+\\+2m-sde-karras\\)"
    ) as e:
        SampleRequest((1,), steps=10, sampler=sampler).validate(10)
    assert "\n" not in str(e.value) and repr(sampler) in str(e.value)
