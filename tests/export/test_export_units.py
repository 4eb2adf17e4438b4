"""Fast pieces of the export stage: metrics, the precision policy's names, thresholds, op lists."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dit_export.compare import finite_or_none, max_abs, psnr, rel_l2
from dit_export.errors import UserError
from dit_export.export import trt_ops
from dit_export.export.graphs import THRESHOLD_ENV, external_data_threshold
from dit_export.export.precision import POLICY, normalise_scope

REPO = Path(__file__).resolve().parents[2]


def test_metrics():
    ref = np.array([3.0, 4.0], dtype=np.float32)
    assert rel_l2(ref, ref) == 0.0
    assert rel_l2(np.array([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert rel_l2(np.zeros(2), np.zeros(2)) == 0.0 and rel_l2(np.ones(2), np.zeros(2)) == math.inf
    assert math.isnan(
        rel_l2(np.array([np.nan, 0.0]), ref)
    )  # compare: non-finite input is NaN, never passes (15.9)
    assert max_abs(np.array([3.0, 5.0]), ref) == 1.0
    a = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == math.inf
    b[0, 0, 0, 0] = 255
    assert psnr(a, b) == pytest.approx(10 * math.log10(a.size))  # MSE = 255² / size
    assert finite_or_none(math.inf, 100.0) == 100.0 and finite_or_none(math.nan) is None
    with pytest.raises(ValueError):
        rel_l2(np.zeros(2), np.zeros(3))


def test_policy_scopes_and_regions():
    assert normalise_scope("denoiser.model.blocks.11.attn.inner.qkv") == "blocks.*.attn.qkv"
    assert normalise_scope("blocks.3.adaLN_modulation.inner") == "blocks.*.adaLN_modulation"
    assert normalise_scope("denoiser.model") == ""
    assert POLICY.region_of("t_embedder.mlp.0:Linear") == "timestep sinusoid + MLP"
    assert POLICY.region_of("blocks.*.norm1:LayerNorm") == "LayerNorm statistics"
    assert POLICY.region_of("blocks.*:DiTBlock") == "modulate, gates, residual adds"
    assert POLICY.region_of("decoder.up_blocks.*.resnets.*.norm1:GroupNorm") == "GroupNorm"
    assert POLICY.region_of(":SamplerStep") == "model body"
    assert POLICY.region_of("") == "(exporter)"
    assert POLICY.dit_module_is_fp16("blocks.0.attn") and not POLICY.dit_module_is_fp16("blocks.0.norm1")
    assert not POLICY.dit_module_is_fp16("t_embedder") and not POLICY.dit_module_is_fp16("final_layer")
    desc = json.loads(json.dumps(POLICY.describe()))
    assert any(i["region"] == "timestep sinusoid + MLP" for i in desc["fp32_islands"])


def test_mixed_wraps_outermost_only():
    import torch

    from dit_export.export.mixed import Island, apply_dit_policy
    from dit_export.export.precision import PrecisionPolicy
    from dit_export.models.configs import DiTConfig
    from dit_export.models.dit import DiT

    cfg = DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=4, input_size=8, num_classes=3)
    model = DiT(cfg).eval()
    wrapped = apply_dit_policy(model)
    assert wrapped == [f"blocks.{i}.{m}" for i in range(2) for m in ("attn", "mlp", "adaLN_modulation")]
    assert (
        isinstance(model.blocks[0].attn, Island)
        and model.blocks[0].attn.inner.qkv.weight.dtype == torch.float16
    )
    assert model.t_embedder.mlp[0].weight.dtype == torch.float32
    assert model.blocks[0].norm1.__class__.__name__ == "LayerNorm"
    whole = DiT(cfg).eval()
    assert apply_dit_policy(whole, PrecisionPolicy("b", ("blocks.*",), ())) == ["blocks.0", "blocks.1"]


def test_external_data_threshold(monkeypatch):
    monkeypatch.delenv(THRESHOLD_ENV, raising=False)
    assert external_data_threshold() > 2**30 and external_data_threshold(5) == 5
    monkeypatch.setenv(THRESHOLD_ENV, "1024")
    assert external_data_threshold() == 1024
    monkeypatch.setenv(THRESHOLD_ENV, "lots")
    with pytest.raises(UserError, match=THRESHOLD_ENV):
        external_data_threshold()


def test_trt_op_list():
    assert {
        "MatMul",
        "Softmax",
        "LayerNormalization",
        "InstanceNormalization",
        "Resize",
        "Cast",
    } <= trt_ops.TRT_SUPPORTED_OPS
    assert "Swish" not in trt_ops.TRT_SUPPORTED_OPS and len(trt_ops.TRT_SUPPORTED_OPS) > 150
    assert trt_ops.OPSET_MIN <= trt_ops.DEFAULT_OPSET <= trt_ops.OPSET_MAX == 20


def test_manifest_module_is_torch_free():
    """The runtime and C++ side rely on manifest.py importing no torch/onnx."""
    code = (
        "import sys; import dit_export.export.manifest as m; "
        "bad = [k for k in ('torch', 'onnx', 'onnxruntime') if k in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_static_checks_catch_policy_violations(tmp_path):
    """A graph with an fp16 timestep MLP, or a mixed-type attention region, fails its checks."""
    import torch

    from dit_export.export import analysis, graphs
    from dit_export.export.mixed import apply_dit_policy
    from dit_export.export.precision import PrecisionPolicy
    from dit_export.models.configs import DiTConfig
    from dit_export.models.dit import DiT

    cfg = DiTConfig(depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=8, num_classes=3)
    args = (torch.zeros(2, 4, 8, 8), torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    failed = {}
    for name, modules in (("t16", ("t_embedder.mlp", "blocks.*.attn")), ("qkv16", ("blocks.*.attn.qkv",))):
        model = DiT(cfg).eval()
        apply_dit_policy(model, PrecisionPolicy(name, modules, ()))
        ir_model = graphs.trace(model, args, ("x", "t", "y"), ("out",), 18)
        graphs.cleanup(ir_model)
        saved = graphs.save(ir_model, tmp_path / f"{name}.onnx")
        rep = analysis.analyze(saved.path, "fp16")
        failed[name] = {c.name for c in rep.checks if not c.ok}
        assert not {"static shapes", "tensorrt ops", "no dynamic ops"} & failed[name]
    assert "fp32 timestep path" in failed["t16"] and "uniform fp16 attention" not in failed["t16"]
    assert "uniform fp16 attention" in failed["qkv16"]


def test_torchlib_is_listed_once_per_process_and_handed_back():
    """`graphs.torchlib_listed_once` (around every torch.onnx.export): within it torch's registry
    gets the same list of onnxscript's torch_lib functions without rebuilding it (a fresh list
    each time: torch may extend it); after it, torch's lazy module forwards to onnxscript again."""
    pytest.importorskip("onnxscript")
    from torch.onnx._internal.exporter import _registration

    from dit_export.export.graphs import torchlib_listed_once

    apis = _registration.onnxscript_apis
    with torchlib_listed_once():
        first, again = apis.get_torchlib_ops(), apis.get_torchlib_ops()
        assert len(first) > 100 and first == again and first is not again
        assert first[0].function is again[0].function  # the very functions, not re-made
    assert "get_torchlib_ops" not in vars(apis)
    fresh = apis.get_torchlib_ops()  # onnxscript's own again: new function records
    assert [m.qualified_name for m in fresh] == [m.qualified_name for m in first]
