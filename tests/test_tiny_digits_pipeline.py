"""The embedded model through the whole pipeline: build (export + ORT + verify) → runtime → score."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")


def run(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "dit_export", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )


def test_build_sample_score_tiny_digits(tmp_path):
    r = run(
        "build",
        "--model",
        "tiny-digits",
        "--batch",
        "10",
        "--precision",
        "fp16",
        "--backend",
        "onnxruntime",
        "--out",
        "eng",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify" in r.stdout and "passed" in r.stdout
    manifest = json.loads((tmp_path / "eng" / "manifest.json").read_text())
    assert manifest["image_size"] == 32 and manifest["model"]["config"]["num_classes"] == 10
    assert manifest["precision"] == "fp16" and manifest["vae"] is not None

    r = run(
        "sample",
        "--engines",
        "eng",
        "--classes",
        *map(str, range(10)),
        "--steps",
        "20",
        "--sampler",
        "ddim",
        "--out",
        "g.png",
        "--save-images",
        "s.npz",
        "--no-progress",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    imgs = np.load(tmp_path / "s.npz")["arr_0"]
    assert imgs.shape == (10, 32, 32, 3) and imgs.std() > 10  # real images, not a flat field

    r = run(
        "score",
        "--engines",
        "eng",
        "--backend",
        "ort",
        "--per-class",
        "3",
        "--cfg-scale",
        "4",
        "--steps",
        "20",
        "--sampler",
        "ddim",
        "--json",
        "score.json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "score.json").read_text())
    text = json.dumps(report)
    assert "accuracy" in text and "fp16" in text
