"""int8 (W8A8 QDQ) and fp8 (E4M3 QDQ) graphs (issue 22): static checks, ONNX Runtime kernels,
tiny-digits accuracy, deterministic calibration, fp8 structure, one-line refusals.

One int8 export of the shipped tiny-digits model (batch 10, the default ddpm-50 × 2 seeds
calibration) and one fp32 export without VAE (the source the unit tests quantize) are made once
per run and shared (tests/folders.py `shared_folder`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_user_error, run_dit_export
from folders import shared_folder
from onnx import numpy_helper

from dit_export.errors import UserError
from dit_export.export import analysis
from dit_export.export.calibrate import CALIB_FILE, CalibSet, CalibSettings, calib_key, capture
from dit_export.export.exporter import ExportOptions, export
from dit_export.export.precision import FP8, INT8, check_backend
from dit_export.export.quantize import ort_kernels, quantize_graph
from dit_export.export.report import inspect_folder
from dit_export.fileio import sha256_file
from dit_export.models.spec import ModelSpec

TINY = ModelSpec(model="tiny-digits")


def _export(out: Path, **kw) -> str:
    lines: list[str] = []
    export(ExportOptions(model=TINY, out=out, batch=10, force=True, **kw), log=lines.append)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory) -> Path:
    out, _ = shared_folder(tmp_path_factory, "int8/tiny-int8", lambda o: _export(o, precision=INT8))
    return out


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory) -> Path:
    def make(o: Path) -> str:
        lines: list[str] = []
        spec = ModelSpec(model="tiny-digits", vae="none")
        opts = ExportOptions(model=spec, out=o, batch=10, check=False, max_cache_order=None, force=True)
        export(opts, log=lines.append)
        return "\n".join(lines)

    out, _ = shared_folder(tmp_path_factory, "int8/tiny-fp32-novae", make)
    return out / "dit_step.onnx"


@pytest.fixture(scope="module")
def small_calib() -> CalibSet:
    """10 ddpm steps of one seed (deterministic; what the unit tests quantize with)."""
    model, _ = TINY.validate().load_dit()
    model.eval()
    s = CalibSettings(steps=10, seeds=(3,))
    return capture(model, 10, s, calib_key(s, TINY.to_dict(), 10), log=lambda _: None)


def _scales(path: Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    return {
        n.input[1]: numpy_helper.to_array(inits[n.input[1]])
        for n in m.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    }


def test_int8_folder_passes_static_checks_and_records_its_calibration(int8_folder):
    m = json.loads((int8_folder / "manifest.json").read_text())
    assert m["precision"] == "int8"
    assert (
        m["graphs"]["dit_step"]["precision"] == "int8" and m["graphs"]["vae_decoder"]["precision"] == "fp32"
    )
    assert not list(int8_folder.glob("*.data"))  # the int8 graphs carry their weights inline
    pol = m["precision_policy"]
    assert pol["library"].startswith("onnxruntime.quantization.quantize_static")
    cal = pol["calibration"]
    assert cal["sha256"] == sha256_file(int8_folder / CALIB_FILE) and cal["calls"] == 100  # 2 seeds × 50
    assert cal["settings"] == {"sampler": "ddpm", "steps": 50, "seeds": [0, 1], "cfg_scale": 4.0}
    assert m["checks"]["passed"] is True
    for name in ("dit", "dit_step"):
        rep = analysis.analyze(int8_folder / f"{name}.onnx", "int8")
        assert rep.ok, [c for c in rep.checks if not c.ok]
        assert {c.name for c in rep.checks} >= {"int8 in graph", "symmetric scales", "per-channel weights"}
        assert rep.quant_flop_share > 0.9
        # the fp32 islands by region: embeddings, adaLN GEMM, attention logits, final layer
        assert {"timestep sinusoid + MLP", "adaLN modulation GEMM", "final layer", "attention"} <= set(
            rep.quant_islands
        )
    # ONNX Runtime CPU runs the 16 block GEMMs (4 blocks × qkv, proj, fc1, fc2) as integer kernels
    kernels = ort_kernels(int8_folder / "dit_step.onnx", "int8")
    assert kernels.get("MatMulIntegerToFloat", 0) + kernels.get("QLinearMatMul", 0) == 16, kernels
    # `inspect` passes and says it: int8 share, the fp32 islands, the kernels, the calibration set
    lines: list[str] = []
    assert inspect_folder(int8_folder, out=lines.append), "\n".join(lines)
    text = "\n".join(lines)
    assert "quantized GEMM/conv FLOPs: 94." in text and "not quantized: adaLN modulation GEMM" in text
    assert "MatMulIntegerToFloat 16" in text and "calibration set: calibration.npz" in text


def test_int8_tiny_digits_accuracy_at_cfg4_ddpm50(int8_folder):
    from dit_export.runtime.sampler import Sampler
    from dit_export.verify.score import runtime_sample_fn, score_sampler, train_classifier

    runner = Sampler.load(int8_folder, "ort")
    try:
        assert runner.precision == "int8"
        r = score_sampler(
            runtime_sample_fn(runner, cfg_scale=4.0, steps=50, sampler="ddpm", seed=0),
            per_class=5,  # 50 images, batch 10
            classifier=train_classifier(0),
            precision="int8",
        )
    finally:
        runner.close()
    assert r.num_images == 50 and r.accuracy >= 0.97, (r.accuracy, r.fd)


def test_calibration_is_deterministic(small_calib, fp32_graph, tmp_path):
    model, _ = TINY.validate().load_dit()
    model.eval()
    s = CalibSettings(steps=10, seeds=(3,))
    again = capture(model, 10, s, calib_key(s, TINY.to_dict(), 10), log=lambda _: None)
    assert small_calib.calls == again.calls == 10
    for name in small_calib.step:
        assert np.array_equal(small_calib.step[name], again.step[name]), name
    # both guided halves reach the DiT: labels, then the null class (10 for tiny-digits)
    y = small_calib.dit["y"][0]
    assert len(y) == 20 and (y[10:] == 10).all() and (y[:10] < 10).all()
    # saved and loaded bit for bit; the same set quantizes to the same scales twice
    small_calib.save(tmp_path / CALIB_FILE)
    loaded = CalibSet.load(tmp_path / CALIB_FILE)
    assert loaded.meta["key"] == small_calib.meta["key"]
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    quantize_graph(fp32_graph, a, small_calib, "dit_step", INT8)
    quantize_graph(fp32_graph, b, loaded, "dit_step", INT8)
    sa, sb = _scales(a), _scales(b)
    assert sa.keys() == sb.keys() and len(sa) > 16
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_fp8_graph_is_structurally_valid_and_refused_on_cpu(small_calib, fp32_graph, tmp_path):
    out = tmp_path / "dit_step_fp8.onnx"
    quantize_graph(fp32_graph, out, small_calib, "dit_step", FP8)
    rep = analysis.analyze(out, "fp8")
    assert rep.ok, [c for c in rep.checks if not c.ok]
    assert rep.opset >= 19 and rep.gemm_flops.get("float8e4m3fn", 0) > 0
    assert rep.param_bytes.get("float8e4m3fn", 0) > 0  # E4M3 weights, one scale per tensor
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(rep.op_counts)
    with pytest.raises(UserError, match="no FP8 GEMM"):
        check_backend(FP8, "ort")


def test_bad_input_is_one_line(int8_folder, tmp_path):
    r = run_dit_export("export", "--model", "tiny-digits", "--precision", "int4", "--out", tmp_path / "x")
    assert_user_error(r, "int4")
    r = run_dit_export(
        "sample", "--engines", int8_folder, "--backend", "cpp", "--classes", "1", "--out", tmp_path / "g.png"
    )
    assert_user_error(r, "int8", "cannot run QDQ")
    r = run_dit_export("build", "--model", "tiny-digits", "--precision", "fp8", "--out", tmp_path / "f")
    assert_user_error(r, "fp8", "no FP8 GEMM")
    assert not (tmp_path / "f").exists()
