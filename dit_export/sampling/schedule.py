"""Diffusion schedule tables (numpy only, so the runtime can use them without torch).

The official sampler is an IDDPM port: linear betas over 1000 steps, respaced by keeping a subset
of timesteps and recomputing every coefficient on that chain in float64. Each kept step becomes
one row of a float32 coefficient table that the step module consumes; the loop does no math.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dit_export.errors import UserError

NUM_TRAIN_STEPS = 1000
SAMPLERS = ("ddpm", "ddim")

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
)
NUM_COEFS = len(COEF_NAMES)


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
