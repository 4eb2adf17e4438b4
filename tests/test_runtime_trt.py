"""TensorRT engines and the trt backend on a GPU (skipped with the reason where they cannot run).

What these check, on a machine with TensorRT 10.x/11.x, cuda-python and a CUDA GPU:
- `build --backend tensorrt` builds strongly typed plans for dit_step, vae_decoder and dit from
  the mixed-fp16 S/8 export, records them in the manifest, and reuses them on a second run;
- trt sampling agrees with ONNX Runtime and the PyTorch fp32 reference (fp16 limits);
- CUDA-graph replay of the step gives exactly the latents of plain execution, and the shared
  scratch block gives exactly the latents of per-context scratch;
- `verify --backend trt` passes;
- a corrupt plan, a plan recorded for another TensorRT version, and a missing plan are one-line
  errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_runtime_common import MODEL_ARGS, assert_one_line_error, link_copy, run_cli, s8_folder

from dit_export.verify.metrics import rel_l2


def _why_not() -> str | None:
    from dit_export.engine import trt_api

    ok, why = trt_api.probe()
    return None if ok else why


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"TensorRT tests: {REASON}")]
LABELS = [207, 360, 387]


@pytest.fixture(scope="module")
def trt16(tmp_path_factory):
    """A copy of the fp16 S/8 folder with TensorRT plans built into it."""
    src = s8_folder(tmp_path_factory, "fp16")
    folder = link_copy(src, tmp_path_factory.mktemp("trt") / "s8-fp16")
    proc = run_cli("build", *MODEL_ARGS, "--precision", "fp16", "--backend", "tensorrt", "--out", str(folder),
                   "--verify-steps", "5")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "backend: tensorrt" in proc.stdout and "export   reused" in proc.stdout
    return folder


def test_build_records_and_reuses_plans(trt16):
    m = json.loads((trt16 / "manifest.json").read_text())
    plans = m["engines"]
    assert {r["graph"] for r in plans.values()} == {"dit", "dit_step", "vae_decoder"}
    for name, r in plans.items():
        assert (trt16 / name).is_file() and name.endswith(".plan") and f".trt{r['tensorrt'][:2]}" in name
        assert r["onnx_sha256"] == m["graphs"][r["graph"]]["sha256"] and r["options"]["strongly_typed"]
    proc = run_cli("build", *MODEL_ARGS, "--precision", "fp16", "--backend", "tensorrt", "--out", str(trt16),
                   "--no-verify")  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.count("reused") >= 4, proc.stdout


def test_trt_matches_ort_and_torch(trt16):
    from dit_export.runtime import Sampler

    with Sampler.load(trt16, backend="trt") as s:
        a = s.sample_latents(LABELS, seed=0, steps=10, progress=False)
        assert "TensorRT" in s.describe()
    with Sampler.load(trt16, backend="ort") as s:
        b = s.sample_latents(LABELS, seed=0, steps=10, progress=False)
    with Sampler.load(trt16, backend="torch") as s:
        c = s.sample_latents(LABELS, seed=0, steps=10, progress=False)
    assert rel_l2(a, c) < 1e-2 and rel_l2(a, b) < 1e-2


@pytest.mark.parametrize("option", ["cuda_graph", "shared_scratch"])
def test_replay_and_shared_scratch_change_nothing(trt16, option):
    from dit_export.runtime import Sampler

    with Sampler.load(trt16, backend="trt", **{option: True}) as s:
        on = s.sample(LABELS, seed=1, steps=6, return_latents=True, progress=False)
        desc = s.backend.describe()
    with Sampler.load(trt16, backend="trt", **{option: False}) as s:
        off = s.sample(LABELS, seed=1, steps=6, return_latents=True, progress=False)
    assert (
        ("CUDA graph on" in desc) if option == "cuda_graph" else ("shared scratch" in desc or "10.0" in desc)
    )
    np.testing.assert_array_equal(on[1], off[1])
    np.testing.assert_array_equal(on[0], off[0])


def test_verify_trt_passes(trt16):
    proc = run_cli("verify", "--engines", str(trt16), "--backend", "trt", "--seeds", "0", "--steps", "10",
                   "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", ["corrupt plan", "other TensorRT", "missing plan"])
def test_bad_plans_are_one_line_errors(trt16, tmp_path, case):
    folder = link_copy(trt16, tmp_path / "f")
    m = json.loads((folder / "manifest.json").read_text())
    name = next(n for n, r in m["engines"].items() if r["graph"] == "dit_step")
    if case == "corrupt plan":
        (folder / name).unlink()
        (folder / name).write_bytes(b"\0" * m["engines"][name]["bytes"])
        needles = ("does not match its sha256",)
    elif case == "other TensorRT":
        m["engines"][name]["tensorrt"] = "9.0.0.0"
        (folder / "manifest.json").write_text(json.dumps(m))
        needles = ("built with TensorRT 9.0.0.0",)
    else:
        (folder / name).unlink()
        needles = ("file is missing",)
    proc = run_cli("verify", "--engines", str(folder), "--backend", "trt", "--seeds", "0", "--steps", "1")
    assert_one_line_error(proc, *needles)
