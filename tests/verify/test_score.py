"""The quality score: Fréchet distance math, the on-the-fly classifier, the score of a sampler
function (real digits, the tiny-digits reference), and the `score` command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("sklearn")

from dit_export.cli.score import register  # noqa: E402
from dit_export.errors import UserError  # noqa: E402
from dit_export.models.embedded import downscale_images  # noqa: E402
from dit_export.verify import score  # noqa: E402
from dit_export.verify.score import load_embedded_reference  # noqa: E402


@pytest.fixture(scope="module")
def clf() -> score.DigitClassifier:
    return score.train_classifier(seed=0)


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray]:
    return score.real_digit_images()


def real_sampler(real: tuple[np.ndarray, np.ndarray], seed: int = 1) -> score.SampleFn:
    """A sampler function that returns a random real digit of each requested class."""
    images, labels = real
    rng = np.random.default_rng(seed)

    def sample(want):
        return np.stack([images[rng.choice(np.flatnonzero(labels == c))] for c in want])

    return sample


def test_frechet_distance_matches_the_closed_form() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(ca @ cb).real
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * covmean)
    assert score.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert abs(score.frechet_distance(a, a)) < 1e-8
    assert score.frechet_distance(a, a + 2.0) == pytest.approx(4.0 * 6, rel=1e-9)  # mean shift only
    rank_deficient = np.repeat(a[:5], 3, axis=0)  # 15 rows, rank ≤ 5 covariance: still finite
    assert np.isfinite(score.frechet_distance(rank_deficient, b))
    with pytest.raises(ValueError):
        score.frechet_distance(a[:1], b)


def test_downscale_inverts_the_upscale_closely(real) -> None:
    from dit_export.models.embedded import load_digits_arrays

    small, _ = load_digits_arrays()
    back = downscale_images(real[0]).reshape(-1, 8, 8)
    # bilinear ×4 then a 4×4 box average is a mild blur of the original, not a copy
    assert np.abs(back - small).mean() < 0.08  # measured 0.070 on the 1,797 digits
    with pytest.raises(UserError, match="square images"):
        downscale_images(np.zeros((2, 30, 30, 3), np.uint8))


def test_classifier_and_real_digits_score_high(clf, real) -> None:
    assert clf.heldout_accuracy > 0.93
    labels = score.score_labels(10, 20)
    r = score.score_sampler(real_sampler(real), per_class=20, classifier=clf, backend="real", precision="-")
    assert r.num_images == 200 and r.per_class == 20 and len(r.per_class_accuracy) == 10
    assert r.accuracy > 0.95  # mostly the classifier's own training images
    assert 0 <= r.fd < 3 * r.fd_real + 1.0  # real digits sit at the sample-size floor
    # wrong labels: accuracy collapses, FD does not care (same images)
    images = real_sampler(real)(labels)
    shifted = [(c + 1) % 10 for c in labels]
    s = score.score_images(images, shifted, clf)
    assert s["accuracy"] < 0.1
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    noise = np.random.default_rng(0).integers(0, 256, size=(200, 32, 32, 3), dtype=np.uint8)
    assert score.score_images(noise, labels, clf)["fd"] > 10 * r.fd_real


def test_bad_sampler_output_and_requests_are_one_line_errors(clf) -> None:
    with pytest.raises(UserError, match="uint8"):
        score.score_sampler(lambda y: np.zeros((len(y), 32, 32, 3), np.float32), per_class=1, classifier=clf)
    with pytest.raises(UserError, match="expected \\(10"):
        score.score_sampler(lambda y: np.zeros((3, 32, 32, 3), np.uint8), per_class=1, classifier=clf)
    with pytest.raises(UserError, match="per-class"):
        score.score_labels(10, 0)


def test_reference_sampler_scores_the_shipped_model(clf) -> None:
    model, decode = load_embedded_reference("tiny-digits")
    fn = score.torch_sample_fn(model, decode, cfg_scale=4.0, steps=10, sampler="ddim", seed=0, batch=7)
    r = score.score_sampler(fn, per_class=2, classifier=clf, cfg_scale=4.0, steps=10, sampler="ddim")
    assert r.backend == "torch" and r.precision == "fp32" and r.num_images == 20
    assert r.accuracy >= 0.7  # 10 DDIM steps, 20 images: loose; the full score is in the README
    # batching bounds memory only: image i always gets noise index i, so another batch size gives
    # the same images up to GEMM rounding (seen: 2 of 61,440 uint8 values off by 1)
    again = score.torch_sample_fn(model, decode, cfg_scale=4.0, steps=10, sampler="ddim", seed=0, batch=20)
    labels = score.score_labels(10, 2)
    a, b = fn(labels).astype(int), again(labels).astype(int)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    return p


def test_score_command_writes_the_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "score.json"
    args = _parser().parse_args(
        [
            "score",
            "--per-class",
            "1",
            "--steps",
            "4",
            "--sampler",
            "ddim",
            "--cfg-scale",
            "4",
            "1",
            "--json",
            str(out),
        ]
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "torch" in text and "fp32" in text
    data = json.loads(out.read_text())
    assert data["model"] == "tiny-digits"
    assert [r["cfg_scale"] for r in data["results"]] == [4.0, 1.0]
    for r in data["results"]:
        assert r["num_images"] == 10 and 0.0 <= r["accuracy"] <= 1.0 and r["fd"] >= 0.0
    args = _parser().parse_args(
        ["score", "--per-class", "1", "--steps", "2", "--cfg-scale", "4", "--min-accuracy", "101"]
    )
    assert args.func(args) == 1


@pytest.mark.parametrize(
    "argv, match",
    [
        (["score", "--model", "XL/2"], "no embedded model"),
        (["score", "--cfg-scale", "0.5"], "≥ 1"),
        (["score", "--steps", "0"], "≥ 1"),
        (["score", "--backend", "ort"], "--engines"),
    ],
)
def test_score_command_user_errors(argv, match) -> None:
    args = _parser().parse_args(argv)
    with pytest.raises(UserError, match=match):
        args.func(args)


def test_ort_runtime_scores_like_the_reference(tmp_path, tmp_path_factory, clf, capsys) -> None:
    """The shipped model through the runtime's ORT backend, fp32 and mixed fp16, scored and compared
    with the PyTorch reference on the same noise. fp16 is exported here from the model saved as a
    diffusers folder; fp32 is the suite's shared tiny-digits build (the same weights and batch,
    exported from the shipped file), so the two loaders' exports are scored alike."""
    from folders import tiny_digits_folder

    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from dit_diffusers import to_diffusers_config, to_diffusers_state_dict
    from safetensors.torch import save_file

    from dit_export.export.exporter import ExportOptions, export
    from dit_export.models.checkpoints import load_dit
    from dit_export.models.embedded import embedded_model, resolve_embedded
    from dit_export.models.spec import ModelSpec
    from dit_export.runtime import Sampler

    # A diffusers folder carries the heads, so the exporter's load_dit needs no extra argument;
    # the official flavor keeps the numerics identical to the shipped file.
    ckpt, vae, size, heads = resolve_embedded("tiny-digits")
    model, cfg = load_dit(ckpt, image_size=size, num_heads=heads)
    folder = tmp_path / "dit"
    folder.mkdir()
    save_file(to_diffusers_state_dict(model), str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({"_class_name": "DiTTransformer2DModel"} | to_diffusers_config(cfg))
    )
    labels = score.score_labels(10, 1)
    ref_model, decode = load_embedded_reference("tiny-digits")
    ref = score.torch_sample_fn(ref_model, decode, cfg_scale=4.0, steps=6, sampler="ddim")(labels)
    for precision in ("fp32", "fp16"):
        out = tmp_path / precision
        if precision == "fp32":
            out = tiny_digits_folder(tmp_path_factory)  # read only: score writes its JSON elsewhere
        else:
            opts = ExportOptions(
                model=ModelSpec(ckpt=str(folder), flavor="official", vae=str(vae)),
                out=out,
                batch=10,
                precision=precision,
                check=False,
                max_cache_order=None,  # scored uncached: the forecast-cache graphs would never run
            )
            export(opts, log=lambda s: None)
        args = _parser().parse_args(
            ["score", "--backend", "ort", "--engines", str(out), "--per-class", "1", "--steps", "6"]
            + ["--sampler", "ddim", "--cfg-scale", "4", "--json", str(tmp_path / f"{precision}.json")]
        )
        assert args.func(args) == 0
        (r,) = json.loads((tmp_path / f"{precision}.json").read_text())["results"]
        assert (r["backend"], r["precision"], r["num_images"]) == ("ort", precision, 10)
        got = Sampler.load(out, "ort").sample(
            labels, seed=0, cfg_scale=4.0, steps=6, sampler="ddim", progress=False
        )
        diff = np.abs(np.asarray(got, dtype=np.int16) - ref)
        assert diff.mean() < (0.5 if precision == "fp32" else 3.0), precision
        assert r["accuracy"] == pytest.approx(score.score_images(ref, labels, clf)["accuracy"], abs=0.1)
        # issue 16.2: without --backend, --engines scores the backend the folder was built for (ort here),
        # not the PyTorch reference; the library function takes the backend
        args = _parser().parse_args(["score", "--engines", str(out), "--per-class", "1", "--steps", "2",
                                     "--cfg-scale", "4", "--json", str(tmp_path / "auto.json")])  # fmt: skip
        assert args.func(args) == 0
        (auto,) = json.loads((tmp_path / "auto.json").read_text())["results"]
        assert (auto["backend"], auto["precision"]) == ("ort", precision)
        settings = score.ScoreSettings(per_class=1, cfg_scales=(4.0,), steps=2)
        (lib,) = score.score_engines(out, "ort", embedded_model("tiny-digits"), settings, classifier=clf)
        assert (lib.backend, lib.precision, lib.num_images) == ("ort", precision, 10)
        assert lib.accuracy == auto["accuracy"] and lib.fd == pytest.approx(auto["fd"])
    capsys.readouterr()
