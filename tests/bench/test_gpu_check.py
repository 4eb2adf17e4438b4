"""benchmarks/gpu_check.sh on a CPU: `--dry-run` runs every phase with S/8 (the TensorRT phases
recorded as skipped with the reason, their commands printed, then run on ONNX Runtime as a
stand-in), and a run killed in its second phase keeps the first phase's result on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import ROOT

from dit_export.engine import trt_api

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _env(out: Path) -> dict[str, str]:
    return dict(os.environ, OUT_DIR=str(out), OMP_NUM_THREADS="1")


def _stem(out: Path) -> Path:
    (md,) = [p for p in out.glob("gpu_check_dry-run-cpu_*.md") if p.name.count(".") == 1]
    return md.with_suffix("")


def test_dry_run_exercises_every_phase(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    stem = _stem(tmp_path)
    phases = {p["name"]: p for p in json.loads(Path(f"{stem}.phases.json").read_text())["phases"]}
    for name in ("tests", "exports", "bench-S-8", "aoti"):
        assert phases[name]["result"] == "passed", phases[name]
    assert Path(f"{stem}.tests.xml").is_file() and Path(f"{stem}.aoti.json").is_file()
    exports = json.loads(Path(f"{stem}.exports.json").read_text())
    assert {(f["precision"], f["batch"], f["status"]) for f in exports["folders"]} == {
        ("fp32", 1, "ready"),
        ("fp16", 1, "ready"),
    }
    bench = json.loads(Path(f"{stem}.bench-S-8.json").read_text())
    assert {r["backend"] for r in bench["results"] if r["status"] == "measured"} == {
        "torch-fp32",
        "torch-fp16",
    }
    trt = ["trt-plans", "trt-bench-S-8", "trt-verify-ddpm", "trt-verify-dpm++2m"]
    ok, why = trt_api.probe()
    if not ok:  # the CPU case: skipped with the reason, the commands printed, the stand-in run
        for name in trt:
            assert phases[name]["result"] == f"skipped: {why}", phases[name]
        assert "where TensorRT works they run:" in proc.stdout
        assert "python -m dit_export bench --model S/8" in proc.stdout and "--backends trt " in proc.stdout
        for name in trt[1:]:
            assert phases[f"{name}-standin-ort"]["result"] == "passed", phases[f"{name}-standin-ort"]
        verify = json.loads(Path(f"{stem}.verify-trt-verify-dpm++2m-standin-ort.json").read_text())
        assert verify["passed"] is True
    md = Path(f"{stem}.md").read_text()
    assert "| exports | passed |" in md and "## Exports" in md


def test_killed_in_the_second_phase_keeps_the_first(tmp_path):
    p = subprocess.Popen(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    seen = []
    try:
        deadline = time.monotonic() + 600
        assert p.stdout is not None
        for line in p.stdout:
            seen.append(line)
            if line.startswith("== exports (cap"):  # the second phase has started
                time.sleep(2)
                break
            assert time.monotonic() < deadline, "".join(seen[-30:])
        else:
            raise AssertionError("the exports phase never started:\n" + "".join(seen[-30:]))
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the whole run, at once, as a lost machine would
        p.wait(timeout=60)
    stem = _stem(tmp_path)
    phases = json.loads(Path(f"{stem}.phases.json").read_text())["phases"]
    assert [ph["name"] for ph in phases] == ["tests"] and phases[0]["result"] == "passed"
    assert Path(f"{stem}.tests.xml").is_file() and "tests.xml" in phases[0]["files"]
    assert "| tests | passed |" in Path(f"{stem}.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))  # no half-written result file
