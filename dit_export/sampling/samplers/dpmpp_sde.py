"""DPM-Solver++(2M) SDE, and Karras sigma spacing for it and for DPM-Solver++(2M).

Both follow diffusers' `DPMSolverMultistepScheduler` (solver_order 2, midpoint, data prediction,
final sigma zero, first order at the first and the final step):

- ``dpm++2m-sde``: ``algorithm_type="sde-dpmsolver++"``. With h = λ_{k+1} − λ_k and z this step's
  `noise` input (the same Philox noise DDPM draws),

      x_next = (σ_{k+1}/σ_k)e^{−h}·x + α_{k+1}(1 − e^{−2h})·(D0 + ½·D1) + σ_{k+1}√(1 − e^{−2h})·z,

  D0 = x̂0_k, D1 = (x̂0_k − x̂0_{k−1})/r, r = (λ_k − λ_{k−1})/h; D1 = 0 at the first step (no
  history) and the final step into σ = 0 gives x̂0 exactly (e^{−h} = 0, no noise).
- ``dpm++2m-karras`` / ``dpm++2m-sde-karras``: ``use_karras_sigmas=True``. The S noise levels
  s_k = (s_max^{1/ρ} + k/(S−1)·(s_min^{1/ρ} − s_max^{1/ρ}))^ρ, ρ = 7, between the training chain's
  s_max = s(999) and s_min = s(0) (s = √((1−ᾱ)/ᾱ)); the network gets round(t(s_k)), t(·) being
  diffusers' `_sigma_to_t` (linear in log s between training timesteps), while the update uses
  s_k itself (ᾱ_k = 1/(1+s_k²)), as diffusers does. The s table that sets s_max, s_min and t(·) is
  diffusers' float32 ᾱ (reproduced below): a float64 table moves a rounded timestep (one step
  differs at 18 steps), so the network would see other timesteps than diffusers'.

Coefficients are evaluated in float64 (diffusers: float32), then cast to fp32.
"""

from __future__ import annotations

import numpy as np

from dit_export.sampling.samplers import SamplerSpec, register
from dit_export.sampling.samplers.dpmpp2m import dpmpp2m_row, dpmpp2m_spec
from dit_export.sampling.schedule import NUM_TRAIN_STEPS

KARRAS_RHO = 7.0  # Karras et al. (2022), diffusers' value
_BETA_START, _BETA_END = 1e-4, 0.02  # the linear training schedule (schedule.linear_betas)


def dpmpp2m_sde_row(k: int, steps: int, alpha, sigma, lam) -> dict[str, float]:
    """One row of DPM-Solver++(2M) SDE (see the module docstring)."""
    if k + 1 == steps:  # into σ = 0: h = ∞, x_next = α·x̂0 with α = 1
        return {"corr_x": 1.0, "pred_x0": float(alpha[k + 1])}
    h = lam[k + 1] - lam[k]
    em2 = -np.expm1(-2.0 * h)  # 1 − e^{−2h}
    a = alpha[k + 1]
    out = {
        "corr_x": 1.0,
        "pred_x": sigma[k + 1] / sigma[k] * np.exp(-h),
        "pred_noise": sigma[k + 1] * np.sqrt(em2),
    }
    if k == 0:
        out["pred_x0"] = a * em2
        return out
    r = (lam[k] - lam[k - 1]) / h
    out["pred_x0"] = a * em2 * (1.0 + 0.5 / r)
    out["pred_hist_x0"] = -0.5 * a * em2 / r
    return out


def diffusers_alphas_cumprod(n: int = NUM_TRAIN_STEPS) -> np.ndarray:
    """diffusers' ᾱ table bit for bit: torch.linspace(β0, β1, n) in float32 (its two-sided
    formula, fused multiply-add), then the float32 cumprod of 1 − β with a float64 accumulator."""
    start, end = np.float32(_BETA_START * 1000 / n), np.float32(_BETA_END * 1000 / n)
    step = np.float32((end - start) / np.float32(n - 1))
    i = np.arange(n)
    low = np.float64(start) + np.float64(step) * i
    high = np.float64(end) - np.float64(step) * (n - 1 - i)
    betas = np.where(i < n // 2, low, high).astype(np.float32)
    return np.cumprod((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """diffusers' `_sigma_to_t`: the fractional training timestep of each σ, linear in log σ."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return (1 - w) * low + w * high


def karras_points(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(integer timesteps (S,) fed to the network, ᾱ (S,) of the Karras noise levels), loop order."""
    ac32 = diffusers_alphas_cumprod()
    s_train = ((1 - ac32) / ac32) ** 0.5  # float32, like diffusers
    s_min, s_max = float(s_train[0]), float(s_train[-1])
    ramp = np.linspace(0, 1, steps)
    lo, hi = s_min ** (1 / KARRAS_RHO), s_max ** (1 / KARRAS_RHO)
    s = (hi + ramp * (lo - hi)) ** KARRAS_RHO
    ts = np.round(sigma_to_t(s, np.log(s_train))).astype(np.int64)
    return ts, 1.0 / (1.0 + s * s)


def _spec(name: str, help: str, sde: bool, karras: bool) -> SamplerSpec:
    return dpmpp2m_spec(
        name,
        help,
        sde=sde,
        derive=dpmpp2m_sde_row if sde else dpmpp2m_row,
        spacing="karras" if karras else "linspace",
        points=karras_points if karras else None,
        stored_steps=(25, 20, 15, 10),  # the C++ runtime samples stored step counts only
    )


register(_spec("dpm++2m-sde", "DPM-Solver++ 2M SDE", sde=True, karras=False))
register(_spec("dpm++2m-karras", "DPM-Solver++ 2M, Karras sigmas", sde=False, karras=True))
register(_spec("dpm++2m-sde-karras", "DPM-Solver++ 2M SDE, Karras sigmas", sde=True, karras=True))
