"""The embedded model through the whole pipeline: build (export + ORT + verify) → runtime → score."""

import json

import numpy as np
import pytest
from conftest import run_dit_export

pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")


def run(*args, cwd):
    return run_dit_export(*args, cwd=cwd, timeout=900)


def test_build_sample_score_tiny_digits(tmp_path):
    r = run(
        *"build --model tiny-digits --batch 10 --precision fp16 --backend ort --out eng".split(), cwd=tmp_path
    )  # the short word here, the long one for sample: every command takes both
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify" in r.stdout and "passed" in r.stdout
    manifest = json.loads((tmp_path / "eng" / "manifest.json").read_text())
    assert manifest["image_size"] == 32 and manifest["model"]["config"]["num_classes"] == 10
    assert manifest["precision"] == "fp16" and manifest["vae"] is not None

    r = run(
        *"sample --engines eng --classes".split(),
        *map(str, range(10)),
        *"--steps 20 --sampler ddim --backend onnxruntime --out g.png --save-images s.npz --no-progress".split(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    imgs = np.load(tmp_path / "s.npz")["arr_0"]
    assert imgs.shape == (10, 32, 32, 3) and imgs.std() > 10  # real images, not a flat field
    per_image = sorted(p.name for p in (tmp_path / "g").glob("*.png"))
    assert per_image == [f"{i:03d}-class{i}.png" for i in range(10)]

    r = run(
        *"score --engines eng --per-class 3 --cfg-scale 4 --steps 20 --sampler ddim --json score.json".split(),
        cwd=tmp_path,
    )  # no --backend: auto scores the backend the folder was built for (ort here)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "score.json").read_text())
    text = json.dumps(report)
    assert "accuracy" in text and "fp16" in text
    assert [r["backend"] for r in report["results"]] == ["ort"]
