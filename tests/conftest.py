"""Shared fixtures and the GPU-run guard of the whole suite.

`DIT_EXPORT_EXPECT_GPU` makes a GPU run prove what it claims: a test that would skip for want of
a GPU fails instead.
- `1`: every skip of a test marked `gpu`, and every skip whose reason names TensorRT, CUDA or a
  GPU, is reported as a failure (a GPU + TensorRT machine).
- `cuda`: only skips that name CUDA or a GPU and not TensorRT fail (a GPU machine without
  TensorRT, e.g. benchmarks/gpu_check.sh; TensorRT tests may skip there).
A skip reason that starts with `cpu-only:` (a CPU-only expectation guarded off on a GPU machine)
is never turned into a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECT_GPU_ENV = "DIT_EXPORT_EXPECT_GPU"
_GPU_WORDS = re.compile(r"tensorrt|cuda|gpu", re.IGNORECASE)
_CUDA_WORDS = re.compile(r"cuda|gpu", re.IGNORECASE)
_TRT_WORD = re.compile(r"tensorrt", re.IGNORECASE)

pytest_plugins = ["pytester"]

# scripts/test.sh runs one pytest-xdist worker per core: each worker (and every process it starts)
# gets one CPU thread, or torch's and ONNX Runtime's pools oversubscribe the cores and spin.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


# ------------------------------------------------------------------------------ the GPU guard


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def expected_gpu_failure(reason: str, marked_gpu: bool, mode: str | None = None) -> bool:
    """Whether a skip with this reason must fail under DIT_EXPORT_EXPECT_GPU=`mode`."""
    mode = os.environ.get(EXPECT_GPU_ENV, "") if mode is None else mode
    text = reason.split("Skipped:", 1)[-1].strip()
    if mode in ("", "0") or text.startswith("cpu-only:"):
        return False
    if mode == "cuda":
        return bool(_CUDA_WORDS.search(text)) and not _TRT_WORD.search(text)
    return marked_gpu or bool(_GPU_WORDS.search(text))


def _fail(report: pytest.TestReport | pytest.CollectReport, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{EXPECT_GPU_ENV}={os.environ.get(EXPECT_GPU_ENV)}: this GPU run must not skip: {reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report.longrepr)
        if expected_gpu_failure(reason, item.get_closest_marker("gpu") is not None):
            _fail(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:  # a module-level importorskip("tensorrt") and the like
        reason = _skip_reason(report.longrepr)
        if expected_gpu_failure(reason, marked_gpu=False):
            _fail(report, reason)


# ------------------------------------------------------------------------------ xdist order

# scripts/test.sh runs whole files per worker (`--dist loadfile`); xdist hands out the files with the
# most tests first, which is not the costliest first. These files go first, in this order (measured
# CPU-seconds per file with 2 workers, heaviest first, so the workers end together), arranged so a
# shared folder (tests/folders.py) is built by one worker while the other runs a file that does not
# need it: test_manifest builds S/8 fp32 while test_gpu_check runs; test_cpp compiles the AOTI
# packages and test_build makes S/8 fp16 before the files that read them. Files not named follow
# in xdist's own order. Re-measure with `--durations=0` when a file's cost changes much.
FIRST_FILES = (
    "export/test_manifest.py",  # builds s8-fp32 (~45 CPU-s)
    "bench/test_gpu_check.py",  # ~80, needs no shared folder
    "runtime/test_cpp.py",  # ~150: compiles cpp-s8's AOTI packages (~100)
    "pipeline/test_build.py",  # ~75: builds s8-fp16
    "bench/test_bench.py",
    "export/test_int8.py",
    "runtime/test_trt_sim.py",
    "models/test_hub.py",
    "runtime/test_cpp_cache.py",  # reads cpp-s8
    "pipeline/test_tiny_digits_pipeline.py",
    "serve/test_triton.py",  # builds tiny-digits-fp32-b10
    "runtime/test_runtime.py",  # reads s8-fp16
    "cli/test_new_user.py",
    "runtime/test_cache_runtime.py",
    "cli/test_bad_inputs.py",
    "sets/test_sample_set.py",
    "export/test_export.py",
    "runtime/test_cache_trt_sim.py",
    "verify/test_verify.py",  # reads tiny-digits-fp32-b10
    "cli/test_cli_sample.py",
    "verify/test_score.py",
    "runtime/test_schedules.py",
    "export/test_cache_export.py",
    "runtime/test_cpp_sde.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile` with FIRST_FILES handed out first, in their order."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    rank = {f"tests/{name}": i for i, name in enumerate(FIRST_FILES)}

    class CostliestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            _, scope = min(enumerate(self.workqueue), key=lambda p: (rank.get(p[1], len(rank)), p[0]))
            self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return CostliestFirst(config, log)


# ------------------------------------------------------------------------------ shared fixtures


def offline_environ(**extra: str) -> dict[str, str]:
    """The environment of a CLI run that never touches the network (+ `extra` variables).

    The repository root is prepended to PYTHONPATH, never replacing it: a test's own entries
    (tests/pipeline/test_build.py's `hide_tensorrt` shadow) must reach the child.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", DIT_EXPORT_OFFLINE="1", **extra)


def run_dit_export(
    *args: object,
    cwd: str | os.PathLike | None = None,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`python -m dit_export ARGS` in a fresh interpreter (what a user types), offline.

    `env`: extra environment variables on top of the offline environment.
    """
    return subprocess.run(
        [sys.executable, "-m", "dit_export", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=offline_environ(**(env or {})),
        timeout=timeout,
    )


def run_dit_export_here(capsys, monkeypatch, *args: object, cwd=None) -> subprocess.CompletedProcess:
    """`python -m dit_export ARGS` in this process (`cli.main`, all that `__main__` runs), offline,
    as a CompletedProcess for the checks below: for quick runs and one-line errors that need no
    fresh interpreter (`run_dit_export` and tests/cli/test_bad_inputs.py walk that path)."""
    from dit_export.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DIT_EXPORT_OFFLINE", "1")
    if cwd is not None:
        monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    """Exit ≠ 0 (exactly `code` when given), no traceback, exactly one stderr line starting `error: `
    (containing every needle)."""
    if code is None:
        assert r.returncode != 0, r.stdout + r.stderr
    else:
        assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """`assert_one_line_error` with exit 2, the exit of every UserError (one-line error)."""
    return assert_one_line_error(r, *needles, code=2)


def run_python(code: str, timeout: float = 300) -> str:
    """`python -c CODE` in a fresh interpreter (so what it imports is its own); its stdout, exit 0 asserted."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def hidden_names(folder: Path) -> list[str]:
    """The hidden entries of a folder (scratch `.x.*.partial` folders, locks), sorted."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


@pytest.fixture
def offline_env() -> dict[str, str]:
    """The environment of a CLI run that never touches the network."""
    return offline_environ()


@pytest.fixture
def run_cli():
    """`python -m dit_export ARGS` in a fresh interpreter (what a user types), offline."""
    return run_dit_export


@pytest.fixture
def one_line_error():
    return assert_one_line_error
