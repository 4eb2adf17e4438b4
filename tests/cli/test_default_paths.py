"""Every command's default download path with the network unreachable (issue 24): one line naming
what to download, never a traceback.

"Unreachable" here is a machine with no internet that does not know it: no offline variable is set,
and the Hub endpoint and the official site refuse every connection (closed ports on 127.0.0.1).
This is the case that crashed with huggingface_hub 2.x (`hf.constants` read without its import)
while every offline test passed. The offline-variable runs of the same paths are in
tests/cli/test_bad_inputs.py and tests/models/test_model_spec.py.
"""

from __future__ import annotations

import time

import pytest
from local_hub import error_line, run, unreachable_environ

RELEASED = "DiT-XL-2-256x256.pt"
MSE = "stabilityai/sd-vae-ft-mse"

# argv -> what the one error line must name. Commands not listed never download: `models`,
# `schedules`, `inspect`, `verify`, `sample-set`, `triton-repo`, `aoti` read local folders, and
# `score` samples the shipped model (their defaults run in their own tests).
DEFAULT_PATHS = {
    # the command: random weights, the default VAE (mse)
    "sample: default VAE": (
        ["sample", "--model", "S/8", "--random-weights", "--steps", "2", "--out", "x.png"],
        [f"cannot get VAE {MSE} from the Hugging Face Hub (no connection", "sd-vae-ft-mse"],
    ),
    "sample: released weights": (
        ["sample", "--model", "XL/2"],
        ["cannot download", RELEASED, "place it at"],
    ),
    "sample: released weights, no VAE": (
        ["sample", "--model", "XL/2", "--vae", "none", "--save-latents", "z.npy"],
        [RELEASED, "place it at"],
    ),
    "sample: ema": (
        ["sample", "--model", "S/8", "--random-weights", "--vae", "ema", "--steps", "2"],
        ["stabilityai/sd-vae-ft-ema", "no connection"],
    ),
    "sample: hub id": (
        ["sample", "--ckpt", "facebook/DiT-XL-2-256", "--vae", "none", "--save-latents", "z.npy"],
        [
            "cannot get facebook/DiT-XL-2-256 from the Hugging Face Hub (no connection",
            "transformer/config.json",
        ],
    ),
    "build: XL/2": (["build", "--model", "XL/2"], [RELEASED, "place it at"]),
    "build: XL/2 at 512 cached, default VAE not": (
        ["build", "--model", "XL/2", "--image-size", "512"],
        [MSE],
    ),
    "export: XL/2": (["export", "--model", "XL/2", "--out", "o"], [RELEASED]),
    "bench: XL/2": (["bench", "--model", "XL/2"], [RELEASED]),
    "info: released name": (["info", RELEASED], [RELEASED, "place it at"]),
    "info: hub id": (["info", "facebook/DiT-XL-2-512"], ["facebook/DiT-XL-2-512", "no connection"]),
}


@pytest.mark.parametrize("argv, needles", DEFAULT_PATHS.values(), ids=DEFAULT_PATHS.keys())
def test_default_path_without_network_is_one_line(tmp_path, argv, needles) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    stand_in = cache / "DiT-XL-2-512x512.pt"  # released weights on disk: the VAE is what is missing
    stand_in.write_bytes(b"never read: the VAE is missing first")
    t0 = time.perf_counter()
    r = run(unreachable_environ(tmp_path), *argv, cwd=tmp_path, timeout=300)
    error_line(r, *needles)
    assert time.perf_counter() - t0 < 90, "a refused connection fails at once, no retries"
    leftovers = {p.name for p in tmp_path.iterdir()} - {"cache", "hf_home"}
    assert not leftovers, leftovers  # no folder, lock or record made before the failure
    assert [p for p in cache.rglob("*") if p.is_file()] == [stand_in], "no partial download"
