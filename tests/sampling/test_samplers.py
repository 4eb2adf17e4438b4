"""The sampler registry: one object per sampler, asked by requests, schedules, the CLI and the
manifest record; a toy sampler registered here (and nowhere else) is a sampler everywhere."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from dit_export.errors import UserError
from dit_export.sampling import samplers
from dit_export.sampling.request import SampleRequest
from dit_export.sampling.samplers import make_schedule
from dit_export.sampling.schedule import COEF_NAMES, MULTISTEP_COLUMNS, multistep_schedule


def toy_row(k: int, steps: int, alpha, sigma, lam) -> dict[str, float]:
    """Stochastic DDIM (eta 1) on linspace timesteps, in the multistep columns: x_next = c·x +
    (α_{k+1} − c·α_k)·x̂0 + s·z, the noise term through `pred_noise`."""
    a, a_next = alpha[k] ** 2, alpha[k + 1] ** 2
    s = math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(1 - a / a_next)
    c = math.sqrt(max(1 - a_next - s * s, 0.0)) / math.sqrt(1 - a)
    return {"corr_x": 1.0, "pred_x": c, "pred_x0": alpha[k + 1] - c * alpha[k], "pred_noise": s}


def toy_spec(name: str = "toy-ddim-eta1", **kw) -> samplers.SamplerSpec:
    fields = dict(
        name=name,
        help="stochastic DDIM, a test's toy",
        kind="sde",
        multistep=True,
        min_steps=2,
        spacing="linspace",
        state=(),
        draws_noise=True,
        columns=(*MULTISTEP_COLUMNS, "corr_x", "pred_x", "pred_x0", "pred_noise"),
        rows=lambda steps: multistep_schedule(steps, name, toy_row),
        stored_steps=(6,),
    )
    return samplers.SamplerSpec(**{**fields, **kw})


@pytest.fixture
def toy():
    spec = samplers.register(toy_spec())
    yield spec
    samplers.unregister(spec.name)


def test_builtin_samplers_and_their_records():
    names = samplers.names()
    assert names[:4] == ("ddpm", "ddim", "dpm++2m", "unipc")
    rec = samplers.records()
    assert rec["ddpm"]["draws_noise"] and rec["ddpm"]["kind"] == "ancestral"
    for s in ("ddim", "dpm++2m", "unipc"):
        assert rec[s]["kind"] == "ode" and rec[s]["draws_noise"] is False
    assert rec["dpm++2m"]["multistep"] and not rec["ddim"]["multistep"]
    for s in names:  # rows outside a sampler's declared columns are zero; its min steps work
        spec = samplers.get(s)
        steps = max(spec.min_steps, 6)
        ts, rows = spec.coefficients(steps)
        assert ts.dtype == np.int64 and rows.shape == (len(ts), len(COEF_NAMES)) and rows.dtype == np.float32
        other = [i for i, c in enumerate(COEF_NAMES) if c not in spec.columns]
        assert not rows[:, other].any(), s
        assert rec[s]["coefs"] == list(spec.columns) and rec[s]["min_steps"] == spec.min_steps
    assert "dpm++2m (DPM-Solver++ 2M, ≥ 2 steps)" in samplers.help_text()


def test_unknown_names_and_step_counts_are_one_line_errors_from_one_place():
    with pytest.raises(UserError, match=re.escape("unknown sampler 'euler'; choose one of ddpm, ddim")):
        samplers.get("euler")
    with pytest.raises(UserError, match="unknown sampler 'euler'"):
        SampleRequest((1,), steps=10, sampler="euler").validate(10)
    with pytest.raises(UserError, match="unknown sampler 'euler'"):
        make_schedule(10, "euler")
    with pytest.raises(UserError, match="steps 1: unipc needs at least 2 steps"):
        samplers.get("unipc").coefficients(1)


def test_toy_sampler_is_a_sampler_everywhere(toy):
    from dit_export.cli.app import build_parser

    assert toy.name in samplers.names() and toy.name in samplers.help_text()
    SampleRequest((1,), steps=6, sampler=toy.name).validate(10)
    with pytest.raises(UserError, match=f"{toy.name} needs at least 2 steps"):
        SampleRequest((1,), steps=1, sampler=toy.name).validate(10)
    s = make_schedule(6, toy.name)
    col = {n: i for i, n in enumerate(COEF_NAMES)}
    assert (s.coefs[:-1, col["pred_noise"]] > 0).all() and s.coefs[-1, col["pred_noise"]] == 0
    assert s.coefs[-1, col["pred_x0"]] == 1 and s.coefs[-1, col["pred_x"]] == 0  # the last step gives x̂0
    args = build_parser().parse_args(["sample", "--engines", "x", "--sampler", toy.name])
    assert args.sampler == toy.name
    assert samplers.records()[toy.name]["draws_noise"] is True


def test_register_refuses_inconsistent_specs():
    with pytest.raises(ValueError, match="is registered already"):
        samplers.register(toy_spec(name="ddim"))
    with pytest.raises(ValueError, match="a ode sampler draws no noise"):
        samplers.register(toy_spec(name="toy-bad", kind="ode"))
    with pytest.raises(ValueError, match="not in schedule.COEF_NAMES"):
        samplers.register(toy_spec(name="toy-bad", columns=("pred_z",)))
    with pytest.raises(ValueError, match="must be lowercase"):
        samplers.register(toy_spec(name="toy:1"))
    assert "toy-bad" not in samplers.names()


def test_layout_for_an_older_folder_and_refusal_of_a_missing_column(toy):
    old = COEF_NAMES[: COEF_NAMES.index("pred_noise")]  # a folder exported before pred_noise
    ts, rows = samplers.get("unipc").table(10, old)
    np.testing.assert_array_equal(rows, make_schedule(10, "unipc").coefs[:, : len(old)])
    shuffled = tuple(reversed(COEF_NAMES))
    _, rows = samplers.get("ddpm").table(25, shuffled)
    np.testing.assert_array_equal(rows, make_schedule(25, "ddpm").coefs[:, ::-1])
    with pytest.raises(UserError, match="needs coefficient column 'pred_noise'.*re-export"):
        toy.table(6, old)
    assert toy.support_problem(old, ("hist_x0",)) == "its dit_step's coef has no column 'pred_noise'"
    assert samplers.get("unipc").support_problem(COEF_NAMES, ("hist_x0",)).startswith("its dit_step has no")
    with pytest.raises(UserError, match="unknown to this dit_export"):
        samplers.get("ddim").table(10, (*COEF_NAMES, "future_column"))
