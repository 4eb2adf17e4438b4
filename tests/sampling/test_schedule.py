"""Respacing and coefficient tables against the official values (reference doc check values)."""

import numpy as np
import pytest

from dit_export.errors import UserError
from dit_export.sampling.samplers import make_schedule
from dit_export.sampling.schedule import COEF_NAMES, space_timesteps


def test_respacing_250_matches_official_rounding():
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250
    assert kept[:4] == [0, 4, 8, 12]
    # Python's round (banker's) and the fractional stride 999/249 give these irregular gaps:
    assert kept[40:43] == [160, 164, 169]
    assert 497 in kept and 502 in kept and 830 in kept and 835 in kept
    assert kept[-2:] == [995, 999]


def test_respacing_50_25_and_ddim50():
    k50 = space_timesteps(1000, "50")
    assert len(k50) == 50 and k50[0] == 0 and k50[-1] == 999
    strides = np.diff(k50)
    assert set(strides) <= {20, 21}
    k25 = space_timesteps(1000, "25")
    assert len(k25) == 25 and k25[-1] == 999 and k25[1] == round(999 / 24)
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))


def test_check_values_from_reference_doc():
    s = make_schedule(250)
    col = {n: i for i, n in enumerate(COEF_NAMES)}
    first, last = s.coefs[0], s.coefs[-1]  # loop order: t=999 first, t=0 last
    assert s.timesteps[0] == 999 and s.timesteps[-1] == 0
    assert first[col["sqrt_recip_alphas_cumprod"]] == pytest.approx(157.41, abs=5e-3)
    assert first[col["posterior_mean_coef2"]] == pytest.approx(0.960455, abs=1e-6)
    assert first[col["min_log"]] == pytest.approx(-2.55723, abs=1e-5)
    assert first[col["max_log"]] == pytest.approx(-2.55723, abs=1e-5)
    assert last[col["posterior_mean_coef1"]] == pytest.approx(1.0, abs=1e-7)
    assert last[col["posterior_mean_coef2"]] == 0.0
    assert last[col["min_log"]] == pytest.approx(-9.36463, abs=1e-5)
    assert last[col["max_log"]] == pytest.approx(-9.21034, abs=1e-5)
    assert last[col["nonzero"]] == 0.0 and first[col["nonzero"]] == 1.0
    assert (s.coefs[:, col["is_ddpm"]] == 1).all()


def test_ddim_table_and_float32_cast_points():
    s = make_schedule(50, "ddim")
    assert s.spec == "ddim50" and s.timesteps[0] == 980
    col = {n: i for i, n in enumerate(COEF_NAMES)}
    abp32 = s.table64["alphas_cumprod_prev"].astype(np.float32)[::-1]
    np.testing.assert_array_equal(s.coefs[:, col["alpha_bar_prev"]], abp32)
    assert (s.coefs[:, col["ddim_sigma"]] == 0).all()
    assert (s.coefs[:, col["is_ddpm"]] == 0).all()
    assert s.coefs.dtype == np.float32 and s.timesteps.dtype == np.int64


@pytest.mark.parametrize("bad", [0, -3, "abc", "ddim0", "ddim999", "2000"])
def test_bad_step_specs_are_user_errors(bad):
    with pytest.raises(UserError):
        make_schedule(bad)
