"""Diffusion schedule math (numpy only, so the runtime can use it without torch).

Which samplers exist, and which rows each one writes, is the sampler registry's business
(`dit_export.sampling.samplers`); this module holds the shared pieces they are built from and the
one coefficient layout of the step graph.

The official sampler is an IDDPM port: linear betas over 1000 steps, respaced by keeping a subset
of timesteps and recomputing every coefficient on that chain in float64 (`iddpm_schedule`). Each
kept step becomes one row of a float32 coefficient table that the step module consumes; the loop
does no math.

The multistep solvers (`multistep_schedule`: diffusers' "linspace" timesteps, final sigma zero)
are written as per-step linear combinations. With x̂0 = √(1/ᾱ)·x − √(1/ᾱ−1)·ε of this step, the
history tensors h0 = x̂0 of the previous step, h1 = x̂0 of the one before, hx = the previous
(corrected) sample, and z this step's `noise` input, one row gives

    xc     = corr_x·x + corr_hist_x·hx + corr_x0·x̂0 + corr_hist_x0·h0 + corr_hist_x0_prev·h1  (corrector)
    x_next = pred_x·xc + pred_x0·x̂0 + pred_hist_x0·h0 + pred_noise·z                       (predictor)

and the step outputs the new history (x̂0, h0, xc). `pred_noise` is 0 for the ODE solvers; a
stochastic multistep solver (an SDE variant) sets it and declares that it draws noise. Every
coefficient is evaluated in float64 (λ = log α − log σ, α = √ᾱ, σ = √(1−ᾱ)), then cast to fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dit_export.errors import UserError
from dit_export.sampling import NUM_TRAIN_STEPS

__all__ = [
    "COEF_NAMES",
    "NUM_COEFS",
    "NUM_TRAIN_STEPS",
    "STATE_NAMES",
    "Schedule",
    "iddpm_schedule",
    "linspace_timesteps",
    "multistep_schedule",
    "state_output",
]

# Columns of one coefficient row, in order (the step module's `coef` input; the manifest records
# the names, and a runtime lays computed rows out by name in the folder's own order).
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
    # multistep solvers; see the module docstring
    "multistep",  # 1 → the linear-combination update below replaces DDPM/DDIM
    "corr_x",
    "corr_hist_x",
    "corr_x0",
    "corr_hist_x0",
    "corr_hist_x0_prev",
    "pred_x",
    "pred_x0",
    "pred_hist_x0",
    "pred_noise",  # multiplies the step's `noise` input (0 for the ODE solvers)
)
NUM_COEFS = len(COEF_NAMES)
COLUMN = {n: i for i, n in enumerate(COEF_NAMES)}
# What every multistep row sets besides its solver's own columns: x̂0's two factors, ᾱ of the next
# step and the switch to the linear-combination update.
MULTISTEP_COLUMNS = ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "alpha_bar_prev", "multistep")

# The solver history: extra inputs of dit_step, each (N,C,L,L) fp32, whose next value is the
# output `state_output(name)`; the loop ping-pongs each pair like the latent, zeroed per chunk.
STATE_NAMES = ("hist_x0", "hist_x0_prev", "hist_x")


def state_output(name: str) -> str:
    """The dit_step output that carries the next value of state input `name`."""
    return f"{name}_next"


def linear_betas(n: int = NUM_TRAIN_STEPS) -> np.ndarray:
    scale = 1000 / n
    return np.linspace(scale * 1e-4, scale * 0.02, n, dtype=np.float64)


def space_timesteps(num_timesteps: int, spec: str) -> list[int]:
    """Kept timesteps for a respacing spec: "N" (even sections, Python rounding) or "ddimN"."""
    spec = str(spec).strip()
    if spec.startswith("ddim"):
        want = positive_int(spec[4:], spec)
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == want:
                return list(range(0, num_timesteps, stride))
        raise UserError(f"cannot make exactly {want} DDIM steps from {num_timesteps} with an integer stride")
    counts = [positive_int(s, spec) for s in spec.split(",")]
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


def positive_int(s: str, spec: str) -> int:
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

    Rows are in loop order (from the noisiest step down to t = 0), laid out as `COEF_NAMES`.
    """

    sampler: str
    spec: str
    timesteps: np.ndarray  # (S,) int64, original timesteps, loop order
    coefs: np.ndarray  # (S, NUM_COEFS) float32, loop order
    table64: dict[str, np.ndarray]  # the float64 per-index tables (respaced index order)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


# --------------------------------------------------------------------------- IDDPM chains (ddpm, ddim)


def iddpm_schedule(steps: int | str, sampler: str, ddim: bool) -> Schedule:
    """The IDDPM respaced chain for `steps` (an int, "N" or "ddimN"), rows for DDPM or DDIM (eta 0).

    An int with `ddim` respaces as "ddimN", as the official DDIM sampling does.
    """
    if isinstance(steps, (int, np.integer)):
        if steps <= 0:
            raise UserError(f"steps must be ≥ 1, got {steps}")
        spec = f"ddim{steps}" if ddim else str(steps)
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
    rows[:, COLUMN["nonzero"]] = (np.arange(n) != 0).astype(np.float32)
    rows[:, COLUMN["alpha_bar_prev"]] = ac_prev.astype(np.float32)
    rows[:, COLUMN["ddim_sigma"]] = 0.0  # eta 0
    rows[:, COLUMN["is_ddpm"]] = 0.0 if ddim else 1.0
    order = np.arange(n)[::-1]
    return Schedule(
        sampler=sampler,
        spec=spec,
        timesteps=np.asarray(kept, dtype=np.int64)[order].copy(),
        coefs=rows[order].copy(),
        table64=t64,
    )


# --------------------------------------------------------------------------- multistep solvers

# A row deriver: (k, steps, alpha, sigma, lambda) → {column name: float64 value} of loop step k.
RowFn = Callable[[int, int, np.ndarray, np.ndarray, np.ndarray], dict]


def linspace_timesteps(steps: int, num_train: int = NUM_TRAIN_STEPS) -> np.ndarray:
    """diffusers' "linspace" spacing: round(linspace(0, T−1, S+1)) reversed, the last (0) dropped."""
    return np.linspace(0, num_train - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)


def multistep_schedule(
    steps: int,
    sampler: str,
    derive: RowFn,
    points: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Schedule:
    """Linspace timesteps to sigma 0, with the rows `derive` gives (validated `steps`).

    `points(steps)` → (timesteps fed to the network, ᾱ of each step) replaces the linspace chain
    (Karras sigmas: the update's ᾱ is not the rounded timestep's)."""
    if points is None:
        ts = linspace_timesteps(steps)
        step_ac = np.cumprod(1.0 - linear_betas())[ts]
    else:
        ts, step_ac = points(steps)
    ac = np.append(step_ac, 1.0)  # ᾱ per step in loop order, then the final sigma 0 (ᾱ = 1)
    alpha, sigma = np.sqrt(ac), np.sqrt(1.0 - ac)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # λ_S = +inf
    rows = np.zeros((steps, NUM_COEFS), dtype=np.float64)
    rows[:, COLUMN["sqrt_recip_alphas_cumprod"]] = np.sqrt(1.0 / ac[:-1])
    rows[:, COLUMN["sqrt_recipm1_alphas_cumprod"]] = np.sqrt(1.0 / ac[:-1] - 1.0)
    rows[:, COLUMN["alpha_bar_prev"]] = ac[1:]
    rows[:, COLUMN["multistep"]] = 1.0
    for k in range(steps):
        for name, value in derive(k, steps, alpha, sigma, lam).items():
            rows[k, COLUMN[name]] = value
    t64 = {"alphas_cumprod": ac[:-1], "alpha": alpha, "sigma": sigma, "lambda": lam, "rows": rows}
    return Schedule(sampler, str(steps), ts, rows.astype(np.float32), t64)


def phi(k: int, steps: int, lam: np.ndarray) -> tuple[float, float]:
    """h = λ_{k+1} − λ_k and e^{−h} − 1 (exactly −1 for the final step into sigma 0)."""
    if k + 1 == steps:
        return np.inf, -1.0
    h = lam[k + 1] - lam[k]
    return h, float(np.expm1(-h))
