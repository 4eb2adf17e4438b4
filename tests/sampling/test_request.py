"""SampleRequest: the one request of the runtime and its one validation (one-line UserErrors)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_python

from dit_export.errors import UserError
from dit_export.sampling.request import NUM_TRAIN_STEPS, SampleRequest


def test_defaults_mirror_the_c_api():
    r = SampleRequest(labels=[1, 2])
    assert r.labels == (1, 2) and (r.seed, r.cfg_scale, r.steps, r.sampler, r.noise) == (
        0, 4.0, 250, "ddpm", "philox"
    )  # fmt: skip
    assert r.guided and not SampleRequest((1,), cfg_scale=1.0).guided
    assert SampleRequest.from_dict(r.to_dict()) == r


def test_validate_normalises_numpy_values():
    r = SampleRequest(np.array([3, 4]), seed=np.uint64(2**64 - 1), cfg_scale=np.float32(1.5),
                      steps=np.int64(7)).validate(num_classes=10)  # fmt: skip
    assert r.labels == (3, 4) and type(r.labels[0]) is int
    assert r.seed == 2**64 - 1 and type(r.seed) is int
    assert r.cfg_scale == 1.5 and type(r.cfg_scale) is float and r.steps == 7 and type(r.steps) is int
    assert SampleRequest((1,), cfg_scale=4).validate().cfg_scale == 4.0  # an int cfg is fine


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(labels=[1.0]), "class labels must be integers, got 1.0 (float)"),
        (dict(labels=["3"]), "class labels must be integers, got '3' (str)"),
        (dict(labels=[True]), "class labels must be integers, got True (bool)"),
        (dict(labels=[np.bool_(True)]), "class labels must be integers"),
        (dict(labels="12"), "labels must be a sequence of class ids"),
        (dict(labels=5), "labels must be a sequence of class ids"),
        (dict(labels=[]), "no class labels given"),
        (dict(labels=[10]), "class id 10 is out of range: this model has classes 0..9"),
        (dict(labels=[-1]), "class id -1 is out of range"),
        (dict(steps=2.0), "steps must be an integer, got 2.0 (float)"),
        (dict(steps="4"), "steps must be an integer"),
        (dict(steps=0), "steps 0: at least 1"),
        (dict(steps=1_000_000_000), f"steps 1000000000: at most {NUM_TRAIN_STEPS} (the training steps)"),
        (dict(cfg_scale="4"), "cfg scale must be a number, got '4' (str)"),
        (dict(cfg_scale=True), "cfg scale must be a number"),
        (dict(cfg_scale=0.5), "cfg scale must be ≥ 1"),
        (dict(cfg_scale=float("nan")), "cfg scale must be ≥ 1"),
        (dict(seed=-1), "seed -1 is out of range: seeds are 0..2**64-1"),
        (dict(seed=2**64), "out of range"),
        (dict(seed=1.0), "seed must be an integer"),
        (dict(sampler="euler"), "unknown sampler 'euler'; choose one of ddpm, ddim"),
        (dict(noise="gauss"), "unknown noise kind 'gauss'; choose one of philox, torch"),
        (dict(first_index=-1), "global image indices are 0..2**32-1"),
        (dict(first_index=2**32), "global image indices are 0..2**32-1"),
        (dict(first_index=1.0), "first_index must be an integer"),
        (dict(first_index=3, noise="torch"), "first_index needs philox noise"),
    ],
)
def test_bad_requests_are_one_line_errors(kw, needle):
    kw = {"labels": [1], **kw}
    with pytest.raises(UserError) as e:
        SampleRequest(**kw).validate(num_classes=10)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(UserError, match="unknown sample request field 'cfg'"):
        SampleRequest.from_dict({"labels": [1], "cfg": 2.0})


def test_request_imports_neither_numpy_nor_torch():
    """Importing the request is light; validating it asks the sampler registry (numpy, never torch)."""
    code = (
        "import sys; from dit_export.sampling.request import SampleRequest\n"
        "bad = [m for m in ('numpy', 'torch') if m in sys.modules]\n"
        "SampleRequest((1,)).validate(1000)\n"
        "bad += [m for m in ('torch',) if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    run_python(code, timeout=120)


def test_first_index_round_trips():
    req = SampleRequest(labels=[1, 2], first_index=np.int64(7)).validate(num_classes=10)
    assert req.first_index == 7 and type(req.first_index) is int
    assert SampleRequest.from_dict(req.to_dict()) == req
