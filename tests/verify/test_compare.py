"""The one comparison vocabulary: metrics, the limits table, rows that answer bool(), NaN in words."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dit_export import compare
from dit_export.compare import Row
from dit_export.export.check import failure_message
from dit_export.export.feeds import coef_row, example_feeds


def test_metrics() -> None:
    r = np.array([3.0, 4.0])
    assert compare.rel_l2(r, r) == 0.0
    assert compare.rel_l2(np.array([3.0, 5.0]), r) == pytest.approx(1 / 5)
    assert compare.rel_l2(np.zeros(2), np.zeros(2)) == 0.0 and compare.rel_l2(r, np.zeros(2)) == math.inf
    assert compare.max_abs(np.array([3.0, 6.5]), r) == 2.5
    a = np.full((4, 4), 100, np.uint8)
    assert compare.psnr(a, a) == math.inf
    assert compare.psnr(a + 1, a) == pytest.approx(10 * math.log10(255**2))  # MSE 1
    for fn in (compare.rel_l2, compare.max_abs, compare.psnr):
        assert math.isnan(fn(np.array([np.nan, 1.0]), np.array([1.0, 1.0])))
        assert math.isnan(fn(np.array([1.0, 1.0]), np.array([np.inf, 1.0])))
    with pytest.raises(ValueError, match="shape"):
        compare.rel_l2(np.zeros(2), np.zeros(3))


def test_rows_answer_bool_and_psnr_is_a_lower_limit() -> None:
    assert Row("step", "c", "rel_l2", 1e-6, 1e-5)
    assert not Row("step", "c", "rel_l2", 2e-5, 1e-5)
    assert Row("images", "c", "psnr_db", 60.0, 50.0) and not Row("images", "c", "psnr_db", 40.0, 50.0)
    assert Row("images", "c", "psnr_db", math.inf, 50.0)
    info = Row("vae", "c", "rel_l2", 5.0, None)
    assert info and info.result_text() == "info"
    assert not Row("step", "c", "rel_l2", math.nan, 1e-5)
    assert not Row("vae", "c", "rel_l2", math.nan, None)  # non-finite fails even where only reported
    assert compare.first_failure([info, Row("dit", "x", "rel_l2", 1.0, 1e-5)]).stage == "dit"
    rows = [Row("latents", "a", "rel_l2", v, 1e-4) for v in (1e-6, math.nan, 1e-5)]
    assert math.isnan(compare.worst(rows, "latents").value)  # the non-finite row is the worst
    assert compare.worst(rows, "step") is None


def test_nan_is_said_in_words() -> None:
    """Issue 15.9: an export with NaN weights reported `rel_l2 inf`; now the row says NaN."""
    got = np.ones((2, 4, 8, 8), np.float32)
    got[0, 0, :3, 0] = np.nan
    row = compare.compare("step", "rel_l2", got, np.ones_like(got), "fp32", "t=999 cfg=4 ddpm")
    assert not row
    assert row.value_text() == f"non-finite (NaN in 3 of {got.size} values of the output)"
    assert "non-finite (NaN in 3 of" in row.describe() and "inf" not in row.describe()
    assert "non-finite (NaN" in compare.format_table([row])
    msg = failure_message([row])
    assert msg.startswith("dit_step.onnx failed its check") and "NaN" in msg
    d = row.to_dict()
    assert d["value"] is None and d["passed"] is False and "NaN" in d["nonfinite"]
    json.dumps(d, allow_nan=False)
    ref_bad = compare.compare("dit", "rel_l2", np.ones(3), np.array([1.0, np.inf, 1.0]), "fp16")
    assert not ref_bad and "±inf in 1 of 3 values of the reference" in ref_bad.value_text()


def test_one_table_of_limits() -> None:
    stages = {x.stage for x in compare.LIMITS}
    assert stages == {"dit", "guided_eps", "step", "latents", "vae", "images"}
    assert set(compare.VERIFY_STAGES) <= stages
    assert {x.metric for x in compare.LIMITS} <= set(compare.METRICS)
    for x in compare.LIMITS:
        for p in compare.PRECISIONS:
            assert compare.limit(x.stage, x.metric, p) == x.of(p)
    # fp16 limits are never tighter than fp32 ones
    for x in compare.LIMITS:
        if x.fp32 is not None and x.fp16 is not None:
            assert (x.fp16 <= x.fp32) if x.metric in compare.HIGHER_IS_BETTER else (x.fp16 >= x.fp32)
    with pytest.raises(KeyError, match="no limit"):
        compare.limit("denoiser", "rel_l2", "fp32")
    text = compare.table_text()
    assert "final latents" in text and "≥ 30 dB" in text and "≤ 1e-05" in text
    assert json.loads(json.dumps(compare.limits_dict()))[0]["stage"] == "dit"


def test_example_feeds() -> None:
    shape = {"batch": 2, "channels": 4, "size": 8, "num_classes": 10}
    dit = example_feeds("dit", **shape, seed=1, t=999)
    assert dit["x"].shape == (4, 4, 8, 8) and dit["x"].dtype == np.float32
    assert np.array_equal(dit["x"][:2], dit["x"][2:]) and list(dit["y"][2:]) == [10, 10]
    assert list(dit["t"]) == [999] * 4 and dit["t"].dtype == np.int64
    step = example_feeds("dit_step", **shape, seed=1, t=999, guidance=1.5, sampler="ddim", steps=50)
    assert list(step) == ["x", "t", "y", "noise", "guidance", "coef"]
    assert np.array_equal(step["x"], dit["x"][:2]) and np.array_equal(step["y"], dit["y"][:2])  # same draws
    assert np.array_equal(step["coef"], coef_row(999, "ddim", 50)) and step["guidance"].shape == (1,)
    again = example_feeds("dit_step", **shape, seed=1, t=999, guidance=1.5, sampler="ddim", steps=50)
    assert all(np.array_equal(step[k], again[k]) for k in step)  # seeded
    assert example_feeds("vae_decoder", **shape, seed=3)["latent"].shape == (2, 4, 8, 8)
    given = example_feeds("dit_step", **shape, x=np.zeros((2, 4, 8, 8)), labels=np.array([1, 2]))
    assert not given["x"].any() and list(given["y"]) == [1, 2]
    with pytest.raises(ValueError, match="no example feeds"):
        example_feeds("unet", **shape)
