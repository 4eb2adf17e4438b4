"""`build` on a CPU-only machine: ONNX Runtime artifacts, reuse, staleness, locks, interruptions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_runtime_common import (
    _DRIVER,
    BUILD_OUTPUT,
    MODEL_ARGS,
    assert_one_line_error,
    link_copy,
    run_cli,
    s8_folder,
)

from dit_export.export.manifest import read_manifest, verify_hashes


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return s8_folder(tmp_path_factory, "fp32")


def test_build_onnxruntime_makes_a_verified_folder(fp32):
    out = BUILD_OUTPUT["fp32"]
    assert "backend: onnxruntime (CPUExecutionProvider), as requested" in out
    assert "export   exported" in out and "verify   passed" in out
    m = read_manifest(fp32)
    verify_hashes(fp32, m)
    assert m["build"]["request"]["precision"] == "fp32" and m["build"]["verify"]["passed"] is True
    assert {r["stage"] for r in m["build"]["verify"]["rows"]} >= {
        "denoiser",
        "step",
        "final latents",
        "images psnr",
    }


def test_rebuild_unchanged_reuses_everything(fp32):
    before = {p.name: p.stat().st_mtime_ns for p in fp32.iterdir() if p.suffix == ".onnx"}
    t0 = time.perf_counter()
    proc = run_cli("build", *MODEL_ARGS, "--precision", "fp32", "--backend", "onnxruntime",
                   "--out", str(fp32), "--no-verify")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "export   reused" in proc.stdout and "unchanged, sha256 checked" in proc.stdout
    assert time.perf_counter() - t0 < 60
    assert before == {p.name: p.stat().st_mtime_ns for p in fp32.iterdir() if p.suffix == ".onnx"}


def test_changed_request_rebuilds(tmp_path_factory):
    """fp32 folder + --precision fp16 → re-export (the fp16 folder the other tests use)."""
    fp16 = s8_folder(tmp_path_factory, "fp16")
    out = BUILD_OUTPUT["fp16"]
    assert "exporting to" in out and "changed: precision" in out
    m = read_manifest(fp16)
    assert m["precision"] == "fp16" and m["build"]["request"]["precision"] == "fp16"


def test_edited_graph_is_stale(fp32, tmp_path, monkeypatch):
    """A graph file that no longer matches the manifest makes the export stale (checked, not built)."""
    from dit_export.engine.build import BuildConfig, _why_stale, export_request

    folder = link_copy(fp32, tmp_path / "f", copy=("vae_decoder.onnx",))
    with open(folder / "vae_decoder.onnx", "ab") as f:
        f.write(b"\0")
    cfg = BuildConfig(model="S/8", random_weights=True, vae="random-tiny", batch=2, precision="fp32")
    why = _why_stale(folder, export_request(cfg), force=False)
    assert why is not None and "not valid" in why and "vae_decoder.onnx" in why
    assert _why_stale(fp32, export_request(cfg), force=False) is None
    cfg.weights_seed = 3
    assert _why_stale(fp32, export_request(cfg), force=False) == "changed: weights_seed"


def test_plans_survive_a_re_export_when_their_graph_did_not_change(fp32, tmp_path):
    """Set-aside plans come back only where the recorded ONNX sha256 still matches."""
    from dit_export.engine.build import _restore, _stash

    folder = link_copy(fp32, tmp_path / "f")
    m = json.loads((folder / "manifest.json").read_text())
    keep_name, drop_name = "vae_decoder.trt10.13.sm90.plan", "dit_step.trt10.13.sm90.plan"
    (folder / keep_name).write_bytes(b"plan-a")
    (folder / drop_name).write_bytes(b"plan-b")
    (folder / "timing.trt10.13.sm90.cache").write_bytes(b"cache")
    m["engines"] = {
        keep_name: {"graph": "vae_decoder", "onnx_sha256": m["graphs"]["vae_decoder"]["sha256"]},
        drop_name: {"graph": "dit_step", "onnx_sha256": "0" * 64},
    }
    (folder / "manifest.json").write_text(json.dumps(m))
    keep = _stash(folder)
    assert keep is not None and (keep / keep_name).is_file()
    for p in (keep_name, drop_name, "timing.trt10.13.sm90.cache"):
        (folder / p).unlink()  # the export swaps in a folder without them, and a manifest without engines
    del m["engines"]
    (folder / "manifest.json").write_text(json.dumps(m))
    assert _restore(keep, folder) == 1
    assert (folder / keep_name).read_bytes() == b"plan-a" and not (folder / drop_name).exists()
    assert (folder / "timing.trt10.13.sm90.cache").is_file() and not keep.exists()
    assert set(read_manifest(folder)["engines"]) == {keep_name}


def test_auto_backend_says_which_and_why(fp32):
    proc = run_cli("build", *MODEL_ARGS, "--precision", "fp32", "--out", str(fp32), "--no-verify")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("backend auto → onnxruntime (CPUExecutionProvider): ")
    assert "tensorrt" in first.lower()  # the reason names what is missing


def test_backend_tensorrt_without_tensorrt_is_one_line_error(tmp_path):
    proc = run_cli("build", *MODEL_ARGS, "--backend", "tensorrt", "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, "--backend tensorrt")
    assert not (tmp_path / "x").exists()


def test_second_build_of_a_folder_is_refused_while_one_runs(fp32):
    from dit_export.engine.lock import BuildLock

    with BuildLock(fp32):
        proc = run_cli("build", *MODEL_ARGS, "--precision", "fp32", "--backend", "onnxruntime",
                       "--out", str(fp32), "--no-verify")  # fmt: skip
    assert_one_line_error(proc, "another build of", f"(pid {os.getpid()})")


def test_build_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    proc = run_cli("build", *MODEL_ARGS, "--backend", "onnxruntime", "--out", str(tmp_path / "mine"))
    assert_one_line_error(proc, "not empty")


def test_killed_build_leaves_the_folder_valid(fp32, tmp_path):
    """SIGKILL during a re-export: the old export stays whole and usable, the lock is released."""
    folder = link_copy(fp32, tmp_path / "f")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-c", _DRIVER, "build", *MODEL_ARGS, "--weights-seed", "5", "--precision", "fp32",
            "--backend", "onnxruntime", "--out", str(folder), "--no-verify"]  # fmt: skip
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    seen = ""
    while time.time() < deadline:  # wait until the export is under way
        line = p.stdout.readline()
        seen += line
        if "exporting dit.onnx" in line or not line:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert "exporting to" in seen, seen
    m = read_manifest(folder)
    verify_hashes(folder, m)
    assert m["build"]["request"]["weights_seed"] == 0  # still the complete old export
    proc = run_cli("build", *MODEL_ARGS, "--precision", "fp32", "--backend", "onnxruntime",
                   "--out", str(folder), "--no-verify")  # fmt: skip
    assert proc.returncode == 0 and "export   reused" in proc.stdout, proc.stdout + proc.stderr
    assert not list(tmp_path.glob(".f.*.partial")), list(tmp_path.iterdir())  # the killed export's scratch


def test_plan_staleness_from_the_manifest(fp32, tmp_path):
    """The engine records decide fresh / stale / missing without TensorRT (a stand-in target)."""
    from dit_export.engine.plans import PlanRow, Target, build_plans, expected_record, plan_name, plan_status
    from dit_export.engine.trt_api import BuildOptions
    from dit_export.export.manifest import sha256_file

    folder = link_copy(fp32, tmp_path / "f")
    target = Target("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")
    opts = BuildOptions().to_dict()
    name = plan_name("dit_step", target)
    assert name == "dit_step.trt10.13.sm90.plan"
    m = read_manifest(folder)
    assert plan_status(folder, m, "dit_step", target)[0] == "missing"
    (folder / name).write_bytes(b"a serialized engine")
    rec = expected_record(m, "dit_step", target, opts)
    rec.update(file=name, sha256=sha256_file(folder / name), bytes=(folder / name).stat().st_size)
    m["engines"] = {name: rec}
    (folder / "manifest.json").write_text(json.dumps(m))
    m = read_manifest(folder)
    assert plan_status(folder, m, "dit_step", target, opts) == ("fresh", name)
    # build_plans reuses a fresh plan without touching TensorRT
    assert build_plans(folder, target, BuildOptions(), graphs=["dit_step"]) == [
        PlanRow("dit_step", name, "reused", "unchanged", 0.0, len(b"a serialized engine"))
    ]
    cases = {
        "newer TensorRT": (Target("10.14.1.48", target.gpu_name, "9.0"), "missing"),  # another file name
        "other GPU, same sm": (
            Target(target.tensorrt, "NVIDIA H100 PCIe", "9.0"),
            "built on NVIDIA H100 80GB HBM3",
        ),
    }
    for label, (other, want) in cases.items():
        status, why = plan_status(folder, m, "dit_step", other)
        assert want in (status + " " + why), (label, status, why)
    changed = json.loads(json.dumps(m))
    changed["graphs"]["dit_step"]["sha256"] = "0" * 64
    assert "dit_step.onnx changed" in plan_status(folder, changed, "dit_step", target)[1]
    assert "other build options" in plan_status(folder, m, "dit_step", target, {**opts, "tf32": True})[1]
    (folder / name).write_bytes(b"a serialized enginf")  # same size, other bytes
    assert "sha256" in plan_status(folder, m, "dit_step", target)[1]
    (folder / name).write_bytes(b"short")
    assert "truncated" in plan_status(folder, m, "dit_step", target)[1]
    (folder / name).unlink()
    assert plan_status(folder, m, "dit_step", target)[0] == "missing"
