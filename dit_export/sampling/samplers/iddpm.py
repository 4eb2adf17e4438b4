"""DDPM (the official `p_sample`, learned-range variance) and DDIM (eta 0) on the IDDPM chain."""

from __future__ import annotations

from dit_export.sampling.samplers import SamplerSpec, register
from dit_export.sampling.schedule import COEF_NAMES, iddpm_schedule

_COLUMNS = COEF_NAMES[: COEF_NAMES.index("multistep")]  # the DDPM / DDIM columns

register(
    SamplerSpec(
        name="ddpm",
        help="p_sample",
        kind="ancestral",
        multistep=False,
        min_steps=1,
        spacing="iddpm",
        state=(),
        draws_noise=True,
        columns=_COLUMNS,
        rows=lambda steps: iddpm_schedule(steps, "ddpm", ddim=False),
        respacing=True,
        stored_steps=(250, 100, 50, 25),
    )
)
register(
    SamplerSpec(
        name="ddim",
        help="eta 0",
        kind="ode",
        multistep=False,
        min_steps=1,
        spacing="ddim",
        state=(),
        draws_noise=False,
        columns=_COLUMNS,
        rows=lambda steps: iddpm_schedule(steps, "ddim", ddim=True),
        respacing=True,
        stored_steps=(50, 25, 10),
    )
)
