"""TensorRT engines and the trt backend on a GPU (skipped with the reason where they cannot run).

What these check, on a machine with TensorRT 10.x/11.x, cuda-python and a CUDA GPU:
- `build --backend tensorrt` builds strongly typed plans for dit_step, vae_decoder and dit from
  the mixed-fp16 S/8 export into plans/, each with its record (the manifest is untouched), and
  reuses them on a second run;
- trt sampling agrees with ONNX Runtime and the PyTorch fp32 reference (fp16 limits);
- CUDA-graph replay of the step gives exactly the latents of plain execution, and the shared
  scratch block gives exactly the latents of per-context scratch;
- `verify --backend trt` passes;
- a corrupt plan, a plan recorded for another TensorRT version, and a missing plan are one-line
  errors.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from test_runtime_common import MODEL_ARGS, assert_one_line_error, link_copy, run_cli, s8_folder

from dit_export.compare import rel_l2
from dit_export.engine import trt_api
from dit_export.engine.plans import list_plans
from dit_export.engine.records import record_path


def _why_not() -> str | None:
    ok, why = trt_api.probe()
    return None if ok else why


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"TensorRT tests: {REASON}")]
LABELS = [207, 360, 387]


def stage_result(summary: str, stage: str) -> str | None:
    """The result word of a summary row: the first column widens with "engine vae_decoder"."""
    m = re.search(rf"^{re.escape(stage)}\s+(\S+)", summary, re.M)
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def trt16(tmp_path_factory):
    """A copy of the fp16 S/8 folder with TensorRT plans built into it."""
    src = s8_folder(tmp_path_factory, "fp16")
    folder = link_copy(src, tmp_path_factory.mktemp("trt") / "s8-fp16")
    proc = run_cli("build", *MODEL_ARGS, "--precision", "fp16", "--backend", "tensorrt", "--out", str(folder),
                   "--verify-steps", "5")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "backend: tensorrt" in proc.stdout and stage_result(proc.stdout, "export") == "reused"
    return folder


def test_build_records_and_reuses_plans(trt16):
    m = json.loads((trt16 / "manifest.json").read_text())
    plans = list_plans(trt16)
    assert {r["graph"] for r in plans.values()} == {"dit", "dit_step", "vae_decoder"}
    assert "engines" not in m  # the export's manifest is never rewritten
    for path, r in plans.items():
        name = path.name
        assert path.is_file() and name.endswith(".plan") and f".trt{r['tensorrt'][:2]}" in name
        assert r["onnx_sha256"] == m["graphs"][r["graph"]]["sha256"] and r["options"]["strongly_typed"]
    leftovers = [p.name for p in (trt16 / "plans").iterdir() if p.name.startswith(".") or p.suffix == ".lock"]
    assert leftovers == []  # no scratch timing cache, no polygraphy .lock files (issue 14.10)
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
    shutil.copytree(trt16 / "plans", folder / "plans")  # link_copy takes the top-level files only
    path, rec = next((p, r) for p, r in list_plans(folder).items() if r["graph"] == "dit_step")
    if case == "corrupt plan":
        path.unlink()
        path.write_bytes(b"\0" * rec["bytes"])
        needles = ("does not match its sha256",)
    elif case == "other TensorRT":
        rec["tensorrt"] = "9.0.0.0"
        record_path(path).write_text(json.dumps(rec))
        needles = ("built with TensorRT 9.0.0.0",)
    else:
        path.unlink()
        needles = ("file is missing",)
    proc = run_cli("verify", "--engines", str(folder), "--backend", "trt", "--seeds", "0", "--steps", "1")
    assert_one_line_error(proc, *needles)
