"""`verify`: passes on a faithful export, fails (naming the stage) on a valid-but-wrong graph."""

from __future__ import annotations

import json

import onnx
import pytest
from test_runtime_common import link_copy, perturb_weight, replace_graph, run_cli, s8_folder

from dit_export.verify import thresholds as th


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return s8_folder(tmp_path_factory, "fp32")


def test_verify_passes_and_writes_a_report(fp32, tmp_path):
    report = tmp_path / "r.json"
    proc = run_cli("verify", "--engines", str(fp32), "--seeds", "0", "1", "--steps", "2", "--no-progress",
                   "--json", str(report))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify passed" in proc.stdout
    r = json.loads(report.read_text())
    assert r["passed"] is True and r["failed_stage"] is None and r["precision"] == "fp32"
    stages = {row["stage"] for row in r["rows"]}
    assert stages == set(th.STAGES)
    assert {row["seed"] for row in r["rows"]} == {0, 1}
    cases = {row["case"] for row in r["rows"] if row["stage"] == "denoiser"}
    assert cases == {"t=999 out", "t=500 out", "t=0 out"}
    for row in r["rows"]:
        assert row["ok"] and (row["limit"] == th.limit(row["stage"], "fp32"))
    worst = max(row["value"] for row in r["rows"] if row["metric"] == "rel_l2")
    assert worst < 1e-5  # fp32 ONNX Runtime vs torch: ~5e-7 measured


def test_verify_fails_on_a_perturbed_step_graph(fp32, tmp_path):
    """A dit_step.onnx with one weight scaled by 1.05, re-hashed: valid files, wrong numbers."""
    from dit_export.verify.run import summary_line, verify

    folder = link_copy(fp32, tmp_path / "bad")
    model = onnx.load(str(fp32 / "dit_step.onnx"))
    perturb_weight(model, 1.05)
    replace_graph(folder, "dit_step", model)
    report = verify(folder, backend="ort", seeds=[0], steps=2)
    assert not report.passed and report.first_failure is not None
    assert report.first_failure.stage == "step"
    assert summary_line(report).startswith("verify FAILED at stage 'step'")
    d = report.to_dict()
    assert d["passed"] is False and d["failed_stage"] == "step"
    ok = {}
    for row in d["rows"]:
        ok.setdefault(row["stage"], []).append(row["ok"])
    assert all(ok["denoiser"])  # dit.onnx is untouched
    assert not any(ok["step"]) and not any(ok["final latents"])


def test_threshold_table_is_printed():
    text = th.table_text()
    assert "final latents" in text and "≤ 1e-05" in text and "≥ 30" in text
