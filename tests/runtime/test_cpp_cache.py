"""The forecast step cache (issue 21) in the C++ runtime.

- The schedule: cpp/src/runtime.cpp restates `sampling.cache.cache_plan`; both are held to the
  shared vectors of tests/data/cache_plans.json (`python tests/runtime/test_cpp_cache.py`
  regenerates them from the Python module), read by ctest's test_cache_plan.
- The loop: the C++ sampler (CPU backend: the AOTInductor packages of dit_step_full and
  dit_step_forecast) equals the Python runtime (ONNX Runtime) with caching on, within test_cpp's
  tolerances, through the C API (ctypes), ctest's end-to-end test and `dit_sample`; the Python loop
  on the C++ graphs equals the C++ loop exactly; interval 1 is bit-identical to the uncached C++
  sampler; bad cache parameters, a folder without the cached graphs and one without their packages
  are one line each, nothing written.

Reuses test_cpp's toolchain check, build and exported folder (one per test run; the export has the
cached graphs by default and `aoti` compiles their packages with the others).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dit_export.fileio import write_json
from dit_export.sampling import cache as step_cache

VECTORS = Path(__file__).resolve().parents[1] / "data" / "cache_plans.json"
# (steps, interval, order, slots): every order, uneven first spacing, slots above the order, a run
# shorter than the first full steps, the demo's ddpm-250 and interval 1 (every step full).
PLAN_CASES = [
    (10, 1, 2, 3),
    (6, 1, 3, 3),  # interval 1 takes any order 0..3, whatever the slots
    (8, 3, 2, 3),
    (50, 3, 2, 3),
    (50, 5, 3, 4),
    (20, 2, 1, 4),
    (25, 4, 0, 3),
    (7, 3, 3, 4),
    (3, 5, 2, 3),
    (1, 2, 2, 3),
    (20, 7, 1, 2),
    (250, 4, 2, 3),
]
# (interval, order, max_order or None): each one-line error of check_cache, and two that pass.
ERROR_CASES = [(0, 2, None), (-3, 2, 3), (2, 4, None), (2, -1, 3), (3, 3, 2), (4, 2, 0), (1, 3, 2), (3, 2, 2)]


def make_vectors() -> dict:
    plans = []
    for steps, interval, order, slots in PLAN_CASES:
        p = step_cache.cache_plan(steps, interval, order, slots)
        plans.append(
            {
                "steps": steps,
                "interval": interval,
                "order": order,
                "slots": slots,
                "full": "".join("1" if f else "0" for f in p.full),
                "num_full": p.num_full,
                "coefs_f32_bits": [" ".join(f"{w:08x}" for w in row.view(np.uint32)) for row in p.coefs],
            }
        )
    errors = []
    for interval, order, max_order in ERROR_CASES:
        try:
            step_cache.check_cache(interval, order, max_order)
            message = "(no error)"
        except Exception as e:  # UserError: its one line
            message = str(e)
        errors.append({"interval": interval, "order": order, "max_order": max_order, "message": message})
    return {
        "about": "Shared forecast-cache vectors (dit_export/sampling/cache.py, restated in cpp/src/runtime.cpp). "
        "plans: cache_plan(steps, interval, order, slots): full[k] = '1' for a full step; coefs_f32_bits[k] "
        "the float32 bit patterns of row k (the cache_coef input of step k). errors: check_cache's line.",
        "max_order": step_cache.MAX_ORDER,
        "first_full": step_cache.FIRST_FULL,
        "full_graph": step_cache.FULL_GRAPH,
        "forecast_graph": step_cache.FORECAST_GRAPH,
        "plans": plans,
        "errors": errors,
    }


def test_vector_file_is_current() -> None:
    assert json.loads(VECTORS.read_text()) == json.loads(json.dumps(make_vectors())), (
        "run: python tests/runtime/test_cpp_cache.py"
    )


# --------------------------------------------------------------------------- the C++ loop

try:  # test_cpp's toolchain check, build and folder (fixtures); run as a script, only the vectors matter
    from test_cpp import (  # noqa: F401
        _MISSING,
        THREADS,
        _link_copy,
        _max_delta,
        _rel,
        _run,
        cpp_build,
        engines,
        python_sampler,
    )
except ImportError as e:  # `python tests/runtime/test_cpp_cache.py`: tests/ is not on sys.path
    if __name__ != "__main__":
        raise
    _MISSING, THREADS = str(e), "1"

needs_cpp = pytest.mark.skipif(_MISSING is not None, reason=f"C++ toolchain: {_MISSING}")
LABELS = [10, 20, 30]  # batch 2: a padded second chunk
# (sampler, steps, interval, order): orders 0-2 (the default export's), ancestral with per-step noise
# (ddpm 10: a schedule the folder does not store, passed through the C API), ODE, multistep
CACHED = [
    ("ddim", 10, 3, 2),
    ("ddpm", 10, 2, 1),
    ("dpm++2m", 10, 4, 0),
]


@pytest.fixture(scope="module")
def cache_engines(engines, tmp_path_factory) -> Path:
    """test_cpp's folder; when its AOTI packages predate the cached graphs (DIT_TEST_CPP_ENGINES), a
    link copy with the two cached packages compiled."""
    manifest = json.loads((engines / "manifest.json").read_text())
    assert "cache" in manifest, f"{engines} was exported without the cached graphs (--max-cache-order none)"
    if (engines / "aoti" / f"{step_cache.FULL_GRAPH}.pt2.json").is_file():
        return engines
    from dit_export.engine.aoti import add_aoti_packages

    folder = _link_copy(engines, tmp_path_factory.mktemp("cpp_cache") / "s8")
    add_aoti_packages(folder, step_cache.CACHE_GRAPHS, log=lambda s: None)
    return folder


@pytest.fixture(scope="module")
def ort_sampler(cache_engines, engines, request):
    """The Python runtime (ONNX Runtime, CPU) on `cache_engines`: test_cpp's session when that is
    its folder (one load of the graphs per test run, not one per test)."""
    if cache_engines == engines:
        yield request.getfixturevalue("python_sampler")
        return
    from dit_export.runtime.sampler import Sampler

    with Sampler.load(cache_engines, backend="ort", providers=["CPUExecutionProvider"]) as s:
        yield s


@pytest.fixture(scope="module")
def cpp_lib(cpp_build):
    """The built library for CppSampler (ctypes), loaded afresh for this module."""
    from dit_export.runtime import cpp_backend

    old = os.environ.get(cpp_backend.LIB_ENV)
    os.environ[cpp_backend.LIB_ENV] = str(cpp_build / "libdit_runtime.so")
    cpp_backend._lib = None
    yield cpp_backend
    cpp_backend._lib = None
    if old is None:
        del os.environ[cpp_backend.LIB_ENV]
    else:
        os.environ[cpp_backend.LIB_ENV] = old


@needs_cpp
def test_cpp_cache_plan_vectors(cpp_build):
    """ctest's test_cache_plan: the C++ plan equals the Python one bit for bit (and its errors word for word)."""
    r = _run([str(cpp_build / "tests" / "test_cache_plan"), str(VECTORS)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_cache_plan: all checks passed" in r.stdout
    print("\n" + r.stdout.splitlines()[0])


@needs_cpp
def test_cached_packages_are_recorded_and_agree(cache_engines):
    """`aoti` compiled both cached graphs (CachedSamplerStep) and checked them against their ONNX
    graphs: x_next, and the full step's refreshed cache as well."""
    from dit_export.engine.aoti import AGREEMENT, read_packages
    from dit_export.export.manifest import Manifest

    m = Manifest.read(cache_engines)
    records = read_packages(cache_engines)
    for g in step_cache.CACHE_GRAPHS:
        rec = records[g]
        assert rec["file"] == f"aoti/{g}.pt2" and rec["onnx_sha256"] == m.graph(g).file.sha256
        assert [t["name"] for t in rec["inputs"]][-2:] == [step_cache.CACHE_INPUT, step_cache.CACHE_COEF]
        assert rec["onnx_rel_l2"] <= AGREEMENT["fp32"], (g, rec["onnx_rel_l2"])
    assert [t["name"] for t in records[step_cache.FULL_GRAPH]["outputs"]][-1] == step_cache.CACHE_OUTPUT


@needs_cpp
def test_cpp_cached_sampler_equals_python(cpp_lib, cache_engines, ort_sampler):
    """CppSampler (the C++ loop) with caching == the Python runtime on ORT with caching (|Δ| ≤ 1,
    latents rel-L2 < 1e-4), and is not the uncached result; the Python loop on the C++ graphs
    (CppBackend) gives the C++ loop's latents exactly."""
    from dit_export.runtime.sampler import Sampler

    graphs = ["dit_step", *step_cache.CACHE_GRAPHS, "vae_decoder"]
    python = ort_sampler
    with (
        cpp_lib.CppSampler.load(cache_engines, backend="cpu", threads=int(THREADS)) as cpp,
        Sampler.load(cache_engines, backend="cpp", graphs=graphs, threads=int(THREADS)) as py_loop,
    ):
        for sampler, steps, interval, order in CACHED:
            kw = dict(seed=7, cfg_scale=4.0, steps=steps, sampler=sampler)
            cache = dict(cache_interval=interval, cache_order=order)
            t0 = time.perf_counter()
            got, lat = cpp.sample(LABELS, return_latents=True, **kw, **cache)
            t1 = time.perf_counter()
            want, lat_ref = python.sample(LABELS, return_latents=True, progress=False, **kw, **cache)
            plain = cpp.sample(LABELS, return_latents=True, **kw)[1]
            rel, moved = _rel(lat, lat_ref), _rel(lat, plain)
            print(
                f"\n{sampler} {steps}, interval {interval}, order {order}: C++ {t1 - t0:.1f} s; vs Python ORT "
                f"uint8 max |Δ| {_max_delta(got, want)}, latents rel-L2 {rel:.1e}; vs uncached C++ {moved:.1e}"
            )
            assert _max_delta(got, want) <= 1, (sampler, interval, order)
            assert rel < 1e-4, (sampler, interval, order, rel)
            # caching moves these random-weight latents only a little: the C++ run must reproduce that
            # move (its effect against the uncached run), not just land near the uncached result
            assert moved > 1e-5, "the cached run gave the uncached result"
            assert _rel(lat - plain, lat_ref - plain) < 5e-2, (sampler, interval, order)
            if (sampler, interval) == ("ddim", 3):
                loop = py_loop.sample(LABELS, return_latents=True, progress=False, **kw, **cache)[1]
                assert np.array_equal(loop, lat), "Python loop on C++ graphs != C++ loop"


@needs_cpp
def test_cpp_interval_1_is_bit_identical(cpp_lib, cache_engines):
    """cache_interval 1 (with any order) runs dit_step exactly as without caching."""
    with cpp_lib.CppSampler.load(cache_engines, backend="cpu", threads=int(THREADS)) as cpp:
        kw = dict(seed=3, cfg_scale=4.0, steps=5, sampler="dpm++2m")  # rows passed in: short is enough
        _, plain = cpp.sample(LABELS, return_latents=True, **kw)
        for order in (0, 3):
            _, lat = cpp.sample(LABELS, return_latents=True, **kw, cache_interval=1, cache_order=order)
            assert np.array_equal(lat, plain), order


def _e2e_reference(s, folder: Path, out: Path) -> Path:
    """A reference.json of cached requests for ctest's test_e2e_cpu (`s`: the Python runtime on ORT)."""
    # 3 images on batch 2: the cache is zeroed for the padded second chunk; then cfg 1, a 64-bit seed
    # and FORA reuse (order 0) on a multistep solver
    requests = [([207, 360, 387], 0, 4.0, 10, "ddim", 3, 2), ([1, 2], 2**40 + 3, 1.0, 10, "dpm++2m", 2, 0)]
    meta: dict = {"engines": str(folder), "requests": []}
    for i, (labels, seed, cfg, steps, sampler, interval, order) in enumerate(requests):
        fields = dict(seed=seed, cfg_scale=cfg, steps=steps, sampler=sampler)
        cache = dict(cache_interval=interval, cache_order=order)
        images, latents = s.sample(labels, **fields, **cache, return_latents=True, progress=False)
        np.save(out / f"images_{i}.npy", images)
        np.save(out / f"latents_{i}.npy", latents)
        meta["requests"].append(
            {
                "labels": labels,
                **fields,
                **cache,
                "images": f"images_{i}.npy",
                "latents": f"latents_{i}.npy",
            }
        )
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    return out / "reference.json"


@needs_cpp
def test_ctest_end_to_end_with_cache(cpp_build, cache_engines, ort_sampler, tmp_path):
    """ctest's test_e2e_cpu on cached requests: dit_sample / dit_generate / caller noise / the C++
    wrapper, each equal to the Python runtime's cached images (|Δ| ≤ 1)."""
    ref = _e2e_reference(ort_sampler, cache_engines, tmp_path)
    env = {"DIT_TEST_REFERENCE": str(ref), "DIT_TEST_THREADS": THREADS}
    r = _run([str(cpp_build / "tests" / "test_e2e_cpu")], timeout=900, env=env)
    out = r.stdout + r.stderr
    print("\n" + "\n".join(ln for ln in out.splitlines() if "request " in ln))
    assert r.returncode == 0, out[-4000:]
    assert "ddim 10 steps, cfg 4, seed 0, cache interval 3 order 2" in out
    assert "dpm++2m 10 steps, cfg 1, seed 1099511627779, cache interval 2 order 0" in out
    assert "test_e2e_cpu: all checks passed" in out


def _dit_sample(build: Path, folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(
        [str(build / "dit_sample"), "--engines", str(folder), "--classes", "3", "7", "11", "--seed", "4",
         "--sampler", "ddim", "--steps", "10", "--threads", THREADS, "--no-verify", "--out", str(out),
         "--save-latents", str(out.with_suffix(".npy")), *extra],
        timeout=600,
    )  # fmt: skip


def _one_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), (
        r.returncode,
        r.stderr,
    )
    return lines[0][len("error: ") :]


def _python_error(interval: int, order: int, max_order: int | None = None) -> str:
    with pytest.raises(Exception) as e:
        step_cache.check_cache(interval, order, max_order)
    return str(e.value)


@needs_cpp
def test_dit_sample_cache_flags_and_errors(cpp_build, cache_engines, ort_sampler, tmp_path):
    """`dit_sample --cache-interval N --cache-order O`: the cached run equals Python's; bad values,
    an order above the export's, a folder without the cached graphs and one without their AOTI
    packages are one line each (exit 2) in Python's words, and write nothing."""
    from dit_export.sampling.request import SampleRequest

    r = _dit_sample(
        cpp_build, cache_engines, tmp_path / "c.png", "--cache-interval", "3", "--cache-order", "1"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    req = SampleRequest((3, 7, 11), seed=4, steps=10, sampler="ddim", cache_interval=3, cache_order=1)
    want = ort_sampler.generate(req, decode=False).latents
    assert _rel(np.load(tmp_path / "c.npy"), want) < 1e-4

    max_order = json.loads((cache_engines / "manifest.json").read_text())["cache"]["max_order"]
    for interval, order, limit in ((0, 2, None), (3, 4, None), (2, max_order + 1, max_order)):
        if order > step_cache.MAX_ORDER and limit is not None:
            continue  # an export of the largest order: no order above it to ask
        out = tmp_path / f"bad_{interval}_{order}.png"
        r = _dit_sample(
            cpp_build, cache_engines, out, "--cache-interval", str(interval), "--cache-order", str(order)
        )
        assert _one_line(r) == _python_error(interval, order, limit)
        assert not out.exists() and not out.with_suffix(".npy").exists()

    # a folder exported before the cache (no cached graphs, no cache record): one line naming the re-export
    old = _link_copy(cache_engines, tmp_path / "old")
    m = json.loads((old / "manifest.json").read_text())
    for g in step_cache.CACHE_GRAPHS:
        del m["graphs"][g]
        (old / f"{g}.onnx").unlink()
        for f in (old / "aoti").glob(f"{g}.pt2*"):
            f.unlink()
    del m["cache"]
    (old / "manifest.json").unlink()  # a hard link: write a new file
    (old / "manifest.json").write_text(json.dumps(m, indent=1))
    for f in old.glob("schedules.json"):
        f.unlink()
    r = _dit_sample(cpp_build, old, tmp_path / "old.png", "--cache-interval", "3")
    line = _one_line(r)
    assert line == (
        f"{old}: this export has no forecast graphs (dit_step_full, dit_step_forecast): re-export with "
        "--max-cache-order 2 to sample with --cache-interval > 1"
    )
    assert not (tmp_path / "old.png").exists()
    assert _dit_sample(cpp_build, old, tmp_path / "old.png").returncode == 0  # uncached: as before

    # cached graphs exported, their AOTI packages not compiled: the command that compiles them
    nopkg = _link_copy(cache_engines, tmp_path / "nopkg")
    for f in (nopkg / "aoti").glob(f"{step_cache.FULL_GRAPH}.pt2*"):
        f.unlink()
    r = _dit_sample(cpp_build, nopkg, tmp_path / "nopkg.png", "--cache-interval", "2")
    line = _one_line(r)
    assert "has not loaded dit_step_full" in line and f"python -m dit_export aoti {nopkg} --graphs" in line, (
        line
    )
    assert not (tmp_path / "nopkg.png").exists()
    assert _dit_sample(cpp_build, nopkg, tmp_path / "nopkg.png").returncode == 0


if __name__ == "__main__":
    write_json(VECTORS, make_vectors())
    print(f"wrote {VECTORS}")
