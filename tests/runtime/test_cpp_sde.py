"""The C++ runtime runs DPM-Solver++(2M) SDE and the Karras samplers (issue 23) from the folder's
record alone (no C++ names them): its images equal the Python runtime's (ort) for stored step
counts, with the per-step Philox noise drawn in C++, a padded second chunk and a 64-bit seed.

Reuses test_cpp's toolchain check, build, exported folder and Python runtime session (one per
test run; the folder is shared across xdist workers).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_cpp import _MISSING, THREADS, _max_delta, cpp_build, engines, python_sampler  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"C++ toolchain: {_MISSING}")

CASES = [
    dict(seed=5, cfg_scale=4.0, steps=10, sampler="dpm++2m-sde"),
    dict(seed=2**40 + 3, cfg_scale=1.0, steps=15, sampler="dpm++2m-sde-karras"),
    dict(seed=3, cfg_scale=4.0, steps=10, sampler="dpm++2m-karras"),
]


def test_cpp_sde_equals_python_runtime(cpp_build, engines, python_sampler, monkeypatch):
    monkeypatch.setenv("DIT_RUNTIME_LIB", str(cpp_build / "libdit_runtime.so"))
    from dit_export.runtime import cpp_backend

    monkeypatch.setattr(cpp_backend, "_lib", None)
    labels = [10, 20, 30]  # batch 2: a padded second chunk
    python = python_sampler  # test_cpp's: ONNX Runtime on the same folder
    with cpp_backend.CppSampler.load(engines, backend="cpu", threads=int(THREADS)) as cpp:
        latents = []
        for kw in CASES:
            got, lat = cpp.sample(labels, return_latents=True, **kw)
            want, lat_ref = python.sample(labels, return_latents=True, progress=False, **kw)
            assert _max_delta(got, want) <= 1, kw
            assert np.linalg.norm(lat - lat_ref) / np.linalg.norm(lat_ref) < 1e-4, kw
            latents.append(lat)
        other = cpp.sample(labels, return_latents=True, **{**CASES[0], "seed": 6})[1]  # another seed
        assert np.linalg.norm(other - latents[0]) > 0.1 * np.linalg.norm(latents[0])
        with pytest.raises(Exception, match="needs at least 2 steps"):
            cpp.sample([1], steps=1, sampler="dpm++2m-sde")
