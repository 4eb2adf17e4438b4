"""The C++ runtime (cpp/): build it, run ctest, and compare it with the Python runtime.

The shared S/8 fp32 folder (tests/folders.py `s8_folder`: DiT-S/8 at 256 px, random weights with
perturbed adaLN-Zero, tiny random VAE, batch 2) gets its AOTInductor packages in a hard-linked copy; the Python runtime (ort backend, CPU) samples
reference requests; then the C++ library must give the same uint8 images (max |Δ| ≤ 1) through
ctest's end-to-end test, the `dit_sample` example (PNG grid, .npy, .npz), ctypes (`CppSampler`)
and the Python loop on the C++ graphs (`CppBackend`).

Skipped, with the reason, only when a toolchain piece is missing (cmake, a C++ compiler, the
nlohmann-json / zlib / OpenSSL / stb headers that scripts/build_cpp.sh cannot install, LibTorch's
CMake config).
`DIT_TEST_CPP_ENGINES=DIR` reuses an exported folder that already has its AOTI packages
(aoti/<graph>.pt2 with their records aoti/<graph>.pt2.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from folders import link_copy, s8_folder, shared_folder

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DIT_CPP_BUILD", ROOT / "cpp" / "build"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
THREADS = "1"  # one OpenMP thread: on the shared 2-core CI machine two threads ran 4× slower
# (labels, seed, cfg, steps, sampler): 3 images on batch 2 = a padded second chunk; cfg 1 + a 64-bit seed.
# ddpm (per-step noise) at 8 steps, a table the `reference` folder adds to its sidecar (the folder
# stores ddpm 25 and up: 3x the C++ work); ddim 10 is a table of the manifest.
REQUESTS = [
    ([207, 360, 387], 0, 4.0, 8, "ddpm"),
    ([1, 2], 2**40 + 3, 1.0, 10, "ddim"),
]


def _missing_toolchain() -> str | None:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    root_apt = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")
    for header, pkg in (
        ("/usr/include/nlohmann/json.hpp", "nlohmann-json3-dev"),
        ("/usr/include/zlib.h", "zlib1g-dev"),
        ("/usr/include/openssl/evp.h", "libssl-dev"),
        ("/usr/include/stb/stb_image_write.h", "libstb-dev"),
    ):
        if not Path(header).exists() and not root_apt:
            return f"{header} is missing ({pkg}) and apt-get cannot install it here"
    try:
        import torch.utils

        if not (Path(torch.utils.cmake_prefix_path) / "Torch" / "TorchConfig.cmake").is_file():
            return "this torch wheel has no LibTorch CMake config"
    except ImportError:
        return "torch is not installed (the CPU backend links the LibTorch inside its wheel)"
    return None


_MISSING = _missing_toolchain()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"C++ toolchain: {_MISSING}")


def _run(
    cmd: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
    )


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    """scripts/build_cpp.sh (incremental: a no-op when .ci already built it)."""
    t0 = time.perf_counter()
    BUILD.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{BUILD}.lock"):  # one build at a time: xdist workers share the build folder
        r = _run(
            ["bash", str(ROOT / "scripts" / "build_cpp.sh")], timeout=1800, env={"DIT_CPP_BUILD": str(BUILD)}
        )
    if r.returncode != 0:
        pytest.fail(f"scripts/build_cpp.sh failed:\n{(r.stdout + r.stderr)[-4000:]}")
    print(f"\nC++ build: {time.perf_counter() - t0:.1f} s")
    assert (BUILD / "libdit_runtime.so").is_file() and (BUILD / "dit_sample").is_file()
    return BUILD


@pytest.fixture(scope="session")
def engines(tmp_path_factory) -> Path:
    """The shared S/8 fp32 folder with AOTI packages, compiled once per test run (shared by every
    xdist worker: test_cpp_sde uses it too; tests that change it work on a link copy).

    A hard-linked copy of `s8_folder` (the export every runtime module reads) gets the packages:
    the C++ tests run on the very export the Python runtime tests run on, exported once."""
    reuse = os.environ.get("DIT_TEST_CPP_ENGINES")
    if reuse:
        folder = Path(reuse)
        assert (folder / "aoti" / "dit_step.pt2.json").is_file(), f"{folder} has no AOTI packages"
        return folder
    from dit_export.engine.aoti import add_aoti_packages

    def make(folder: Path) -> str:
        import torch._inductor.config as inductor_config

        t0 = time.perf_counter()
        link_copy(s8_folder(tmp_path_factory, "fp32"), folder)
        t1 = time.perf_counter()
        # Test-only: the C++ wrapper of each package (the code that calls the kernels) built at -O0,
        # not inductor's -O1: 104 instead of 111 CPU-s for the four packages, same kernels, same
        # sampling speed; the packages are still checked against ONNX and the tests below hold them
        # to the Python runtime. `python -m dit_export aoti` keeps inductor's default for users.
        with inductor_config.patch({"aot_inductor.compile_wrapper_opt_level": "O0"}):
            add_aoti_packages(folder, log=lambda s: None)
        return f"S/8 fp32 folder {t1 - t0:.1f} s, AOTI compile {time.perf_counter() - t1:.1f} s"

    folder, log = shared_folder(tmp_path_factory, "cpp-s8", make)
    print(f"\n{log}")
    return folder


@pytest.fixture(scope="session")
def python_sampler(engines):
    from dit_export.runtime.sampler import Sampler

    s = Sampler.load(engines, backend="ort", providers=["CPUExecutionProvider"])
    yield s
    s.close()


@pytest.fixture(scope="session")
def reference(engines, python_sampler, tmp_path_factory) -> Path:
    """The Python runtime's images and latents for REQUESTS, as ctest's test_e2e_cpu reads them, and
    the folder it samples: a link copy of `engines` with the REQUESTS tables the manifest lacks
    stored in its sidecar (`schedules --add`), so C++ reads tables from both places."""
    from dit_export.export.schedule_tables import add_tables

    out = tmp_path_factory.mktemp("cpp_ref")
    folder = _link_copy(engines, out / "s8")
    added = add_tables(folder, [(sampler, steps) for *_, steps, sampler in REQUESTS])
    assert added == [("ddpm", 8)], added  # ddim 10: stored in the manifest
    meta: dict = {"engines": str(folder), "requests": []}
    for i, (labels, seed, cfg, steps, sampler) in enumerate(REQUESTS):
        fields = {"seed": seed, "cfg_scale": cfg, "steps": steps, "sampler": sampler}
        images, latents = python_sampler.sample(labels, **fields, return_latents=True, progress=False)
        np.save(out / f"images_{i}.npy", images)
        np.save(out / f"latents_{i}.npy", latents)
        meta["requests"].append(
            {"labels": labels, **fields, "images": f"images_{i}.npy", "latents": f"latents_{i}.npy"}
        )
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    return out / "reference.json"


def _built_with_tensorrt(build: Path) -> bool:
    """Asks the built library itself (dit_version: "0.1.0 (backends: cpu-aoti, tensorrt)")."""
    import ctypes

    lib = ctypes.CDLL(str(build / "libdit_runtime.so"))
    lib.dit_version.restype = ctypes.c_char_p
    return "tensorrt" in lib.dit_version().decode()


def _max_delta(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# --------------------------------------------------------------------------- ctest


def test_ctest_all_pass_with_end_to_end(cpp_build, engines, reference):
    """Every ctest test passes; the CPU end-to-end one really ran (not skipped) and met |Δ| ≤ 1."""
    t0 = time.perf_counter()
    r = _run(
        ["ctest", "--test-dir", str(cpp_build), "--output-on-failure", "-V"],
        timeout=1800,
        env={
            "DIT_TEST_ENGINES": str(engines),
            "DIT_TEST_REFERENCE": str(reference),
            "DIT_TEST_THREADS": THREADS,
        },
    )
    out = r.stdout + r.stderr
    print(
        f"\nctest {time.perf_counter() - t0:.1f} s\n"
        + "\n".join(ln for ln in out.splitlines() if "request " in ln or "Test #" in ln)
    )
    assert r.returncode == 0, out[-6000:]
    assert re.search(r"test_e2e_cpu \.+\s+Passed", out), "the end-to-end test did not run"
    assert "end to end: worst uint8 |delta| vs the Python runtime = " in out
    assert "base manifest: a real export (DIT_TEST_ENGINES)" in out
    assert "test_noise: all checks passed" in out
    assert "test_find_tensorrt: all checks passed" in out
    if not _built_with_tensorrt(cpp_build):
        # TensorRT compiled out: its test must be reported as skipped, with the reason.
        assert "SKIP: dit_runtime was built without TensorRT" in out
        if os.environ.get("DIT_TEST_TRT_ENGINES"):  # scripts/test.sh on a TensorRT machine: not run
            pytest.skip("C++ TensorRT test: dit_runtime built without TensorRT (TENSORRT_ROOT: its headers)")
    elif os.environ.get("DIT_TEST_TRT_ENGINES"):  # set by scripts/test.sh on a GPU + TensorRT machine
        assert re.search(r"test_tensorrt \.+\s+Passed", out), "the C++ TensorRT test did not run"


# --------------------------------------------------------------------------- the example app


def test_dit_sample_png_equals_python_sample(cpp_build, engines, tmp_path):
    """`dit_sample` writes the grid, latents and npz that `python -m dit_export sample --engines` writes."""
    from PIL import Image

    from dit_export.cli import main

    request = "--classes 1 2 3 --steps 10 --sampler ddim --seed 5 --cfg-scale 1.5".split()
    c = tmp_path / "cpp"
    t0 = time.perf_counter()
    outs = f"--out {c}.png --save-latents {c}.npy --save-images {c}.npz".split()
    r = _run(
        [str(cpp_build / "dit_sample"), "--engines", str(engines), *request, "--threads", THREADS, *outs],
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\ndit_sample (3 images, ddim 10, incl. load): {time.perf_counter() - t0:.1f} s")
    assert "wrote grid" in r.stdout

    # The Python side: the very code path of `python -m dit_export sample --engines DIR --backend ort`.
    p = tmp_path / "py"
    backend = "--backend ort --providers CPUExecutionProvider --no-progress".split()
    outs = f"--out {p}.png --save-latents {p}.npy --save-images {p}.npz".split()
    assert main(["sample", "--engines", str(engines), *backend, *request, *outs]) == 0

    grid_c = np.asarray(Image.open(f"{c}.png").convert("RGB"))
    grid_p = np.asarray(Image.open(f"{p}.png").convert("RGB"))
    assert grid_c.shape == grid_p.shape == (2 + 256 + 2, 3 * (256 + 2) + 2, 3)  # 3 tiles, padding 2
    assert _max_delta(grid_c, grid_p) <= 1
    with np.load(f"{c}.npz") as zc, np.load(f"{p}.npz") as zp:
        assert _max_delta(zc["arr_0"], zp["arr_0"]) <= 1
    lat_c, lat_p = np.load(f"{c}.npy"), np.load(f"{p}.npy")
    assert lat_c.shape == lat_p.shape == (3, 4, 32, 32)
    rel = np.linalg.norm(lat_c - lat_p) / np.linalg.norm(lat_p)
    print(f"dit_sample vs python sample: grid max |Δ| {_max_delta(grid_c, grid_p)}, latents rel-L2 {rel:.2e}")
    assert rel < 1e-4


def _one_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_dit_sample_errors_are_one_line(cpp_build, engines, tmp_path):
    dit_sample = str(cpp_build / "dit_sample")
    _one_line(_run([dit_sample, "--engines", str(tmp_path / "none")], timeout=60), 1, "is not a folder")
    r = _run([dit_sample, "--engines", str(engines), "--classes", "5000", "--steps", "10"], timeout=120)
    _one_line(r, 2, "class id 5000 is out of range")
    r = _run([dit_sample, "--engines", str(engines), "--steps", "7", "--threads", THREADS], timeout=120)
    _one_line(r, 2, "no stored ddpm table for 7 steps", f"python -m dit_export schedules --engines {engines} --add ddpm:7")
    r = _run([dit_sample, "--engines", str(engines), "--sampler", "euler", "--steps", "10"], timeout=120)
    _one_line(r, 2, "unknown sampler 'euler'", "ddim, ddpm", f"schedules --engines {engines} --add euler:STEPS")
    r = _run([dit_sample, "--engines", str(engines), "--noise", "torch"], timeout=60)
    assert r.returncode == 2 and "Python only" in r.stderr


# --------------------------------------------------------------------------- every sampler, any step count


def _link_copy(src: Path, dst: Path) -> Path:
    """A copy of an exported folder (with aoti/) made of hard links; new files never touch the original."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _dit_sample_latents(build: Path, folder: Path, out: Path, sampler: str, steps: int, *extra: str) -> np.ndarray:
    """Two images: one chunk (padded second chunks: ctest's end-to-end test and the PNG test above)."""
    r = _run(
        [str(build / "dit_sample"), "--engines", str(folder), "--classes", "3", "7", "--seed", "4",
         "--cfg-scale", "3", "--sampler", sampler, "--steps", str(steps), "--threads", THREADS, "--no-verify",
         "--out", str(out.with_suffix(".png")), "--save-latents", str(out.with_suffix(".npy")), *extra],
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return np.load(out.with_suffix(".npy"))


def _python_latents(runtime, sampler: str, steps: int) -> np.ndarray:
    from dit_export.sampling.request import SampleRequest

    req = SampleRequest((3, 7), seed=4, cfg_scale=3.0, steps=steps, sampler=sampler)
    return runtime.generate(req, decode=False).latents


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_dit_sample_takes_every_sampler_the_folder_records(cpp_build, engines, python_sampler, tmp_path):
    """`--help --engines DIR` lists the folder's record (the same lines as Python's); every sampler
    in it runs through dit_sample at a step count added with `schedules --add` (4: short) and equals
    the Python runtime on ort. (Stored counts: the ctest end-to-end test and the PNG test above.)"""
    from dit_export.export.manifest import Manifest
    from dit_export.export.schedule_tables import FolderSchedules

    folder = _link_copy(engines, tmp_path / "s8")
    recorded = FolderSchedules.of(folder, Manifest.read(folder, check_graphs=False)).samplers
    r = _run([sys.executable, "-m", "dit_export", "schedules", "--engines", str(folder), "--add",
              *(f"{s}:4" for s in recorded)], timeout=300, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    have = FolderSchedules.of(folder, Manifest.read(folder, check_graphs=False))
    r = _run([str(cpp_build / "dit_sample"), "--help", "--engines", str(folder)], timeout=60)
    assert r.returncode == 0, r.stderr
    listed = [ln.strip() for ln in r.stdout.split("samplers of", 1)[1].splitlines()[1:] if ln.strip()]
    assert listed == have.describe()  # one record, read the same by both languages
    assert {"ddpm", "ddim", "dpm++2m", "unipc"} <= set(have.samplers)
    t0 = time.perf_counter()
    for sampler in sorted(have.samplers):
        steps = 4
        got = _dit_sample_latents(cpp_build, folder, tmp_path / sampler.replace("+", "p"), sampler, steps)
        rel = _rel(got, _python_latents(python_sampler, sampler, steps))
        print(f"dit_sample {sampler} {steps} steps vs python ort: latents rel-L2 {rel:.1e}")
        assert rel <= 1e-5, (sampler, steps, rel)
    print(f"{len(have.samplers)} samplers through dit_sample: {time.perf_counter() - t0:.1f} s")


def test_schedules_add_reaches_dit_sample(cpp_build, engines, python_sampler, tmp_path):
    """The issue-26 user story: 12 dpm++2m steps are refused, `schedules --add dpm++2m:12`, then they
    run and equal the Python runtime; a tampered table is refused in one line."""
    folder = _link_copy(engines, tmp_path / "s8")
    dit_sample = [str(cpp_build / "dit_sample"), "--engines", str(folder), "--sampler", "dpm++2m", "--steps", "12",
                  "--threads", THREADS, "--out", str(tmp_path / "g.png")]  # fmt: skip
    _one_line(_run(dit_sample, timeout=120), 2, "no stored dpm++2m table for 12 steps",
              f"python -m dit_export schedules --engines {folder} --add dpm++2m:12")  # fmt: skip
    r = _run([sys.executable, "-m", "dit_export", "schedules", "--engines", str(folder), "--add", "dpm++2m:12"],
             timeout=300, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0 and "dpm++2m 12 steps: added" in r.stdout, r.stderr
    r = _run([str(cpp_build / "dit_sample"), "--engines", str(folder), "--help"], timeout=60)
    assert "dpm++2m: ode, multistep, no step noise, >= 2 steps; stored steps 10,12,20,25" in r.stdout
    got = _dit_sample_latents(cpp_build, folder, tmp_path / "a", "dpm++2m", 12)
    rel = _rel(got, _python_latents(python_sampler, "dpm++2m", 12))
    print(f"\ndit_sample dpm++2m 12 (added) vs python ort: latents rel-L2 {rel:.1e}")
    assert rel <= 1e-5
    side = json.loads((folder / "schedules.json").read_text())
    side["tables"]["dpm++2m"]["12"]["coefs"][2][0] *= 1.001
    (folder / "schedules.json").write_text(json.dumps(side))
    _one_line(_run(dit_sample, timeout=120), 1, "the dpm++2m table for 12 steps does not match its sha256",
              "--add dpm++2m:12")  # fmt: skip


def test_toy_sampler_runs_in_cpp_without_a_cpp_change(cpp_build, engines, tmp_path):
    """A sampler registered in this test only (stochastic DDIM through `pred_noise`), stored in a
    folder's sidecar, sampled by dit_sample: equal to ONNX Runtime."""
    sys.path.insert(0, str(ROOT / "tests" / "sampling"))
    from test_samplers import toy_spec

    from dit_export.export.schedule_tables import add_tables
    from dit_export.runtime import Sampler
    from dit_export.sampling import samplers

    toy = samplers.register(toy_spec(stored_steps=()))
    try:
        folder = _link_copy(engines, tmp_path / "s8")
        assert add_tables(folder, [(toy.name, 6)]) == [(toy.name, 6)]
        got = _dit_sample_latents(cpp_build, folder, tmp_path / "toy", toy.name, 6)
        with Sampler.load(folder, backend="ort", providers=["CPUExecutionProvider"]) as s:
            want = _python_latents(s, toy.name, 6)
        rel = _rel(got, want)
        print(f"\ntoy sampler: dit_sample vs python ort latents rel-L2 {rel:.1e}")
        assert rel <= 1e-5
    finally:
        samplers.unregister(toy.name)


def test_cpp_draws_step_noise_only_for_samplers_that_use_it(cpp_build, engines, python_sampler, monkeypatch):
    """Issue 25: the C++ loop asks for per-step noise (draw k+1) only when the record says the
    sampler draws it; ODE samplers take the initial latent alone, with the same result."""
    monkeypatch.setenv("DIT_RUNTIME_LIB", str(cpp_build / "libdit_runtime.so"))
    from dit_export.runtime import cpp_backend
    from dit_export.sampling.request import SampleRequest

    monkeypatch.setattr(cpp_backend, "_lib", None)
    draws: list[int] = []

    def recording(self, seed, first_index):  # CppSampler's noise callback for first_index > 0
        lib = self.backend.handle.lib

        def fill(_user, draw, image, out, n):
            draws.append(int(draw))
            return lib.dit_philox_normal(seed, draw, first_index + image, out, n)

        return cpp_backend._NOISE_FN(fill)

    monkeypatch.setattr(cpp_backend.CppSampler, "_offset_philox", recording)
    with cpp_backend.CppSampler.load(engines, backend="cpu", threads=int(THREADS)) as s:
        # a stored table (ddim 10) and rows passed in (short counts: the draws, not the count, are tested)
        cases = (("ddim", 10, {0}), ("dpm++2m", 4, {0}), ("ddpm", 5, set(range(6))))
        for sampler, steps, want_draws in cases:
            draws.clear()
            req = SampleRequest((3, 4, 5), seed=9, cfg_scale=2.0, steps=steps, sampler=sampler, first_index=4)
            got = s.generate(req, decode=False).latents
            assert set(draws) == want_draws, sampler
            assert _rel(got, python_sampler.generate(req, decode=False).latents) <= 1e-5, sampler


# --------------------------------------------------------------------------- Python → C++


def test_cpp_sampler_equals_python_runtime(cpp_build, engines, python_sampler, monkeypatch):
    """ctypes: the whole C++ loop, incl. a schedule not stored in the manifest and torch noise."""
    monkeypatch.setenv("DIT_RUNTIME_LIB", str(cpp_build / "libdit_runtime.so"))
    from dit_export.runtime import cpp_backend

    monkeypatch.setattr(cpp_backend, "_lib", None)
    with cpp_backend.CppSampler.load(engines, backend="cpu", threads=int(THREADS)) as s:
        assert "AOTInductor" in s.describe() and s.batch == 2
        cases = [
            dict(seed=3, cfg_scale=4.0, steps=4, sampler="ddim"),  # not stored: make_schedule rows passed in
            dict(seed=7, cfg_scale=2.0, steps=5, sampler="ddpm", noise="torch"),  # caller noise: torch stream
            # issue 11: the solver-state tensors ping-ponged by the C++ loop (rows passed in / stored)
            dict(seed=5, cfg_scale=4.0, steps=6, sampler="dpm++2m"),
            dict(seed=5, cfg_scale=1.5, steps=10, sampler="unipc"),
        ]
        for kw in cases:
            labels = [10, 20, 30]
            got, lat = s.sample(labels, return_latents=True, **kw)
            want, lat_ref = python_sampler.sample(labels, return_latents=True, progress=False, **kw)
            assert _max_delta(got, want) <= 1, kw
            assert np.linalg.norm(lat - lat_ref) / np.linalg.norm(lat_ref) < 1e-4
        with pytest.raises(Exception, match="class id 1000 is out of range"):
            s.sample([1000], steps=10, sampler="ddim")
        with pytest.raises(Exception, match="unknown noise kind"):
            s.sample([1], steps=10, sampler="ddim", noise="gauss")


def test_cpp_backend_drives_python_loop(cpp_build, engines, python_sampler, monkeypatch):
    """The Python Sampler loop on graphs run by the C++ library (dit_run_graph), vs ort."""
    monkeypatch.setenv("DIT_RUNTIME_LIB", str(cpp_build / "libdit_runtime.so"))
    from dit_export.export.manifest import Manifest
    from dit_export.runtime import cpp_backend
    from dit_export.runtime.sampler import Sampler

    monkeypatch.setattr(cpp_backend, "_lib", None)
    manifest = Manifest.read(engines)
    be = cpp_backend.CppBackend(engines, manifest, ["dit_step", "vae_decoder"], threads=int(THREADS))
    with Sampler(engines, manifest, be) as s:
        assert "C++ dit_runtime" in s.describe()
        got = s.sample([5, 6], seed=11, cfg_scale=3.0, steps=10, sampler="ddim", progress=False)
    want = python_sampler.sample([5, 6], seed=11, cfg_scale=3.0, steps=10, sampler="ddim", progress=False)
    assert _max_delta(got, want) <= 1
    with pytest.raises(Exception, match="runs dit_step and vae_decoder only"):
        cpp_backend.CppBackend(engines, manifest, ["dit"])


def test_cpp_philox_equals_numpy(cpp_build, monkeypatch):
    monkeypatch.setenv("DIT_RUNTIME_LIB", str(cpp_build / "libdit_runtime.so"))
    from dit_export.runtime import cpp_backend
    from dit_export.sampling.noise import philox_normal

    monkeypatch.setattr(cpp_backend, "_lib", None)
    for seed, draw, image, shape in [
        (0, 0, 0, (4, 32, 32)),
        (2**64 - 1, 2**32 - 1, 2**32 - 1, (3, 5)),
        (123, 7, 9, (4, 9, 9)),
    ]:
        got = cpp_backend.philox_normal(seed, draw, image, shape)
        want = philox_normal(seed, draw, [image], shape)[0]
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_missing_library_is_a_one_line_error(monkeypatch, tmp_path):
    from dit_export.errors import UserError
    from dit_export.runtime import cpp_backend

    monkeypatch.setattr(cpp_backend, "_lib", None)
    monkeypatch.setenv("DIT_RUNTIME_LIB", str(tmp_path / "libdit_runtime.so"))
    with pytest.raises(UserError, match="scripts/build_cpp.sh") as e:
        cpp_backend.load_library()
    assert "\n" not in str(e.value)


def test_stale_or_corrupt_packages_are_refused(cpp_build, engines, tmp_path, monkeypatch):
    """A corrupted .pt2, a package for another ONNX graph, a folder without packages: one line each."""
    monkeypatch.setenv("DIT_RUNTIME_LIB", str(cpp_build / "libdit_runtime.so"))
    from dit_export.engine.aoti import read_packages
    from dit_export.errors import UserError
    from dit_export.runtime import cpp_backend

    monkeypatch.setattr(cpp_backend, "_lib", None)
    folder = tmp_path / "copy"
    (folder / "aoti").mkdir(parents=True)
    for f in engines.iterdir():
        if f.suffix in (".onnx", ".data"):
            (folder / f.name).symlink_to(f.resolve())
    shutil.copy(engines / "manifest.json", folder / "manifest.json")
    for f in (engines / "aoti").glob("*.pt2"):
        (folder / "aoti" / f.name).symlink_to(f.resolve())
    records = read_packages(engines)

    def write(graph: str, rec: dict) -> None:
        (folder / "aoti" / f"{graph}.pt2.json").write_text(json.dumps(rec))

    for g, rec in records.items():
        write(g, rec)
    with cpp_backend.CppSampler.load(folder, backend="cpu", threads=int(THREADS)) as s:  # the copy loads
        assert "AOTInductor" in s.describe()
    write("dit_step", {**records["dit_step"], "sha256": "0" * 64})
    with pytest.raises(UserError, match="sha256 of aoti/dit_step.pt2 does not match its record"):
        cpp_backend.CppSampler.load(folder, backend="cpu")
    write("dit_step", {**records["dit_step"], "onnx_sha256": "1" * 64})
    with pytest.raises(UserError, match="was compiled for another dit_step.onnx"):
        cpp_backend.CppSampler.load(folder, backend="cpu")
    write("dit_step", {**records["dit_step"], "file": "../../dit_step.pt2"})
    with pytest.raises(UserError, match="must be a relative path inside the folder"):
        cpp_backend.CppSampler.load(folder, backend="cpu")
    (folder / "aoti" / "dit_step.pt2.json").unlink()
    with pytest.raises(
        UserError, match=r"no AOTInductor package aoti/dit_step.pt2 .* python -m dit_export aoti"
    ):
        cpp_backend.CppSampler.load(folder, backend="cpu")
    if not _built_with_tensorrt(cpp_build):
        with pytest.raises(UserError, match="built without TensorRT"):
            cpp_backend.CppSampler.load(folder, backend="tensorrt")
    else:  # no plan for this folder: refused in one line, whatever the GPU
        with pytest.raises(UserError, match="no dit_step engine|no CUDA GPU"):
            cpp_backend.CppSampler.load(folder, backend="tensorrt")


def test_aoti_packages_agree_with_onnx(engines):
    """The recorded agreement, and the check itself on the compiled packages."""
    from dit_export.engine.aoti import AGREEMENT, check_agreement, read_packages
    from dit_export.export.manifest import Manifest

    m = Manifest.read(engines)
    records = read_packages(engines)
    for g in ("dit_step", "vae_decoder"):
        rec = records[g]
        assert rec["file"] == f"aoti/{g}.pt2"
        assert rec["onnx_sha256"] == m.graph(g).file.sha256
        assert rec["onnx_rel_l2"] <= AGREEMENT["fp32"]
    assert check_agreement(engines, m, "vae_decoder", engines / "aoti" / "vae_decoder.pt2") < 1e-5


def test_aoti_cli_errors(tmp_path):
    r = _run([sys.executable, "-m", "dit_export", "aoti", str(tmp_path / "nope")], timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0
