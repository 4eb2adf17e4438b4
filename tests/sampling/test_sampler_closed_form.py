"""The sampler on a closed-form denoiser: Gaussian data, where the exact ε is known.

For data x0 ~ N(μ, s²) the exact ε-prediction is affine in x_t, so every step is affine and the
sample mean/variance after the loop follow a scalar recursion we compute in float64. The real
`sample_latents` loop (same step module as the export) must reproduce it, and with many steps
land on the data distribution itself.
"""

import numpy as np
import pytest
import torch
from torch import nn

from dit_export.models.configs import DiTConfig
from dit_export.sampling.reference import sample_latents
from dit_export.sampling.samplers import make_schedule
from dit_export.sampling.schedule import COEF_NAMES, linear_betas

MU, S2 = 0.5, 0.25


class GaussianDataDenoiser(nn.Module):
    """Exact E[ε | x_t] for N(μ, s²) data and v = −1 (the clipped posterior variance)."""

    def __init__(self):
        super().__init__()
        self.config = DiTConfig(
            depth=1, hidden_size=8, num_heads=1, patch_size=2, input_size=8, num_classes=10
        )
        self.ac = torch.from_numpy(np.cumprod(1 - linear_betas()))

    def forward(self, x, t, y):
        ac = self.ac[t].view(-1, 1, 1, 1)
        a = torch.sqrt(1 - ac) / (ac * S2 + 1 - ac)
        eps = (a * (x.double() - torch.sqrt(ac) * MU)).float()
        return torch.cat([eps, -torch.ones_like(eps)], dim=1)


class NumpyNoise:
    def __init__(self, n, shape, seed=0):
        self.rng, self.shape, self.n = np.random.default_rng(seed), shape, n

    def initial(self):
        return self.rng.standard_normal((self.n, *self.shape), dtype=np.float32)

    def step(self, k):
        return self.rng.standard_normal((self.n, *self.shape), dtype=np.float32)


def analytic_moments(steps, sampler):
    """Mean and variance of x after the loop, propagated exactly through the affine steps."""
    s = make_schedule(steps, sampler)
    col = {n: i for i, n in enumerate(COEF_NAMES)}
    ac_full = np.cumprod(1 - linear_betas())
    m, v = 0.0, 1.0
    for t, c in zip(s.timesteps, s.coefs.astype(np.float64)):
        ac = ac_full[t]
        a = np.sqrt(1 - ac) / (ac * S2 + 1 - ac)
        b = -a * np.sqrt(ac) * MU  # eps = a x + b
        s1, s2 = c[col["sqrt_recip_alphas_cumprod"]], c[col["sqrt_recipm1_alphas_cumprod"]]
        x0_a, x0_b = s1 - s2 * a, -s2 * b  # x0 = x0_a x + x0_b
        if sampler == "ddpm":
            A = c[col["posterior_mean_coef1"]] * x0_a + c[col["posterior_mean_coef2"]]
            B = c[col["posterior_mean_coef1"]] * x0_b
            sigma2 = c[col["nonzero"]] * np.exp(c[col["min_log"]])
        else:
            e_a, e_b = (s1 - x0_a) / s2, -x0_b / s2
            sa, s1m = np.sqrt(c[col["alpha_bar_prev"]]), np.sqrt(1 - c[col["alpha_bar_prev"]])
            A = sa * x0_a + s1m * e_a
            B = sa * x0_b + s1m * e_b
            sigma2 = 0.0
        m, v = A * m + B, A * A * v + sigma2
    return m, v


@pytest.mark.parametrize("steps,sampler", [(250, "ddpm"), (50, "ddpm"), (50, "ddim")])
def test_closed_form_denoiser_moments(steps, sampler):
    model = GaussianDataDenoiser()
    n, shape = 1024, (4, 8, 8)  # 262k scalar samples
    x = sample_latents(
        model, [0] * n, NumpyNoise(n, shape), steps=steps, sampler=sampler, cfg_scale=4.0, progress=False
    ).double()
    m, v = analytic_moments(steps, sampler)
    assert x.mean().item() == pytest.approx(m, abs=4e-3)
    assert x.var().item() == pytest.approx(v, rel=1e-2)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_analytic_chain_converges_to_the_data(sampler):
    """More steps → closer to N(μ, s²): the discretisation error shrinks monotonically."""
    errs = []
    for steps in (25, 50, 250, 1000 if sampler == "ddpm" else 500):
        m, v = analytic_moments(steps, sampler)
        assert m == pytest.approx(MU, abs=5e-3)
        errs.append(abs(v - S2))
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 0.02 * S2
