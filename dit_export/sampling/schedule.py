"""Diffusion schedule tables (numpy only, so the runtime can use them without torch).

The official sampler is an IDDPM port: linear betas over 1000 steps, respaced by keeping a subset
of timesteps and recomputing every coefficient on that chain in float64. Each kept step becomes
one row of a float32 coefficient table that the step module consumes; the loop does no math.

The multistep ODE solvers (DPM-Solver++(2M) and UniPC(bh2), both in data prediction, as
diffusers' defaults: "linspace" timesteps, final sigma zero, lower-order first and final steps)
are written as per-step linear combinations. With x̂0 = √(1/ᾱ)·x − √(1/ᾱ−1)·ε of this step and
the history tensors h0 = x̂0 of the previous step, h1 = x̂0 of the one before and hx = the
previous (corrected) sample, one row gives

    xc     = corr_x·x + corr_hist_x·hx + corr_x0·x̂0 + corr_hist_x0·h0 + corr_hist_x0_prev·h1  (UniC)
    x_next = pred_x·xc + pred_x0·x̂0 + pred_hist_x0·h0                                    (predictor)

and the step outputs the new history (x̂0, h0, xc). DPM-Solver++ uses no corrector (xc = x).
The coefficients are diffusers' formulas evaluated in float64 (λ = log α − log σ, α = √ᾱ,
σ = √(1−ᾱ), h = λ_next − λ_this); `_dpmpp2m_rows` and `_unipc_rows` derive them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dit_export.errors import UserError
from dit_export.sampling.request import MIN_STEPS, NUM_TRAIN_STEPS, SAMPLERS

__all__ = [
    "COEF_NAMES",
    "MIN_STEPS",
    "NUM_COEFS",
    "NUM_TRAIN_STEPS",
    "SAMPLERS",
    "SAMPLER_STATE",
    "STATE_NAMES",
    "Schedule",
    "make_schedule",
    "sampler_info",
    "state_output",
]

# Columns of one coefficient row, in order (the step module and the manifest use this layout).
COEF_NAMES = (
    "sqrt_recip_alphas_cumprod",  # √(1/ᾱ)
    "sqrt_recipm1_alphas_cumprod",  # √(1/ᾱ − 1)
    "posterior_mean_coef1",  # β√ᾱ_prev / (1−ᾱ)
    "posterior_mean_coef2",  # (1−ᾱ_prev)√α / (1−ᾱ)
    "min_log",  # clipped posterior log-variance
    "max_log",  # log β
    "nonzero",  # 1 except at the last step (no noise added at i = 0)
    "alpha_bar_prev",  # DDIM: ᾱ_prev (fp32; the step takes √ in-graph, as the reference does)
    "ddim_sigma",  # DDIM: σ of the update (0 for eta 0, the only setting the reference samples with)
    "is_ddpm",  # 1 → DDPM update, 0 → DDIM (eta 0) update
    # multistep solvers (dpm++2m, unipc); see the module docstring
    "multistep",  # 1 → the linear-combination update below replaces DDPM/DDIM
    "corr_x",
    "corr_hist_x",
    "corr_x0",
    "corr_hist_x0",
    "corr_hist_x0_prev",
    "pred_x",
    "pred_x0",
    "pred_hist_x0",
)
NUM_COEFS = len(COEF_NAMES)
# Columns of tables written before the multistep solvers (a folder exported then has coef (10,)).
NUM_LEGACY_COEFS = COEF_NAMES.index("multistep")

# The solver history: extra inputs of dit_step, each (N,C,L,L) fp32, whose next value is the
# output `state_output(name)`; the loop ping-pongs each pair like the latent, zeroed per chunk.
STATE_NAMES = ("hist_x0", "hist_x0_prev", "hist_x")
SAMPLER_STATE = {"ddpm": (), "ddim": (), "dpm++2m": ("hist_x0",), "unipc": STATE_NAMES}
SPACING = {"ddpm": "iddpm", "ddim": "ddim", "dpm++2m": "linspace", "unipc": "linspace"}


def state_output(name: str) -> str:
    """The dit_step output that carries the next value of state input `name`."""
    return f"{name}_next"


def sampler_info() -> dict[str, dict]:
    """What the manifest records per sampler (JSON-able): kind, spacing, minimum steps, state pairs."""
    return {
        s: {
            "kind": "ode" if s in ("ddim", "dpm++2m", "unipc") else "ancestral",
            "spacing": SPACING[s],
            "min_steps": MIN_STEPS[s],
            "state": [{"input": n, "output": state_output(n)} for n in SAMPLER_STATE[s]],
        }
        for s in SAMPLERS
    }


def linear_betas(n: int = NUM_TRAIN_STEPS) -> np.ndarray:
    scale = 1000 / n
    return np.linspace(scale * 1e-4, scale * 0.02, n, dtype=np.float64)


def space_timesteps(num_timesteps: int, spec: str) -> list[int]:
    """Kept timesteps for a respacing spec: "N" (even sections, Python rounding) or "ddimN"."""
    spec = str(spec).strip()
    if spec.startswith("ddim"):
        want = _positive_int(spec[4:], spec)
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == want:
                return list(range(0, num_timesteps, stride))
        raise UserError(f"cannot make exactly {want} DDIM steps from {num_timesteps} with an integer stride")
    counts = [_positive_int(s, spec) for s in spec.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise UserError(f"cannot divide {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(kept))


def _positive_int(s: str, spec: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise UserError(f"bad step spec {spec!r}: expected N or ddimN with N a positive integer") from None
    if v <= 0:
        raise UserError(f"steps must be ≥ 1, got {spec!r}")
    return v


@dataclass(frozen=True)
class Schedule:
    """A respaced chain: the original timesteps fed to the network and their coefficient rows.

    Rows are in loop order (from the noisiest step down to t = 0).
    """

    sampler: str
    spec: str
    timesteps: np.ndarray  # (S,) int64, original timesteps, loop order
    coefs: np.ndarray  # (S, NUM_COEFS) float32, loop order
    table64: dict[str, np.ndarray]  # the float64 per-index tables (respaced index order)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def make_schedule(steps: int | str, sampler: str = "ddpm") -> Schedule:
    """Schedule for `steps` (an int, "N" or "ddimN") and a sampler kind.

    An int with sampler "ddim" respaces as "ddimN", as the official DDIM sampling does.
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler in ("dpm++2m", "unipc"):
        return _multistep_schedule(steps, sampler)
    if isinstance(steps, (int, np.integer)):
        if steps <= 0:
            raise UserError(f"steps must be ≥ 1, got {steps}")
        spec = f"ddim{steps}" if sampler == "ddim" else str(steps)
    else:
        spec = steps
    kept = space_timesteps(NUM_TRAIN_STEPS, spec)
    base_ac = np.cumprod(1.0 - linear_betas())
    betas, last = [], 1.0
    for i in kept:
        betas.append(1.0 - base_ac[i] / last)
        last = base_ac[i]
    b = np.array(betas, dtype=np.float64)
    alphas = 1.0 - b
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)
    post_logvar = np.log(np.append(post_var[1], post_var[1:])) if len(b) > 1 else np.array([np.log(b[0])])
    # A one-step chain has no clipped posterior variance; IDDPM leaves it empty. We fall back to
    # log β so the table is defined; its value is unused because the last step adds no noise.
    t64 = {
        "betas": b,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
        "posterior_mean_coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        "min_log": post_logvar,
        "max_log": np.log(b),
    }
    n = len(kept)
    rows = np.zeros((n, NUM_COEFS), dtype=np.float32)
    for col, name in enumerate(COEF_NAMES[:6]):
        rows[:, col] = t64[name].astype(np.float32)  # cast at use, like the reference's _extract
    rows[:, 6] = (np.arange(n) != 0).astype(np.float32)
    rows[:, 7] = ac_prev.astype(np.float32)
    rows[:, 8] = 0.0  # eta 0
    rows[:, 9] = 1.0 if sampler == "ddpm" else 0.0
    order = np.arange(n)[::-1]
    return Schedule(
        sampler=sampler,
        spec=spec,
        timesteps=np.asarray(kept, dtype=np.int64)[order].copy(),
        coefs=rows[order].copy(),
        table64=t64,
    )


# --------------------------------------------------------------------------- multistep solvers


def linspace_timesteps(steps: int, num_train: int = NUM_TRAIN_STEPS) -> np.ndarray:
    """diffusers' "linspace" spacing: round(linspace(0, T−1, S+1)) reversed, the last (0) dropped."""
    return np.linspace(0, num_train - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)


def _multistep_schedule(steps: int | str, sampler: str) -> Schedule:
    if isinstance(steps, str):
        steps = _positive_int(steps, steps)
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool):
        raise UserError(f"steps must be an integer, got {steps!r}")
    steps = int(steps)
    if steps < MIN_STEPS[sampler]:
        raise UserError(f"steps {steps}: {sampler} needs at least {MIN_STEPS[sampler]} steps")
    if steps > NUM_TRAIN_STEPS:
        raise UserError(f"steps {steps}: at most {NUM_TRAIN_STEPS} (the training steps)")
    ts = linspace_timesteps(steps)
    base_ac = np.cumprod(1.0 - linear_betas())
    ac = np.append(base_ac[ts], 1.0)  # ᾱ per step in loop order, then the final sigma 0 (ᾱ = 1)
    alpha, sigma = np.sqrt(ac), np.sqrt(1.0 - ac)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # λ_S = +inf
    rows = np.zeros((steps, NUM_COEFS), dtype=np.float64)
    col = {n: i for i, n in enumerate(COEF_NAMES)}
    rows[:, col["sqrt_recip_alphas_cumprod"]] = np.sqrt(1.0 / ac[:-1])
    rows[:, col["sqrt_recipm1_alphas_cumprod"]] = np.sqrt(1.0 / ac[:-1] - 1.0)
    rows[:, col["alpha_bar_prev"]] = ac[1:]
    rows[:, col["multistep"]] = 1.0
    derive = _dpmpp2m_rows if sampler == "dpm++2m" else _unipc_rows
    for k in range(steps):
        for name, value in derive(k, steps, alpha, sigma, lam).items():
            rows[k, col[name]] = value
    t64 = {"alphas_cumprod": ac[:-1], "alpha": alpha, "sigma": sigma, "lambda": lam, "rows": rows}
    return Schedule(sampler, str(steps), ts, rows.astype(np.float32), t64)


def _phi(k: int, steps: int, lam: np.ndarray) -> tuple[float, float]:
    """h = λ_{k+1} − λ_k and e^{−h} − 1 (exactly −1 for the final step into sigma 0)."""
    if k + 1 == steps:
        return np.inf, -1.0
    h = lam[k + 1] - lam[k]
    return h, float(np.expm1(-h))


def _dpmpp2m_rows(k: int, steps: int, alpha, sigma, lam) -> dict[str, float]:
    """DPM-Solver++(2M), midpoint, data prediction; first order at the first and the final step.

    x_next = (σ_{k+1}/σ_k)·x − α_{k+1}(e^{−h}−1)·D0 − ½α_{k+1}(e^{−h}−1)·D1,
    D0 = x̂0_k, D1 = (x̂0_k − x̂0_{k−1})/r, r = (λ_k − λ_{k−1})/h.
    """
    h, em1 = _phi(k, steps, lam)
    a = alpha[k + 1]
    out = {"corr_x": 1.0, "pred_x": sigma[k + 1] / sigma[k]}
    if k == 0 or k + 1 == steps:
        out["pred_x0"] = -a * em1
        return out
    r = (lam[k] - lam[k - 1]) / h
    out["pred_x0"] = -a * em1 * (1.0 + 0.5 / r)
    out["pred_hist_x0"] = 0.5 * a * em1 / r
    return out


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


def _unipc_rows(k: int, steps: int, alpha, sigma, lam) -> dict[str, float]:
    """UniPC(bh2), data prediction: the corrector UniC (for k ≥ 1, using this step's x̂0) then UniP."""
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
