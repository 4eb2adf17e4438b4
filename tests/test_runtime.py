"""The runtime sampler on ONNX Runtime (CPU) and the PyTorch backend, and its failure behaviour."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
from test_runtime_common import (
    assert_one_line_error,
    inject_nan,
    link_copy,
    rehash,
    replace_graph,
    run_cli,
    s8_folder,
)

from dit_export.errors import UserError
from dit_export.images import to_uint8
from dit_export.verify.metrics import rel_l2

LABELS = [207, 360, 387]  # 3 images on a batch-2 export: two chunks, the last one padded
STEPS = 4


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return s8_folder(tmp_path_factory, "fp32")


@pytest.fixture(scope="module")
def ort32(fp32):
    from dit_export.runtime import Sampler

    with Sampler.load(fp32, backend="ort") as s:
        yield s


@pytest.fixture(scope="module")
def torch32(fp32):
    from dit_export.runtime import Sampler

    with Sampler.load(fp32, backend="torch") as s:
        yield s


@pytest.fixture(scope="module")
def reference_model():
    from dit_export.models.checkpoints import random_dit

    model, _ = random_dit("S/8", 256, seed=0)
    return model


def test_import_and_ort_sampling_never_import_torch(fp32):
    code = (
        "import sys\n"
        "from dit_export.runtime import Sampler\n"
        f"s = Sampler.load({str(fp32)!r}, backend='ort')\n"
        "img, lat = s.sample([1, 2, 3], seed=0, steps=2, return_latents=True, progress=False)\n"
        "assert img.shape == (3, 256, 256, 3) and img.dtype.name == 'uint8', img.shape\n"
        "assert lat.shape == (3, 4, 32, 32)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('torch modules:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ort_and_torch_backends_agree(ort32, torch32):
    a = ort32.sample_latents(LABELS, seed=3, steps=STEPS, progress=False)
    b = torch32.sample_latents(LABELS, seed=3, steps=STEPS, progress=False)
    assert a.shape == (3, 4, 32, 32) and np.isfinite(a).all()
    assert rel_l2(a, b) < 1e-5


def test_runtime_matches_the_reference_loop(ort32, reference_model):
    """Chunking, padding and the noise indexing reproduce the reference loop on the whole request."""
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    for sampler, cfg in (("ddim", 1.5), ("ddpm", 1.0)):  # (ddpm, 4) is the backend comparison above
        got = ort32.sample_latents(LABELS, seed=1, cfg_scale=cfg, steps=3, sampler=sampler, progress=False)
        noise = make_noise("philox", 1, len(LABELS), (4, 32, 32), guided=cfg > 1.0)
        ref = sample_latents(
            reference_model, LABELS, noise, steps=3, sampler=sampler, cfg_scale=cfg, progress=False
        ).numpy()
        assert rel_l2(got, ref) < 1e-5, (sampler, cfg)


def test_torch_noise_reproduces_the_official_stream(ort32, reference_model):
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    got = ort32.sample_latents(LABELS, seed=0, steps=2, noise="torch", progress=False)
    noise = make_noise("torch", 0, len(LABELS), (4, 32, 32), guided=True)
    ref = sample_latents(reference_model, LABELS, noise, steps=2, progress=False).numpy()
    assert rel_l2(got, ref) < 1e-5


def test_an_image_depends_only_on_its_position_label_and_seed(ort32):
    full = ort32.sample_latents(LABELS, seed=2, steps=STEPS, progress=False)
    other = ort32.sample_latents([5, 6, LABELS[2]], seed=2, steps=STEPS, progress=False)
    np.testing.assert_array_equal(full[2], other[2])  # same chunk position, padding and neighbours differ
    single = ort32.sample_latents(LABELS[:1], seed=2, steps=STEPS, progress=False)
    np.testing.assert_array_equal(full[0], single[0])


def test_images_are_the_decoded_latents(ort32):
    img, lat = ort32.sample(LABELS[:2], seed=0, steps=2, return_latents=True, progress=False)
    assert img.shape == (2, 256, 256, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, to_uint8(ort32.decode(lat)))


def test_fp16_export_matches_the_fp32_reference(tmp_path_factory, torch32):
    from dit_export.runtime import Sampler

    fp16 = s8_folder(tmp_path_factory, "fp16")
    with Sampler.load(fp16, backend="ort") as s:
        a = s.sample_latents(LABELS, seed=3, steps=2, progress=False)
    b = torch32.sample_latents(LABELS, seed=3, steps=2, progress=False)
    assert rel_l2(a, b) < 1e-2


def test_bad_requests_are_one_line_errors(ort32):
    with pytest.raises(UserError, match="out of range"):
        ort32.sample([1000], steps=1, progress=False)
    with pytest.raises(UserError, match="cfg scale"):
        ort32.sample([1], cfg_scale=0.5, steps=1, progress=False)
    with pytest.raises(UserError, match="unknown noise"):
        ort32.sample([1], noise="gauss", steps=1, progress=False)
    with pytest.raises(UserError, match="TensorRT"):
        from dit_export.runtime import Sampler

        Sampler.load(ort32.folder, backend="trt")


def test_nan_names_the_first_step(fp32, tmp_path):
    import onnx

    from dit_export.runtime import Sampler
    from dit_export.sampling.schedule import make_schedule

    folder = link_copy(fp32, tmp_path / "nan")
    ts = make_schedule(STEPS, "ddpm").timesteps
    replace_graph(folder, "dit_step", inject_nan(onnx.load(str(fp32 / "dit_step.onnx")), int(ts[2])))
    with Sampler.load(folder, backend="ort") as s, pytest.raises(UserError) as e:
        s.sample_latents([1], steps=STEPS, progress=False)
    assert f"first at step 3/{STEPS} (t={int(ts[2])}" in str(e.value)
    # and through the CLI: one line, exit 2
    proc = run_cli("verify", "--engines", str(folder), "--seeds", "0", "--steps", str(STEPS), "--no-progress")
    assert_one_line_error(proc, "NaN/Inf", "step 3/")


@pytest.mark.parametrize(
    "case", ["hand-edited manifest", "missing graph", "corrupt graph", "bad manifest json"]
)
def test_broken_folders_are_one_line_errors(fp32, tmp_path, case):
    folder = link_copy(fp32, tmp_path / "f", copy=("dit_step.onnx",))
    if case == "hand-edited manifest":
        text = (folder / "manifest.json").read_text()
        sha = __import__("json").loads(text)["graphs"]["dit_step"]["sha256"]
        (folder / "manifest.json").write_text(text.replace(sha, "f" * 64))
        needles = ("sha256 of dit_step.onnx does not match",)
    elif case == "missing graph":
        (folder / "vae_decoder.onnx").unlink()
        needles = ("vae_decoder.onnx", "missing")
    elif case == "corrupt graph":
        (folder / "dit_step.onnx").write_bytes(b"not an onnx file" * 100)
        rehash(folder, "dit_step")
        needles = ("onnxruntime cannot load", "dit_step.onnx")
    else:
        (folder / "manifest.json").write_text("{ not json")
        needles = ("cannot read", "manifest.json")
    proc = run_cli("verify", "--engines", str(folder), "--seeds", "0", "--steps", "1", "--no-progress")
    assert_one_line_error(proc, *needles)


def test_sample_command_from_engines(fp32, tmp_path):
    """What `sample --engines DIR` runs: grid PNG, latents and images written."""
    from dit_export.runtime.command import add_engine_args, run_engine_sample
    from dit_export.sampling.command import add_request_args

    p = argparse.ArgumentParser()
    add_request_args(p)
    add_engine_args(p)
    args = p.parse_args(["--engines", str(fp32), "--classes", "1", "2", "3", "--steps", "2", "--no-progress",
                         "--out", str(tmp_path / "g.png"), "--save-latents", str(tmp_path / "l.npy"),
                         "--save-images", str(tmp_path / "i.npz")])  # fmt: skip
    assert run_engine_sample(args) == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    assert np.load(tmp_path / "l.npy").shape == (3, 4, 32, 32)
    assert np.load(tmp_path / "i.npz")["arr_0"].shape == (3, 256, 256, 3)
