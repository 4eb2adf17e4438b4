"""DPM-Solver++(2M) SDE and the Karras samplers (issue 23) in the runtime: ONNX Runtime and the
torch backend equal the PyTorch reference loop, the per-step noise is the Philox draw DDPM uses
(so an image depends only on its seed and index, whatever the batch split), and the folder's
manifest records the samplers with stored tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_runtime import fp32, latents, ort32, reference_model, torch32  # noqa: F401  (shared fixtures)

from dit_export.compare import rel_l2
from dit_export.errors import UserError
from dit_export.sampling.request import SampleRequest

LABELS = [207, 360, 387]  # 3 images on a batch-2 export: two chunks, the last one padded
NEW = ("dpm++2m-sde", "dpm++2m-sde-karras", "dpm++2m-karras")


@pytest.mark.parametrize(
    "sampler,cfg", [("dpm++2m-sde", 4.0), ("dpm++2m-sde-karras", 1.0), ("dpm++2m-karras", 4.0)]
)
def test_backends_match_the_reference_loop(ort32, torch32, reference_model, sampler, cfg):
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    noise = make_noise("philox", 1, len(LABELS), (4, 32, 32), guided=cfg > 1.0)
    ref = sample_latents(
        reference_model, LABELS, noise, steps=5, sampler=sampler, cfg_scale=cfg, progress=False
    ).numpy()
    for runner in (ort32, torch32):
        got = latents(runner, LABELS, seed=1, cfg_scale=cfg, steps=5, sampler=sampler)
        assert rel_l2(got, ref) < 1e-5, (runner.backend.name, sampler, cfg)


def test_any_batch_split_gives_the_same_images(ort32):
    """Philox per-step noise is keyed by (seed, image index): chunks, padding and neighbours do not
    matter, and a shard (first_index) draws exactly the images of the whole request."""
    kw = dict(seed=9, cfg_scale=4.0, steps=6, sampler="dpm++2m-sde-karras")
    whole = ort32.generate(SampleRequest(labels=(1, 2, 3, 4, 5), **kw), decode=False).latents
    for start, stop in ((0, 1), (1, 4), (4, 5)):
        part = SampleRequest(labels=tuple(range(start + 1, stop + 1)), first_index=start, **kw)
        np.testing.assert_array_equal(ort32.generate(part, decode=False).latents, whole[start:stop])
    many = ort32.generate_many(
        [SampleRequest(labels=(1, 2), **kw), SampleRequest(labels=(3, 4, 5), first_index=2, **kw)]
    )
    np.testing.assert_array_equal(np.concatenate([r.latents for r in many]), whole)


def test_the_sde_draws_per_step_noise(ort32, monkeypatch):
    from dit_export.sampling.batch_noise import ChunkNoise

    assert ort32.draws_noise("dpm++2m-sde") and not ort32.draws_noise("dpm++2m-karras")
    want = latents(ort32, [5, 6, 7], seed=2, steps=4, sampler="dpm++2m-karras")

    def no_step_noise(self, c, k0, k1):
        raise AssertionError("per-step noise drawn")

    monkeypatch.setattr(ChunkNoise, "steps", no_step_noise)
    got = latents(ort32, [5, 6, 7], seed=2, steps=4, sampler="dpm++2m-karras")
    np.testing.assert_array_equal(got, want)
    for sampler in ("dpm++2m-sde", "dpm++2m-sde-karras"):
        with pytest.raises(AssertionError, match="per-step noise drawn"):
            latents(ort32, [5], seed=2, steps=4, sampler=sampler)


def test_manifest_records_the_samplers_with_stored_tables(fp32):
    m = json.loads((fp32 / "manifest.json").read_text())
    text = json.dumps(m)
    for name in NEW:
        assert f'"{name}"' in text, name
    rec = json.dumps(m["schedule"]["samplers"]["dpm++2m-sde"])
    assert '"draws_noise": true' in rec and '"pred_noise"' in rec and '"kind": "sde"' in rec


def test_bad_requests_are_one_line(ort32):
    with pytest.raises(UserError, match="dpm\\+\\+2m-sde needs at least 2 steps"):
        latents(ort32, [1], steps=1, sampler="dpm++2m-sde")
    with pytest.raises(UserError, match="unipc has no -karras variant"):
        latents(ort32, [1], steps=10, sampler="unipc-karras")
