"""benchmarks/gpu_check.sh on a CPU: `--dry-run` runs every phase with the shipped tiny-digits
(the TensorRT phases recorded as skipped with the reason, their commands printed, then run on ONNX
Runtime as a stand-in), and a run killed in its second phase keeps the first phase's result on disk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


HIDDEN = (
    "diffusers",
    "polygraphy",
    "tensorrt",
)  # what the device image lacks (the device image: no diffusers, polygraphy, TensorRT)


def _env(out: Path) -> dict[str, str]:
    """The run's environment: the packages a torch-only GPU machine lacks are made unimportable."""
    shadow = out / "hidden"
    shadow.mkdir(parents=True, exist_ok=True)
    for name in HIDDEN:
        (shadow / f"{name}.py").write_text(f"raise ImportError('{name} is hidden by the test')\n")
    path = os.pathsep.join(filter(None, [str(ROOT), str(shadow), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OUT_DIR=str(out), OMP_NUM_THREADS="1", PYTHONPATH=path)


def _stem(out: Path) -> Path:
    (md,) = [p for p in out.glob("gpu_check_dry-run-cpu_*.md") if p.name.count(".") == 1]
    return md.with_suffix("")


def test_dry_run_exercises_every_phase(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    stem = _stem(tmp_path)
    phases = {p["name"]: p for p in json.loads(Path(f"{stem}.phases.json").read_text())["phases"]}
    for name in ("tests", "exports", "bench-tiny-digits", "aoti"):
        assert phases[name]["result"] == "passed", phases[name]
    assert Path(f"{stem}.tests.xml").is_file() and Path(f"{stem}.aoti.json").is_file()
    exports = json.loads(Path(f"{stem}.exports.json").read_text())
    assert {
        (f["precision"], f["batch"], f["status"], Path(f["folder"]).name) for f in exports["folders"]
    } == {
        ("fp32", 1, "ready", "tiny-digits-32-fp32-b1"),  # its shipped weights: no "-random0"
        ("fp16", 1, "ready", "tiny-digits-32-fp16-b1"),
    }
    # bench and its ONNX Runtime stand-in reuse those very folders (same model flags): no export of their own
    assert "reusing tiny-digits-32-fp32-b1" in proc.stdout and "reusing tiny-digits-32-fp16-b1" in proc.stdout
    assert "  exporting tiny-digits-32-" not in proc.stdout
    bench = json.loads(Path(f"{stem}.bench-tiny-digits.json").read_text())
    assert {r["backend"] for r in bench["results"] if r["status"] == "measured"} == {
        "torch-fp32",
        "torch-fp16",
    }
    # TensorRT is hidden: its phases are skipped with the reason, their commands printed, and the
    # same commands run on ONNX Runtime
    for name in ("trt-plans", "trt-bench-tiny-digits", "trt-verify-ddpm", "trt-verify-dpm++2m"):
        assert phases[name]["result"] == "skipped: tensorrt is not installed (tensorrt is hidden by the test)"
        if name != "trt-plans":
            assert phases[f"{name}-standin-ort"]["result"] == "passed", phases[f"{name}-standin-ort"]
    assert "where TensorRT works they run:" in proc.stdout
    assert (
        "python -m dit_export bench --model tiny-digits --vae none" in proc.stdout
        and "--backends trt " in proc.stdout
    )
    assert "diffusers: absent (ImportError: diffusers is hidden by the test)" in proc.stdout
    verify = json.loads(Path(f"{stem}.verify-trt-verify-dpm++2m-standin-ort.json").read_text())
    assert verify["passed"] is True
    md = Path(f"{stem}.md").read_text()
    assert "| exports | passed |" in md and "## Exports" in md


def test_the_gpu_run_keeps_its_models():
    """--dry-run swaps in tiny-digits (shipped weights, 32 px); the GPU run stays S/2 and XL/2 with
    random weights at 256 px, and its exports are made with the flags bench is given."""
    text = SCRIPT.read_text()
    dry, real = re.search(r"\nif \(\(DRY\)\); then(.*?)\nelse\n(.*?)\nfi\n", text, re.S).groups()
    assert "MODELS=(tiny-digits)" in dry and "MODEL_FLAGS=(--vae none)" in dry
    assert (
        "MODELS=(S/2 XL/2)" in real and "MODEL_FLAGS=(--random-weights --vae none --image-size 256)" in real
    )
    assert '"${FOLDERS[@]}" "${MODEL_FLAGS[@]}"' in text  # the exports phase: bench's own model flags


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (`timeout` moves its command to a process group of
    its own, so killing the script's group would leave the phase running)."""
    for _ in range(3):
        procs = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid:
                    procs.append(proc)
            except (OSError, psutil.Error):
                continue
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=30)


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
        _kill_session(p.pid)  # the whole run at once, as a lost machine would
        p.wait(timeout=60)
    stem = _stem(tmp_path)
    phases = json.loads(Path(f"{stem}.phases.json").read_text())["phases"]
    assert [ph["name"] for ph in phases] == ["tests"] and phases[0]["result"] == "passed"
    assert Path(f"{stem}.tests.xml").is_file() and phases[0]["files"] == [f"{stem.name}.tests.xml"]
    assert "| tests | passed |" in Path(f"{stem}.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))  # no half-written result file


def test_the_run_stays_inside_its_total_budget(tmp_path):
    """TOTAL_S caps the whole run (a device command may run 10 minutes): each phase's cap is cut to
    the time left (or the phase is skipped), and the summary is still written."""
    t0 = time.monotonic()
    env = {**_env(tmp_path), "TOTAL_S": "30"}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    took = time.monotonic() - t0
    assert took < 30 + 20, proc.stdout[-3000:]  # + timeout's 15 s grace for a phase that ignores SIGINT
    phases = {
        p["name"]: p["result"]
        for p in json.loads(Path(f"{_stem(tmp_path)}.phases.json").read_text())["phases"]
    }
    assert phases["tests"] == "passed", phases
    assert all(r == "passed" or r.startswith(("skipped: ", "timed out")) for r in phases.values()), phases
    # aoti's own cap is 300 s here: it was cut to what was left of the 30 s, or skipped
    caps = [int(c) for c in re.findall(r"^== aoti \(cap (\d+)s\)", proc.stdout, re.M)]
    assert (
        caps and caps[0] < 30
        if phases["aoti"] != "skipped: out of the run's 30 s budget (TOTAL_S)"
        else not caps
    )
