"""Bad inputs end in one clear line (issue 15): the CLI and the Python API, walked with nonsense.

Every CLI case must exit ≠ 0 with exactly one stderr line (`error: ...`) and no traceback, and
fail on a cheap check before any model loads (so the whole walk takes seconds).
"""

from __future__ import annotations

import errno
import time

import pytest

from dit_export.backends import canonical_backend
from dit_export.errors import UserError
from dit_export.lazy import optional_import
from dit_export.models.spec import ModelSpec
from dit_export.sampling.request import SampleRequest

S8 = ["--model", "S/8", "--random-weights"]

CLI_CASES = {
    "image size 0": (["sample", *S8, "--image-size", "0"], ["image-size"]),
    "num classes 0": (["sample", *S8, "--num-classes", "0"], ["num-classes"]),
    "float label": (["sample", *S8, "--vae", "none", "--classes", "1.5"], ["1.5"]),
    "string label": (["sample", *S8, "--vae", "none", "--classes", "cat"], ["cat"]),
    "float steps": (["sample", *S8, "--vae", "none", "--steps", "2.5"], ["2.5"]),
    "steps 1e9 names the limit": (["sample", *S8, "--vae", "none", "--steps", "1e9"], ["1000"]),
    "steps 0": (["sample", *S8, "--vae", "none", "--steps", "0"], ["steps"]),
    "negative seed": (["sample", *S8, "--vae", "none", "--seed", "-1"], ["seed"]),
    "huge seed": (["sample", *S8, "--vae", "none", "--seed", str(2**64)], ["seed"]),
    "huge weights seed": (["sample", *S8, "--weights-seed", str(10**30)], ["weights-seed"]),
    "cfg below 1": (["sample", *S8, "--vae", "none", "--cfg-scale", "0.5"], ["cfg"]),
    "cfg nan": (["sample", *S8, "--vae", "none", "--cfg-scale", "nan"], ["cfg"]),
    "cfg string": (["sample", *S8, "--vae", "none", "--cfg-scale", "four"], ["cfg-scale"]),
    "unknown backend word": (["sample", "--engines", ".", "--backend", "cuda"], ["unknown backend 'cuda'"]),
    "build backend torch": (["build", *S8, "--backend", "torch"], ["unknown backend 'torch'"]),
    "verify backend cpp": (["verify", "--engines", ".", "--backend", "cpp"], ["backend"]),
    "negative verify seeds": (["build", *S8, "--verify-seeds", "-1"], ["verify-seeds"]),
    "verify without folder": (["verify"], ["--engines"]),
    "sample from a missing folder": (["sample", "--engines", "no/such/folder"], ["no/such/folder"]),
    "backend needs engines": (["sample", *S8, "--backend", "ort"], ["--engines"]),
    "out needs a vae": (["sample", *S8, "--vae", "none", "--out", "x.png"], ["VAE"]),
    "both ckpt and random": (["sample", "--ckpt", "x.pt", "--random-weights", "--model", "S/8"], ["random"]),
    "unknown model": (["sample", "--model", "Q/2", "--random-weights"], ["Q/2"]),
    "unknown command": (["frobnicate"], ["frobnicate"]),
    "unknown flag": (["sample", "--frobnicate"], ["--frobnicate"]),
    "bench unknown backend": (["bench", "--backends", "warp-drive"], ["warp-drive"]),
    "score per-class string": (["score", "--per-class", "many"], ["per-class"]),
    "score steps 0": (["score", "--steps", "0"], ["steps"]),
    "export opset string": (["export", *S8, "--opset", "x", "--out", "o"], ["opset"]),
    "models takes no argument": (["models", "XL/2"], ["XL/2"]),
    "sde steps below its minimum": (
        ["sample", *S8, "--vae", "none", "--sampler", "dpm++2m-sde", "--steps", "1"],
        ["dpm++2m-sde needs at least 2 steps"],
    ),
    "karras on ddpm": (["sample", *S8, "--vae", "none", "--sampler", "ddpm-karras"], ["ddpm-karras"]),
    "score karras steps 1": (
        ["score", "--sampler", "dpm++2m-sde-karras", "--steps", "1"],
        ["at least 2 steps"],
    ),
    # issue 24: the default download paths offline (unreachable: tests/cli/test_default_paths.py)
    "default vae offline": (["sample", *S8, "--steps", "2", "--out", "x.png"], ["sd-vae-ft-mse", "offline"]),
    "released weights offline": (
        ["sample", "--model", "XL/2", "--vae", "none"],
        ["DiT-XL-2-256x256.pt", "place it at"],
    ),
    "hub id offline": (
        ["sample", "--ckpt", "facebook/DiT-XL-2-256", "--vae", "none"],
        ["DiT-XL-2-256", "offline"],
    ),
    "label grid needs a vae": (["sample", *S8, "--vae", "none", "--label-grid"], ["--label-grid", "VAE"]),
    "label grid takes no value": (["sample", *S8, "--label-grid=yes"], ["--label-grid"]),
    # issue 26: schedule tables (the sampler registry checks name and fewest steps before any work)
    "export schedules no steps": (["export", *S8, "--schedules", "dpm++2m", "--out", "o"], ["SAMPLER:STEPS"]),
    "build schedules unknown sampler": (["build", *S8, "--schedules", "euler:10"], ["unknown sampler 'euler'"]),
    "build schedules below the minimum": (["build", *S8, "--schedules", "unipc:1"], ["unipc needs at least 2"]),
    "schedules add zero steps": (["schedules", "--engines", ".", "--add", "ddim:0"], ["SAMPLER:STEPS"]),
    "schedules without engines": (["schedules", "--add", "ddim:30"], ["--engines"]),
}


@pytest.mark.parametrize("argv, needles", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_bad_input_is_one_line(run_cli, one_line_error, tmp_path, argv, needles) -> None:
    t0 = time.perf_counter()
    r = run_cli(*argv, cwd=tmp_path, timeout=120)
    one_line_error(r, *needles)
    assert time.perf_counter() - t0 < 60, "a cheap check must fail before models load"
    assert not any(tmp_path.iterdir()), "a refused command wrote nothing"


def test_sample_out_an_existing_folder_fails_before_the_run(run_cli, one_line_error, tmp_path) -> None:
    (tmp_path / "grid").mkdir()
    r = run_cli("sample", *S8, "--vae", "random-tiny", "--steps", "250", "--out", "grid", cwd=tmp_path)
    one_line_error(r, "grid", "folder")
    assert "ddpm" not in r.stderr  # no progress bar: nothing was sampled


def test_save_latents_in_a_missing_unwritable_place(run_cli, one_line_error, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("sample", *S8, "--vae", "none", "--save-latents", str(blocker / "x.npy"), cwd=tmp_path)
    one_line_error(r, "file")


def test_inspect_a_non_onnx_file(run_cli, one_line_error, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not a graph")
    one_line_error(run_cli("inspect", str(tmp_path / "notes.txt"), cwd=tmp_path, timeout=300))
    fake = tmp_path / "folder"
    fake.mkdir()
    (fake / "manifest.json").write_text("{not json")
    one_line_error(run_cli("inspect", str(fake), cwd=tmp_path, timeout=300))


# ------------------------------------------------------------------------------ the error mapping


@pytest.mark.parametrize(
    "exc, code, needles",
    [
        (UserError("bad thing\nsecond line"), 2, ["bad thing second line"]),
        (KeyboardInterrupt(), 130, ["interrupted"]),
        (OSError(errno.ENOSPC, "No space left on device", "big.onnx"), 1, ["disk full", "big.onnx"]),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), 1, ["/x", "Permission denied"]),
        (
            ModuleNotFoundError("No module named 'onnx'", name="onnx"),
            2,
            ["onnx", "pip install -e '.[export]'"],
        ),
        (
            ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"),
            2,
            ["'.[runtime]'", "'.[gpu]'"],
        ),
    ],
)
def test_main_maps_every_error_to_one_line(monkeypatch, capsys, exc, code, needles) -> None:
    from dit_export import cli
    from dit_export.cli import models

    def boom(args):
        raise exc

    monkeypatch.setattr(models, "run", boom)
    assert cli.main(["models"]) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_a_missing_module_of_our_own_is_a_bug_not_an_install(monkeypatch) -> None:
    from dit_export import cli
    from dit_export.cli import models

    def boom(args):
        raise ModuleNotFoundError("No module named 'dit_export.nope'", name="dit_export.nope")

    monkeypatch.setattr(models, "run", boom)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["models"])


# ------------------------------------------------------------------------------ the Python API


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "S/8", "random_weights": True, "image_size": 0},
        {"model": "S/8", "random_weights": True, "num_classes": 0},
        {"model": "S/8", "random_weights": True, "weights_seed": 10**30},
        {"model": "S/8", "random_weights": True, "weights_seed": -1},
        {"model": "S/8", "random_weights": True, "ckpt": "x.pt"},
        {"model": "Q/2", "random_weights": True},
        {"model": "S/8", "random_weights": True, "image_size": "256"},
    ],
)
def test_model_spec_rejects_nonsense(fields) -> None:
    with pytest.raises(UserError) as e:
        ModelSpec(**fields).validate()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"labels": (1.5,)},
        {"labels": ("3",)},
        {"labels": (True,)},
        {"labels": ()},
        {"labels": (1,), "steps": 2.5},
        {"labels": (1,), "steps": 10**9},
        {"labels": (1,), "steps": 0},
        {"labels": (1,), "cfg_scale": "4"},
        {"labels": (1,), "cfg_scale": float("nan")},
        {"labels": (1,), "seed": -1},
        {"labels": (1,), "seed": 2**64},
        {"labels": (1,), "sampler": "euler"},
        {"labels": (1,), "noise": "white"},
        {"labels": (10,)},  # ≥ num_classes
    ],
)
def test_sample_request_rejects_nonsense(fields) -> None:
    with pytest.raises(UserError) as e:
        SampleRequest(**fields).validate(num_classes=10)
    assert "\n" not in str(e.value)


def test_backend_words_and_installs_are_one_line() -> None:
    assert canonical_backend("onnxruntime") == "ort" and canonical_backend("TensorRT") == "trt"
    with pytest.raises(UserError, match="unknown backend"):
        canonical_backend("cuda")
    with pytest.raises(UserError, match="unknown backend"):
        canonical_backend("auto")  # only where a command offers it
    with pytest.raises(UserError, match="pip install"):
        optional_import("no_such_module_dit_export_test")


def test_runtime_refuses_a_missing_folder() -> None:
    from dit_export.runtime.sampler import Sampler

    with pytest.raises(UserError):
        Sampler.load("no/such/folder", backend="ort")


# issue 24: one backend vocabulary, and --engines fixes the model (helper D)
VOCABULARY_CASES = {
    # an alias is taken wherever its backend is: this reaches the folder check, not argparse
    "triton-repo takes onnxruntime": (
        ["triton-repo", "--engines", "no/such", "--out", "r", "--backend", "onnxruntime"],
        ["no/such"],
    ),
    "triton-repo says what it takes": (
        ["triton-repo", "--engines", "x", "--out", "r", "--backend", "pytorch"],
        ["unknown backend 'pytorch' for this command", "trt, ort or auto (aliases onnxruntime, tensorrt)"],
    ),
    "build says what it takes": (
        ["build", *S8, "--backend", "pytorch"],
        ["unknown backend 'pytorch' for this command", "ort, trt or auto (aliases onnxruntime, tensorrt)"],
    ),
    "verify takes pytorch, not c++": (
        ["verify", "--engines", ".", "--backend", "c++"],
        ["unknown backend 'c++' for this command", "ort, trt, torch or auto"],
    ),
    "engines with random weights": (
        ["sample", "--engines", "no/such", "--random-weights"],
        ["--random-weights has no effect with --engines no/such"],
    ),
    "engines with a checkpoint": (["sample", "--engines", "e", "--ckpt", "x.pt"], ["--ckpt", "--engines e"]),
    "engines with a vae": (["sample", "--engines", "e", "--vae", "none"], ["--vae", "--engines e"]),
}


@pytest.mark.parametrize("argv, needles", VOCABULARY_CASES.values(), ids=VOCABULARY_CASES.keys())
def test_backend_vocabulary_and_engines_flags_are_one_line(run_cli, one_line_error, tmp_path, argv, needles):
    one_line_error(run_cli(*argv, cwd=tmp_path, timeout=120), *needles)


def test_model_that_contradicts_engines_is_one_line(run_cli, one_line_error, tmp_path_factory, tmp_path):
    """`sample --model tiny-digits --engines <an S/8 folder>` no longer samples the S/8 model."""
    from folders import s8_folder

    folder = s8_folder(tmp_path_factory, "fp32")
    r = run_cli("sample", "--engines", str(folder), "--model", "tiny-digits", "--steps", "1", cwd=tmp_path)
    one_line_error(r, "--model tiny-digits contradicts --engines", "which holds DiT-S/8")
    r = run_cli("sample", "--engines", str(folder), "--image-size", "512", "--steps", "1", cwd=tmp_path)
    one_line_error(r, "--image-size 512 contradicts --engines")
    r = run_cli("sample", "--engines", str(folder), "--model", "S/8", "--steps", "1", "--classes", "1", "2",
                "--no-progress", "--out", str(tmp_path / "x.png"), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and (tmp_path / "x.png").is_file(), r.stderr


# issue 27: triton-repo's sizing flags (checked by argparse before the folder is read)
TRITON_SIZING_CASES = {
    f"triton-repo {flag[2:]} {value}": (["triton-repo", "--engines", "e", "--out", "r", flag, value], [flag])
    for flag, value in (("--workers", "0"), ("--threads", "0"), ("--instances", "0"), ("--queue-delay-us", "-5"))
}


@pytest.mark.parametrize("argv, needles", TRITON_SIZING_CASES.values(), ids=TRITON_SIZING_CASES.keys())
def test_triton_repo_sizing_flags_are_one_line(run_cli, one_line_error, tmp_path, argv, needles):
    one_line_error(run_cli(*argv, cwd=tmp_path, timeout=120), *needles)
