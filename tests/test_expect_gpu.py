"""`DIT_EXPORT_EXPECT_GPU`: the conftest hook that turns GPU skips into failures (run in a pytester);
and conftest's xdist file order (FIRST_FILES)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
TESTS = """
import pytest

@pytest.mark.gpu
def test_marked_gpu():
    pytest.skip("no GPU here")

def test_cuda_reason():
    pytest.skip("needs a CUDA GPU")

def test_trt_reason():
    pytest.skip("TensorRT is not installed")

@pytest.mark.skipif(True, reason="cpu-only: TensorRT works on this machine")
def test_cpu_only():
    pass

def test_other_reason():
    pytest.skip("matplotlib is not installed")

def test_passes():
    pass
"""
MODULE_SKIP = """
import pytest
pytest.importorskip("tensorrt_that_is_not_there", reason="TensorRT is not installed")

def test_never():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    pytester.makepyfile(test_gpu=TESTS, test_module_skip=MODULE_SKIP)
    return pytester


def test_without_the_variable_gpu_tests_skip(suite: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("DIT_EXPORT_EXPECT_GPU", raising=False)
    suite.runpytest_subprocess().assert_outcomes(passed=1, skipped=6)


def test_expect_gpu_turns_gpu_and_tensorrt_skips_into_failures(suite: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("DIT_EXPORT_EXPECT_GPU", "1")
    r = suite.runpytest_subprocess("-rfEs", "--continue-on-collection-errors")
    # marked gpu, CUDA reason, TensorRT reason fail; the module-level TensorRT skip is an error
    r.assert_outcomes(passed=1, skipped=2, failed=3, errors=1)
    r.stdout.fnmatch_lines(["*this GPU run must not skip*"])


def test_expect_cuda_lets_tensorrt_skip(suite: pytest.Pytester, monkeypatch) -> None:
    """gpu_check.sh's mode: a GPU without TensorRT; CUDA skips fail, TensorRT skips stay skips."""
    monkeypatch.setenv("DIT_EXPORT_EXPECT_GPU", "cuda")
    r = suite.runpytest_subprocess()
    r.assert_outcomes(passed=1, skipped=4, failed=2)


def test_the_first_files_handed_to_xdist_exist():
    """conftest.FIRST_FILES (the costliest files, handed to the workers first) names real files:
    a renamed or moved file would silently fall back to xdist's order."""
    from conftest import FIRST_FILES

    here = Path(__file__).parent
    assert not [f for f in FIRST_FILES if not (here / f).is_file()]
    assert len(set(FIRST_FILES)) == len(FIRST_FILES)
