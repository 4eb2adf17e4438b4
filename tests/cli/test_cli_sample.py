"""`python -m dit_export sample` / `info` end to end, and their one-line errors."""

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_dit_export, run_dit_export_here

from dit_export.models.checkpoints import random_dit


def run(*args, cwd=None):
    """The real CLI in a fresh interpreter (what a user types)."""
    return run_dit_export(*args, cwd=cwd, timeout=600)


def test_readme_sample_command_writes_latents(tmp_path):
    r = run(
        *"sample --model S/8 --random-weights --vae none --steps 10 --save-latents x.npy".split(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (8, 4, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    assert "10/10" in r.stderr  # the progress bar reached the end


def test_sample_matches_the_library_call(tmp_path):
    """The CLI is a thin layer: same latents as sample_latents with the same seed and noise."""
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    r = run(
        *"sample --model S/8 --random-weights --weights-seed 3 --vae none --steps 5 --sampler ddim".split(),
        *"--classes 1 2 --cfg-scale 1.5 --seed 7 --noise torch --save-latents x.npy --no-progress".split(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    model, cfg = random_dit("S/8", 256, seed=3)
    ref = sample_latents(
        model,
        [1, 2],
        make_noise("torch", 7, 2, (4, 32, 32), guided=True),
        steps=5,
        sampler="ddim",
        cfg_scale=1.5,
        progress=False,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), ref.numpy())


def test_sample_with_a_vae_writes_grid_and_npz(tmp_path):
    from dit_export.images import load_png
    from dit_export.models.vae import random_vae

    random_vae("tiny", seed=0).save_pretrained(tmp_path / "vae")
    r = run(
        *"sample --model S/8 --random-weights --vae".split(),
        str(tmp_path / "vae"),
        *"--steps 3 --classes 0 1 2 --out g.png --save-images s.npz".split(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    imgs = np.load(tmp_path / "s.npz")["arr_0"]
    assert imgs.shape == (3, 256, 256, 3) and imgs.dtype == np.uint8
    grid = load_png(tmp_path / "g.png")
    assert grid.shape == (256 + 4, 3 * 258 + 2, 3)
    # one PNG per image beside the grid, named by index and class, equal to the npz images
    names = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert names == ["000-class0.png", "001-class1.png", "002-class2.png"]
    np.testing.assert_array_equal(load_png(tmp_path / "g" / "001-class1.png"), imgs[1])


@pytest.fixture(scope="module")
def s8_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    model, _ = random_dit("S/8", 256)
    torch.save(model.state_dict(), d / "s8.pt")
    return d


def test_info_reports_config(s8_ckpt):
    r = run("info", str(s8_ckpt / "s8.pt"))
    assert r.returncode == 0, r.stderr
    assert "DiT-S/8" in r.stdout and "official" in r.stdout


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_bad_inputs_are_one_line_errors(s8_ckpt, tmp_path, capsys, monkeypatch):
    def run(*args, cwd=None):  # in-process; the subprocess path is covered by the tests above
        return run_dit_export_here(capsys, monkeypatch, *args, cwd=cwd)

    good = s8_ckpt / "s8.pt"
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    assert_one_line_error(run("sample", "--ckpt", str(truncated), "--vae", "none", "--steps", "2"))

    listpkl = tmp_path / "list.pt"
    listpkl.write_bytes(pickle.dumps([1, 2, 3]))
    assert_one_line_error(run("sample", "--ckpt", str(listpkl), "--vae", "none", "--steps", "2"))

    evil = tmp_path / "evil.pt"
    torch.save({"model": RunsCode()}, evil)
    r = run("sample", "--ckpt", str(evil), "--vae", "none", "--steps", "2", cwd=tmp_path)
    assert_one_line_error(r)
    assert not (tmp_path / "PWNED").exists()

    assert_one_line_error(run("sample", "--ckpt", str(good), "--model", "XL/2", "--vae", "none"), "DiT-XL/2")
    assert_one_line_error(
        run("sample", "--ckpt", str(good), "--vae", "none", "--classes", "1000"), "class id 1000"
    )
    assert_one_line_error(run("sample", "--ckpt", str(good), "--vae", "none", "--steps", "0"), "steps")
    assert_one_line_error(run("sample", "--ckpt", str(good), "--vae", "none", "--cfg-scale", "0.5"), "cfg")
    assert_one_line_error(
        run("sample", "--model", "Q/2", "--random-weights", "--vae", "none"), "unknown model"
    )
    assert_one_line_error(run("sample", "--ckpt", str(tmp_path / "missing.pt"), "--vae", "none"))


# `sample --help` without torch, onnx, onnxruntime, …: tests/test_imports.py (every command's --help)
