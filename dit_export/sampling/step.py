"""One sampler step as a module: the single definition of the per-step math.

The reference loop calls it, `export` traces it into ``dit_step.onnx``, and every runtime drives
that graph, so all backends run the same arithmetic. Inputs (N images):

    x      (N,C,L,L) fp32   current latent
    t      (N,)      int64  ORIGINAL timestep fed to the network (0..999)
    y      (N,)      int64  class labels
    noise  (N,C,L,L) fp32   this step's noise (DDPM: scaled by 0 at the last step; multistep:
                            by the row's `pred_noise`, 0 for the ODE solvers)
    guidance (1,)    fp32   classifier-free guidance scale s ≥ 1 (exactly 1 → the conditional ε)
    coef   (K,)      fp32   one row of ``Schedule.coefs`` (layout ``schedule.COEF_NAMES``)
    hist_x0, hist_x0_prev, hist_x (N,C,L,L) fp32   solver history (``with_state=True`` only)

Output: the next latent (N,C,L,L) fp32; with state also the next history
(``hist_x0_next`` = this step's x̂0, ``hist_x0_prev_next`` = hist_x0, ``hist_x_next`` = the
corrected sample), which the loop feeds back at the next step (zeros at the first). The
operation order of DDPM/DDIM mirrors the IDDPM reference (`p_sample`, `ddim_sample` with eta 0)
so fp32 results agree to rounding; the multistep solvers are the linear combinations of
``schedule`` (their row has ``multistep`` = 1), including a per-step noise term ``pred_noise·noise``
so a stochastic multistep solver is a new row table, not a new graph. The exported graph always
has the state I/O (``STEP_INPUTS`` / ``STEP_OUTPUTS``); DDPM and DDIM ignore it. Which sampler
writes which columns is the registry's (``dit_export.sampling.samplers``).
"""

from __future__ import annotations

import torch
from torch import nn

from dit_export.models.cached import forecast_forward, full_forward
from dit_export.models.dit import DiT
from dit_export.sampling.cache import CACHE_COEF, CACHE_INPUT, CACHE_OUTPUT
from dit_export.sampling.schedule import COEF_NAMES, NUM_COEFS, STATE_NAMES, state_output

# forward() unpacks the row by position: the multistep block starts at column 10, 20 columns in all.
assert COEF_NAMES.index("multistep") == 10 and NUM_COEFS == 20, "update SamplerStep.forward with COEF_NAMES"

STEP_INPUTS = ("x", "t", "y", "noise", "guidance", "coef", *STATE_NAMES)
STEP_OUTPUTS = ("x_next", *(state_output(n) for n in STATE_NAMES))


def example_inputs(n: int, c: int, size: int, num_coefs: int | None = None) -> tuple[torch.Tensor, ...]:
    """Trace inputs of the stateful step, in ``STEP_INPUTS`` order (static shapes)."""
    x = torch.zeros(n, c, size, size, dtype=torch.float32)
    i64 = torch.zeros(n, dtype=torch.int64)
    coef = torch.zeros(num_coefs or NUM_COEFS, dtype=torch.float32)
    states = tuple(x.clone() for _ in STATE_NAMES)
    return (x, i64, i64.clone(), x.clone(), torch.ones(1, dtype=torch.float32), coef, *states)


class GuidedDenoiser(nn.Module):
    """ε and v for N images; with guidance, the batch is doubled with null labels (2N forward).

    Guidance follows ``cfg_channels`` of the config: 3 for the official model (ε channels 0–2,
    a kept quirk), 4 for diffusers. Channels past it (and v) are the conditional half's.
    """

    def __init__(self, model: DiT, guided: bool = True):
        super().__init__()
        self.model = model
        self.guided = guided
        cfg = model.config
        self.n_guided, self.c, self.null = cfg.cfg_channels, cfg.in_channels, cfg.null_class

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance: torch.Tensor
    ) -> torch.Tensor:
        if not self.guided:
            return self.model(x, t, y)
        return self.guide(self.model(*self.doubled(x, t, y)), guidance)

    def doubled(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The 2N network inputs: the N images with their labels, then again with the null label."""
        return torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null)])

    def guide(self, out: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Combine the 2N outputs of `doubled` inputs into N guided ones."""
        n = out.shape[0] // 2
        cond, uncond = out[:n], out[n:]
        k = self.n_guided
        cond_eps, uncond_eps = cond[:, :k], uncond[:, :k]
        guided = uncond_eps + guidance * (cond_eps - uncond_eps)
        guided = torch.where(guidance == 1.0, cond_eps, guided)  # s = 1: exactly the unguided model
        return torch.cat([guided, cond[:, k:]], dim=1)


class SamplerStep(nn.Module):
    """x_t → x_{t−1}: guided denoise, then DDPM posterior (learned-range variance), DDIM (eta 0),
    or a multistep solver row (DPM-Solver++(2M), UniPC) on the history state.

    ``with_state=False`` is the stateless step (x_next only; multistep rows then see zero history:
    only for callers that feed ddpm/ddim rows). The exported graph uses ``with_state=True``.
    """

    def __init__(self, model: DiT, guided: bool = True, with_state: bool = False):
        super().__init__()
        self.denoiser = GuidedDenoiser(model, guided)
        self.c = model.config.in_channels
        self.learn_sigma = model.config.learn_sigma
        self.with_state = with_state

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
        guidance: torch.Tensor,
        coef: torch.Tensor,
        hist_x0: torch.Tensor | None = None,
        hist_x0_prev: torch.Tensor | None = None,
        hist_x: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.solve(x, self.denoiser(x, t, y, guidance), noise, coef, hist_x0, hist_x0_prev, hist_x)

    def solve(
        self, x: torch.Tensor, out: torch.Tensor, noise: torch.Tensor, coef: torch.Tensor, *state: torch.Tensor | None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The sampler update from the guided network output `out` (ε, then v when learned);
        `state`: hist_x0, hist_x0_prev, hist_x (`STATE_NAMES` order; absent ones are zeros)."""
        hist_x0, hist_x0_prev, hist_x = (*state, None, None, None)[:3]
        eps = out[:, : self.c]
        # one value per schedule.COEF_NAMES column, in order
        s1, s2, c1, c2, min_log, max_log, nonzero, ab_prev, sigma, is_ddpm = coef[:10].unbind(0)
        ms, cx, chx, cx0, ch0, ch1, px, px0, ph0, pn = coef[10:].unbind(0)
        x0 = s1 * x - s2 * eps  # predicted x̂0, no clipping
        # DDPM: posterior mean plus learned-range noise.
        mean = c1 * x0 + c2 * x
        if self.learn_sigma:
            frac = (out[:, self.c :] + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        else:  # fixed-large variance: log β (its i = 0 value is never used: nonzero = 0 there)
            log_var = max_log.expand_as(x)
        ddpm = mean + nonzero * torch.exp(0.5 * log_var) * noise
        # DDIM: ε re-derived from x̂0, then the update (deterministic for σ = 0, i.e. eta 0). The
        # square roots are taken here in fp32, like the reference (a host-side √ can differ by 1 ulp).
        eps_ddim = (s1 * x - x0) / s2
        ddim = x0 * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma * sigma) * eps_ddim
        ddim = ddim + nonzero * sigma * noise
        x_next = torch.where(is_ddpm > 0.5, ddpm, ddim)
        h0 = torch.zeros_like(x) if hist_x0 is None else hist_x0
        h1 = torch.zeros_like(x) if hist_x0_prev is None else hist_x0_prev
        hx = torch.zeros_like(x) if hist_x is None else hist_x
        # Multistep solvers: corrector (identity for DPM-Solver++ and UniPC's first step), predictor
        # with its noise term (0 · noise for the ODE solvers).
        xc = cx * x + chx * hx + cx0 * x0 + ch0 * h0 + ch1 * h1
        x_ms = px * xc + px0 * x0 + ph0 * h0 + pn * noise
        x_next = torch.where(ms > 0.5, x_ms, x_next)
        if not self.with_state:
            return x_next
        return x_next, x0, h0, xc


class CachedSamplerStep(SamplerStep):
    """The stateful guided step with the forecast cache (`dit_export.sampling.cache`).

    mode "full": the whole network, which also returns the refreshed cache (``cache_next``);
    mode "forecast": branch outputs forecast from the cache (no attention or MLP). Inputs are
    ``CACHED_STEP_INPUTS``: the step's, then ``cache`` and one ``cache_coef`` row of `CachePlan`.
    """

    def __init__(self, model: DiT, mode: str):
        super().__init__(model, guided=True, with_state=True)
        if mode not in ("full", "forecast"):
            raise ValueError(f"mode {mode!r}: full | forecast")
        self.mode = mode

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
        guidance: torch.Tensor,
        coef: torch.Tensor,
        hist_x0: torch.Tensor,
        hist_x0_prev: torch.Tensor,
        hist_x: torch.Tensor,
        cache: torch.Tensor,
        cache_coef: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        d = self.denoiser
        args = (d.model, *d.doubled(x, t, y), cache, cache_coef)
        if self.mode == "full":
            raw, cache_next = full_forward(*args)
        else:
            raw, cache_next = forecast_forward(*args), None
        out = self.solve(x, d.guide(raw, guidance), noise, coef, hist_x0, hist_x0_prev, hist_x)
        assert isinstance(out, tuple)
        return out if cache_next is None else (*out, cache_next)


def cached_step_io(mode: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of `dit_step_full` / `dit_step_forecast`."""
    outs = STEP_OUTPUTS + ((CACHE_OUTPUT,) if mode == "full" else ())
    return STEP_INPUTS + (CACHE_INPUT, CACHE_COEF), outs


def cached_example_inputs(
    n: int, c: int, size: int, cache_shape: tuple[int, ...], num_coefs: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Trace inputs of the cached step graphs, in `cached_step_io` order (static shapes)."""
    cache = torch.zeros(cache_shape, dtype=torch.float32)
    coef = torch.zeros(cache_shape[2], dtype=torch.float32)
    return (*example_inputs(n, c, size, num_coefs), cache, coef)
