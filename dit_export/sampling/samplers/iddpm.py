"""DDPM (the official `p_sample`, learned-range variance) and DDIM (eta 0) on the IDDPM chain."""

from __future__ import annotations

from dit_export.sampling.samplers import SamplerSpec, register
from dit_export.sampling.schedule import COEF_NAMES, iddpm_schedule

_COLUMNS = COEF_NAMES[: COEF_NAMES.index("multistep")]  # the DDPM / DDIM columns


def _spec(name: str, help: str, ddim: bool, stored_steps: tuple[int, ...]) -> SamplerSpec:
    """DDPM draws noise at every step but the last; DDIM (eta 0) is the deterministic ODE step."""
    return SamplerSpec(
        name=name,
        help=help,
        kind="ode" if ddim else "ancestral",
        multistep=False,
        min_steps=1,
        spacing="ddim" if ddim else "iddpm",
        state=(),
        draws_noise=not ddim,
        columns=_COLUMNS,
        rows=lambda steps: iddpm_schedule(steps, name, ddim=ddim),
        respacing=True,
        stored_steps=stored_steps,
    )


register(_spec("ddpm", "p_sample", ddim=False, stored_steps=(250, 100, 50, 25)))
register(_spec("ddim", "eta 0", ddim=True, stored_steps=(50, 25, 10)))
