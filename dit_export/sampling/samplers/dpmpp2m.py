"""DPM-Solver++(2M), midpoint, data prediction (diffusers' DPMSolverMultistepScheduler defaults:
"linspace" timesteps, final sigma zero, first order at the first and the final step)."""

from __future__ import annotations

from dit_export.sampling.samplers import SamplerSpec, register
from dit_export.sampling.schedule import MULTISTEP_COLUMNS, multistep_schedule, phi


def dpmpp2m_row(k: int, steps: int, alpha, sigma, lam) -> dict[str, float]:
    """x_next = (σ_{k+1}/σ_k)·x − α_{k+1}(e^{−h}−1)·D0 − ½α_{k+1}(e^{−h}−1)·D1,
    D0 = x̂0_k, D1 = (x̂0_k − x̂0_{k−1})/r, r = (λ_k − λ_{k−1})/h."""
    h, em1 = phi(k, steps, lam)
    a = alpha[k + 1]
    out = {"corr_x": 1.0, "pred_x": sigma[k + 1] / sigma[k]}
    if k == 0 or k + 1 == steps:
        out["pred_x0"] = -a * em1
        return out
    r = (lam[k] - lam[k - 1]) / h
    out["pred_x0"] = -a * em1 * (1.0 + 0.5 / r)
    out["pred_hist_x0"] = 0.5 * a * em1 / r
    return out


# The columns a DPM-Solver++(2M) row sets (the SDE variants add pred_noise).
COLUMNS = (*MULTISTEP_COLUMNS, "corr_x", "pred_x", "pred_x0", "pred_hist_x0")


def dpmpp2m_spec(
    name: str,
    help: str,
    *,
    sde=False,
    derive=dpmpp2m_row,
    spacing="linspace",
    points=None,
    stored_steps=(25, 20, 10),
) -> SamplerSpec:
    """A DPM-Solver++(2M) sampler: the ODE (or, `sde`, the SDE) row `derive` on linspace timesteps
    or on the `points` of another `spacing` (Karras): dpm++2m here, its variants in dpmpp_sde."""
    return SamplerSpec(
        name=name,
        help=help,
        kind="sde" if sde else "ode",
        multistep=True,
        min_steps=2,
        spacing=spacing,
        state=("hist_x0",),
        draws_noise=sde,
        columns=(*COLUMNS, "pred_noise") if sde else COLUMNS,
        rows=lambda steps: multistep_schedule(steps, name, derive, points=points),
        stored_steps=stored_steps,
    )


register(dpmpp2m_spec("dpm++2m", "DPM-Solver++ 2M"))
