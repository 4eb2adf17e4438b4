"""The multistep solvers (dpm++2m, unipc): diffusers parity, closed-form ODE, state, bad input.

- diffusers: on a diffusers-format checkpoint (diffusers numerics), our reference loop's final
  latents equal `DiTPipeline` run with `DPMSolverMultistepScheduler` / `UniPCMultistepScheduler`
  from the same initial latent (`noise="torch"`), guided and unguided, at two step counts.
- official flavor: for Gaussian data the exact ε is known and the probability-flow ODE maps x_T
  to x_0 by a known affine map; the solvers must approach it with the steps (second order:
  clearly closer than DDIM at equal steps), and the step module must equal the coefficient rows
  propagated in float64 (the linear combinations and the history state, as designed).
- ODE solvers use no per-step noise: only the initial latent.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from dit_diffusers import to_diffusers_config, to_diffusers_state_dict
from test_sampler_closed_form import MU, S2, GaussianDataDenoiser

from dit_export.errors import UserError
from dit_export.models.checkpoints import load_dit, perturb_zero_initialised
from dit_export.models.configs import DiTConfig
from dit_export.models.dit import DiT
from dit_export.sampling import samplers
from dit_export.sampling.noise import make_noise
from dit_export.sampling.reference import sample_latents
from dit_export.sampling.request import SampleRequest
from dit_export.sampling.samplers import make_schedule
from dit_export.sampling.schedule import (
    COEF_NAMES,
    STATE_NAMES,
    linear_betas,
    linspace_timesteps,
)
from dit_export.sampling.step import STEP_INPUTS, STEP_OUTPUTS, SamplerStep, example_inputs

SOLVERS = ("dpm++2m", "unipc")
PARITY_REL_L2 = 1e-4
LABELS = [1, 207, 999]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------- diffusers parity

diffusers = pytest.importorskip("diffusers")


class _CaptureVae(torch.nn.Module):
    """A stand-in VAE for DiTPipeline (scaling factor 1): keeps the final latents it is given."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.config = diffusers.configuration_utils.FrozenDict(scaling_factor=1.0)
        self.latents: torch.Tensor | None = None

    def decode(self, z):
        self.latents = z.clone()
        return type("Decoded", (), {"sample": z})()


@pytest.fixture(scope="module")
def diffusers_pair(tmp_path_factory):
    """(our DiT loaded from a diffusers-format folder, diffusers' DiTTransformer2DModel) — 1000 classes
    because DiTPipeline hard-codes the null class 1000."""
    cfg = DiTConfig(depth=2, hidden_size=64, num_heads=2, patch_size=8, input_size=32, flavor="diffusers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        net = DiT(cfg).eval()
    perturb_zero_initialised(net, seed=3, std=0.1)
    theirs = diffusers.DiTTransformer2DModel(**to_diffusers_config(cfg)).eval()
    theirs.load_state_dict(to_diffusers_state_dict(net), strict=True)
    folder = tmp_path_factory.mktemp("diffusers_dit")
    theirs.save_pretrained(folder)
    ours, loaded = load_dit(folder)
    assert loaded.flavor == "diffusers" and loaded.num_classes == 1000
    return ours.eval(), theirs


def _diffusers_latents(theirs, sampler: str, steps: int, cfg_scale: float) -> torch.Tensor:
    cls = {"dpm++2m": diffusers.DPMSolverMultistepScheduler, "unipc": diffusers.UniPCMultistepScheduler}[
        sampler
    ]
    sched = cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    vae = _CaptureVae()
    pipe = diffusers.DiTPipeline(transformer=theirs, vae=vae, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        pipe(
            LABELS,
            guidance_scale=cfg_scale,
            generator=torch.manual_seed(0),
            num_inference_steps=steps,
            output_type="pt",
        )
    np.testing.assert_array_equal(sched.timesteps.numpy(), linspace_timesteps(steps))
    assert vae.latents is not None
    return vae.latents


def _ours(model, sampler: str, steps: int, cfg_scale: float) -> torch.Tensor:
    noise = make_noise("torch", 0, len(LABELS), (4, 32, 32), cfg_scale > 1)
    return sample_latents(
        model, LABELS, noise, steps=steps, sampler=sampler, cfg_scale=cfg_scale, progress=False
    )


@pytest.mark.parametrize("sampler", SOLVERS)
@pytest.mark.parametrize("steps", [6, 15])
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_latents_equal_diffusers_pipeline(diffusers_pair, sampler, steps, cfg_scale):
    ours, theirs = diffusers_pair
    ref = _diffusers_latents(theirs, sampler, steps, cfg_scale)
    got = _ours(ours, sampler, steps, cfg_scale)
    assert got.shape == ref.shape == (3, 4, 32, 32)
    assert _rel(got, ref) <= PARITY_REL_L2, _rel(got, ref)


def test_parity_is_sensitive(diffusers_pair):
    """The tolerance is far below what a wrong solver, order or guidance would give."""
    ours, theirs = diffusers_pair
    ref = _diffusers_latents(theirs, "unipc", 6, 4.0)
    for sampler, steps, cfg in (("dpm++2m", 6, 4.0), ("unipc", 6, 1.0), ("unipc", 7, 4.0), ("ddim", 6, 4.0)):
        assert _rel(_ours(ours, sampler, steps, cfg), ref) > 20 * PARITY_REL_L2, (sampler, steps, cfg)


# --------------------------------------------------------------------------- closed form (official flavor)


def _exact_ode_map(x_t: np.ndarray, t: int, t_to: int | None = None) -> np.ndarray:
    """The probability-flow ODE from timestep t to timestep t_to (None: the data), for N(μ, s²)
    data: x stays an affine function of x_t with the marginal's mean and std."""
    ac_full = np.cumprod(1 - linear_betas())
    ac, ac_to = ac_full[t], (1.0 if t_to is None else ac_full[t_to])
    std, std_to = np.sqrt(ac * S2 + 1 - ac), np.sqrt(ac_to * S2 + 1 - ac_to)
    return np.sqrt(ac_to) * MU + std_to * (x_t - np.sqrt(ac) * MU) / std


def _run_denoiser(sampler: str, steps: int, n: int = 64):
    model = GaussianDataDenoiser().eval()
    noise = make_noise("philox", 7, n, (4, 8, 8), guided=False)
    x_t = noise.initial().astype(np.float64)
    out = sample_latents(
        model, [k % 10 for k in range(n)], noise, steps=steps, sampler=sampler, cfg_scale=1.0, progress=False
    )
    return out.numpy().astype(np.float64), x_t


def _float64_rows(sampler: str, steps: int, x: np.ndarray, run: int | None = None) -> np.ndarray:
    """The coefficient rows and the history state propagated in float64 with the exact ε
    (the first `run` rows; default all)."""
    s = make_schedule(steps, sampler)
    col = {name: i for i, name in enumerate(COEF_NAMES)}
    ac_full = np.cumprod(1 - linear_betas())
    h0 = h1 = hx = np.zeros_like(x)
    for t, c in list(zip(s.timesteps, s.coefs.astype(np.float64)))[:run]:
        ac = ac_full[t]
        eps = np.sqrt(1 - ac) / (ac * S2 + 1 - ac) * (x - np.sqrt(ac) * MU)
        x0 = c[col["sqrt_recip_alphas_cumprod"]] * x - c[col["sqrt_recipm1_alphas_cumprod"]] * eps
        xc = (
            c[col["corr_x"]] * x
            + c[col["corr_hist_x"]] * hx
            + c[col["corr_x0"]] * x0
            + c[col["corr_hist_x0"]] * h0
            + c[col["corr_hist_x0_prev"]] * h1
        )
        x = c[col["pred_x"]] * xc + c[col["pred_x0"]] * x0 + c[col["pred_hist_x0"]] * h0
        h0, h1, hx = x0, h0, xc
    return x


@pytest.mark.parametrize("sampler", SOLVERS)
def test_step_module_equals_float64_rows(sampler):
    got, x_t = _run_denoiser(sampler, 10)
    want = _float64_rows(sampler, 10, x_t)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_solver_order_on_the_exact_ode():
    """From t=999 to t=500 (a timestep of every grid below) the rows follow the exact ODE with the
    solvers' order: doubling the steps divides the error by ~4 for DPM-Solver++(2M) (order 2) and
    by ~8 for UniPC-2 (its corrector raises the order to 3)."""
    x_t = np.random.default_rng(0).standard_normal(256)
    exact = _exact_ode_map(x_t, 999, 500)
    for sampler, ratio in (("dpm++2m", 3.0), ("unipc", 5.0)):
        errors = []
        for steps in (10, 20, 40):
            run = list(make_schedule(steps, sampler).timesteps).index(500)
            got = _float64_rows(sampler, steps, x_t, run=run)
            errors.append(float(np.sqrt(np.mean((got - exact) ** 2))))
        assert errors[0] / errors[1] > ratio and errors[1] / errors[2] > ratio, (sampler, errors)


def test_final_latents_approach_the_exact_ode_solution():
    """The whole loop (torch step module, official flavor) lands on the exact ODE solution."""
    for sampler in SOLVERS:
        errors = []
        for steps in (5, 10, 25):
            got, x_t = _run_denoiser(sampler, steps)
            exact = _exact_ode_map(x_t, int(make_schedule(steps, sampler).timesteps[0]))
            errors.append(float(np.sqrt(np.mean((got - exact) ** 2))))
        assert errors[2] < errors[1] < errors[0], (sampler, errors)
        assert errors[2] < 0.02, (sampler, errors)  # data std 0.5


# --------------------------------------------------------------------------- state, noise, layout


class FilledStepNoise:
    """A noise source's initial latent, and `fill` as every step's noise: NaN here (an ODE solver
    must never read it), 0 in tests/runtime/test_schedules.py (a loop without its step noise)."""

    def __init__(self, inner, fill: float):
        self.inner, self.fill = inner, fill

    def initial(self):
        return self.inner.initial()

    def step(self, k):
        return np.full_like(self.inner.initial(), self.fill)


@pytest.mark.parametrize("sampler", SOLVERS)
def test_ode_solvers_use_only_the_initial_noise(sampler):
    model = GaussianDataDenoiser().eval()
    kw = dict(steps=6, sampler=sampler, cfg_scale=1.0, progress=False)
    a = sample_latents(model, [0, 1], make_noise("philox", 3, 2, (4, 8, 8), False), **kw)
    nan_steps = FilledStepNoise(make_noise("philox", 3, 2, (4, 8, 8), False), np.nan)
    b = sample_latents(model, [0, 1], nan_steps, **kw)
    assert torch.isfinite(b).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_io_names_and_state_outputs():
    assert STEP_INPUTS[:6] == ("x", "t", "y", "noise", "guidance", "coef")
    assert STEP_INPUTS[6:] == STATE_NAMES and STEP_OUTPUTS == ("x_next", *(f"{n}_next" for n in STATE_NAMES))
    model = GaussianDataDenoiser().eval()
    step = SamplerStep(model, guided=False, with_state=True).eval()
    args = list(example_inputs(2, 4, 8))
    assert len(args) == len(STEP_INPUTS)
    g = torch.Generator().manual_seed(0)
    for i in (0, 6, 7, 8):
        args[i] = torch.randn(args[i].shape, generator=g)
    args[1] = torch.full((2,), 500, dtype=torch.int64)
    args[5] = torch.from_numpy(make_schedule(10, "unipc").coefs[3])
    x_next, h0n, h1n, hxn = step(*args)
    x0 = args[5][0] * args[0] - args[5][1] * model(args[0], args[1], args[2])[:, :4]
    torch.testing.assert_close(h0n, x0)  # this step's data prediction becomes the history
    torch.testing.assert_close(h1n, args[6])  # shifted
    assert not torch.equal(hxn, args[0])  # the UniC-corrected sample (step 3 corrects)
    # ddpm rows leave the state outputs defined and finite, and x_next equals the stateless step
    args[5] = torch.from_numpy(make_schedule(50, "ddpm").coefs[10])
    stateless = SamplerStep(model, guided=False).eval()(*args[:6])
    torch.testing.assert_close(step(*args)[0], stateless, rtol=0, atol=0)


def test_schedules_match_diffusers_rules():
    for sampler in SOLVERS:
        s = make_schedule(10, sampler)
        np.testing.assert_array_equal(s.timesteps, [999, 899, 799, 699, 599, 500, 400, 300, 200, 100])
        col = {n: i for i, n in enumerate(COEF_NAMES)}
        last = s.coefs[-1]
        # final step into sigma 0, first order: x_next = x̂0
        assert last[col["pred_x"]] == 0 and last[col["pred_x0"]] == 1 and last[col["pred_hist_x0"]] == 0
        assert (s.coefs[:, col["multistep"]] == 1).all() and (s.coefs[:, col["is_ddpm"]] == 0).all()
        assert s.coefs[0, col["pred_hist_x0"]] == 0  # first step: no history yet
        assert s.coefs.shape == (10, len(COEF_NAMES)) and s.coefs.dtype == np.float32
    assert make_schedule(10, "dpm++2m").coefs[:, col["corr_x"]].tolist() == [1.0] * 10  # no corrector
    info = samplers.records()
    assert info["unipc"]["state"] == [{"input": n, "output": f"{n}_next"} for n in STATE_NAMES]
    assert info["dpm++2m"]["state"] == [{"input": "hist_x0", "output": "hist_x0_next"}]
    assert (
        info["ddpm"]["state"] == [] and info["ddim"]["kind"] == "ode" and info["ddpm"]["kind"] == "ancestral"
    )
    assert info["ddim"]["draws_noise"] is False and info["ddpm"]["draws_noise"] is True
    assert set(samplers.names()) == set(info)


@pytest.mark.parametrize("sampler", SOLVERS)
def test_bad_input_is_one_line(sampler):
    with pytest.raises(UserError, match=re.escape(f"{sampler} needs at least {samplers.get(sampler).min_steps} steps")):
        SampleRequest((1,), steps=1, sampler=sampler).validate(10)
    with pytest.raises(UserError, match="at least 2"):
        make_schedule(1, sampler)
    with pytest.raises(UserError, match="unknown sampler 'dpm\\+\\+3m'"):
        SampleRequest((1,), steps=10, sampler="dpm++3m").validate(10)
    with pytest.raises(UserError, match="unknown sampler"):
        make_schedule(10, "euler")
