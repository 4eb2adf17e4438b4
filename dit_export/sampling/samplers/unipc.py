"""UniPC(bh2), data prediction (diffusers' UniPCMultistepScheduler defaults): the corrector UniC
(for k ≥ 1, using this step's x̂0) then the predictor UniP, order 2 with a first-order warm-up and
final step."""

from __future__ import annotations

import numpy as np

from dit_export.sampling.samplers import SamplerSpec, register
from dit_export.sampling.schedule import (
    COEF_NAMES,
    COLUMN,
    MULTISTEP_COLUMNS,
    STATE_NAMES,
    multistep_schedule,
)


def _unipc_b(h: float, order: int) -> tuple[float, float, list[float]]:
    """UniPC bh2 terms for hh = −h: h·φ1 = e^{hh} − 1, B(h) = e^{hh} − 1 and the b vector."""
    if np.isinf(h):
        hh, hphi1 = -np.inf, -1.0
    else:
        hh = -h
        hphi1 = float(np.expm1(hh))
    b_h = hphi1
    hphi_k, fact, b = hphi1 / hh - 1.0, 1.0, []
    for i in range(1, order + 1):
        b.append(hphi_k * fact / b_h)
        fact *= i + 1
        hphi_k = hphi_k / hh - 1.0 / fact
    return hphi1, b_h, b


def _unipc_order(j: int, steps: int) -> int:
    """diffusers' this_order at step j: warm-up from 1, lower order at the final step."""
    return min(2, steps - j, j + 1)


def unipc_row(k: int, steps: int, alpha, sigma, lam) -> dict[str, float]:
    """The corrector UniC (for k ≥ 1, using this step's x̂0) then the predictor UniP."""
    out: dict[str, float] = {}
    if k == 0:
        out["corr_x"] = 1.0
    else:  # correct the previous predictor's output hx → xc, at order this_order(k−1)
        order = _unipc_order(k - 1, steps)
        h = lam[k] - lam[k - 1]
        hphi1, b_h, b = _unipc_b(h, order)
        a = alpha[k]
        out["corr_hist_x"] = sigma[k] / sigma[k - 1]
        if order == 1:
            rho_d, rho_t = 0.0, 0.5
            rk = 1.0
        else:
            rk = (lam[k - 2] - lam[k - 1]) / h
            rho_d, rho_t = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), np.array(b[:2]))
        # xc = r·hx − a·hφ1·h0 − a·B·(ρ_d·(h1 − h0)/rk + ρ_t·(x̂0 − h0))
        out["corr_x0"] = -a * b_h * rho_t
        out["corr_hist_x0_prev"] = -a * b_h * rho_d / rk
        out["corr_hist_x0"] = -a * hphi1 + a * b_h * rho_d / rk + a * b_h * rho_t
    order = _unipc_order(k, steps)
    h = np.inf if k + 1 == steps else lam[k + 1] - lam[k]
    hphi1, b_h, _ = _unipc_b(h, order)
    a = alpha[k + 1]
    out["pred_x"] = sigma[k + 1] / sigma[k]
    if order == 1:
        out["pred_x0"] = -a * hphi1
    else:  # x_next = r·xc − a·hφ1·x̂0 − a·B·½·(h0 − x̂0)/rk
        rk = (lam[k - 1] - lam[k]) / h
        out["pred_x0"] = -a * hphi1 + a * b_h * 0.5 / rk
        out["pred_hist_x0"] = -a * b_h * 0.5 / rk
    return out


register(
    SamplerSpec(
        name="unipc",
        help="UniPC bh2",
        kind="ode",
        multistep=True,
        min_steps=2,
        spacing="linspace",
        state=STATE_NAMES,
        draws_noise=False,
        columns=(*MULTISTEP_COLUMNS, *COEF_NAMES[COLUMN["corr_x"] : COLUMN["pred_noise"]]),  # all but noise
        rows=lambda steps: multistep_schedule(steps, "unipc", unipc_row),
        stored_steps=(25, 20, 10),
    )
)
