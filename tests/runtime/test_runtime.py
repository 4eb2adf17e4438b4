"""The runtime sampler on ONNX Runtime (CPU) and the PyTorch backend, and its failure behaviour."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_python
from folders import (
    assert_one_line_error,
    inject_nan,
    link_copy,
    load_graph,
    rehash,
    replace_graph,
    run_cli,
    s8_folder,
)

from dit_export.compare import rel_l2
from dit_export.errors import UserError
from dit_export.images import to_uint8
from dit_export.sampling.request import SampleRequest

LABELS = [207, 360, 387]  # 3 images on a batch-2 export: two chunks, the last one padded
STEPS = 4


def latents(runner, labels, progress: bool = False, **fields) -> np.ndarray:
    """Final latents of a request built from keywords (`generate` without decoding)."""
    return runner.generate(runner.request(labels, **fields), decode=False, progress=progress).latents


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return s8_folder(tmp_path_factory, "fp32")


@pytest.fixture(scope="module")
def ort32(fp32):
    from dit_export.runtime import Sampler

    with Sampler.load(fp32, backend="ort") as s:
        yield s


@pytest.fixture(scope="module")
def torch32(fp32):
    from dit_export.runtime import Sampler

    with Sampler.load(fp32, backend="torch") as s:
        yield s


@pytest.fixture(scope="module")
def reference_model():
    from dit_export.models.checkpoints import random_dit

    model, _ = random_dit("S/8", 256, seed=0)
    return model


def test_import_and_ort_sampling_never_import_torch(fp32):
    code = (
        "import sys\n"
        "from dit_export.runtime import Sampler\n"
        f"s = Sampler.load({str(fp32)!r}, backend='ort')\n"
        "img, lat = s.sample([1, 2, 3], seed=0, steps=2, return_latents=True, progress=False)\n"
        "assert img.shape == (3, 256, 256, 3) and img.dtype.name == 'uint8', img.shape\n"
        "assert lat.shape == (3, 4, 32, 32)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('torch modules:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    run_python(code, timeout=300)


def test_ort_and_torch_backends_agree(ort32, torch32):
    a = latents(ort32, LABELS, seed=3, steps=STEPS, progress=False)
    b = latents(torch32, LABELS, seed=3, steps=STEPS, progress=False)
    assert a.shape == (3, 4, 32, 32) and np.isfinite(a).all()
    assert rel_l2(a, b) < 1e-5


def test_runtime_matches_the_reference_loop(ort32, reference_model):
    """Chunking, padding and the noise indexing reproduce the reference loop on the whole request."""
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    for sampler, cfg in (("ddim", 1.5), ("ddpm", 1.0)):  # (ddpm, 4) is the backend comparison above
        got = latents(ort32, LABELS, seed=1, cfg_scale=cfg, steps=3, sampler=sampler, progress=False)
        noise = make_noise("philox", 1, len(LABELS), (4, 32, 32), guided=cfg > 1.0)
        ref = sample_latents(
            reference_model, LABELS, noise, steps=3, sampler=sampler, cfg_scale=cfg, progress=False
        ).numpy()
        assert rel_l2(got, ref) < 1e-5, (sampler, cfg)


def test_torch_noise_reproduces_the_official_stream(ort32, reference_model):
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    got = latents(ort32, LABELS, seed=0, steps=2, noise="torch", progress=False)
    noise = make_noise("torch", 0, len(LABELS), (4, 32, 32), guided=True)
    ref = sample_latents(reference_model, LABELS, noise, steps=2, progress=False).numpy()
    assert rel_l2(got, ref) < 1e-5


def test_an_image_depends_only_on_its_position_label_and_seed(ort32):
    full = latents(ort32, LABELS, seed=2, steps=STEPS, progress=False)
    other = latents(ort32, [5, 6, LABELS[2]], seed=2, steps=STEPS, progress=False)
    np.testing.assert_array_equal(full[2], other[2])  # same chunk position, padding and neighbours differ
    single = latents(ort32, LABELS[:1], seed=2, steps=STEPS, progress=False)
    np.testing.assert_array_equal(full[0], single[0])


def test_generate_many_packs_rows_and_equals_one_request_each(ort32):
    """Rows of several requests (other seeds, first_index) share engine runs: each result is what
    the request gives alone. Batch 2: rows (a0, a1), (a2, b0), (c0, pad) with c run apart (cfg)."""
    a = SampleRequest(labels=(1, 2, 3), seed=7, steps=STEPS)
    b = SampleRequest(labels=(4,), seed=11, steps=STEPS, first_index=5)
    c = SampleRequest(labels=(6,), seed=7, steps=STEPS, cfg_scale=1.5)
    many = ort32.generate_many([a, b, c], decode=False)
    assert [len(r.latents) for r in many] == [3, 1, 1]
    for req, got in zip((a, b, c), many):
        np.testing.assert_array_equal(got.latents, ort32.generate(req, decode=False).latents)
    with pytest.raises(UserError, match="out of range"):
        ort32.generate_many([a, SampleRequest(labels=(5000,), steps=STEPS)])


def test_images_are_the_decoded_latents(ort32, fp32):
    import onnxruntime as ort

    img, lat = ort32.sample(LABELS[:2], seed=0, steps=2, return_latents=True, progress=False)
    assert img.shape == (2, 256, 256, 3) and img.dtype == np.uint8
    vae = ort.InferenceSession(str(fp32 / "vae_decoder.onnx"), providers=["CPUExecutionProvider"])
    (decoded,) = vae.run(None, {"latent": lat})  # the batch-2 graph, run on its own
    np.testing.assert_array_equal(img, to_uint8(decoded))


def test_fp16_export_matches_the_fp32_reference(tmp_path_factory, torch32):
    from dit_export.runtime import Sampler

    fp16 = s8_folder(tmp_path_factory, "fp16")
    with Sampler.load(fp16, backend="ort") as s:
        a = latents(s, LABELS, seed=3, steps=2, progress=False)
    b = latents(torch32, LABELS, seed=3, steps=2, progress=False)
    assert rel_l2(a, b) < 1e-2


def test_bad_requests_are_one_line_errors(ort32):
    with pytest.raises(UserError, match="out of range"):
        ort32.sample([1000], steps=1, progress=False)
    with pytest.raises(UserError, match="cfg scale"):
        ort32.sample([1], cfg_scale=0.5, steps=1, progress=False)
    with pytest.raises(UserError, match="unknown noise"):
        ort32.sample([1], noise="gauss", steps=1, progress=False)
    with pytest.raises(UserError, match="TensorRT"):
        from dit_export.runtime import Sampler

        Sampler.load(ort32.folder, backend="trt")


def test_nan_names_the_first_step(fp32, tmp_path):
    from dit_export.runtime import Sampler
    from dit_export.sampling.samplers import make_schedule

    folder = link_copy(fp32, tmp_path / "nan")
    ts = make_schedule(STEPS, "ddpm").timesteps
    replace_graph(folder, "dit_step", inject_nan(load_graph(fp32 / "dit_step.onnx"), int(ts[2])))
    with Sampler.load(folder, backend="ort") as s, pytest.raises(UserError) as e:
        latents(s, [1], steps=STEPS, progress=False)
    assert f"first at step 3/{STEPS} (t={int(ts[2])}" in str(e.value)
    # and through the CLI: one line, exit 2
    proc = run_cli("verify", "--engines", str(folder), "--seeds", "0", "--steps", str(STEPS), "--no-progress")
    assert_one_line_error(proc, "NaN/Inf", "step 3/")


@pytest.mark.parametrize(
    "case", ["hand-edited manifest", "missing graph", "corrupt graph", "bad manifest json"]
)
def test_broken_folders_are_one_line_errors(fp32, tmp_path, case):
    folder = link_copy(fp32, tmp_path / "f", copy=("dit_step.onnx",))
    if case == "hand-edited manifest":
        text = (folder / "manifest.json").read_text()
        sha = __import__("json").loads(text)["graphs"]["dit_step"]["sha256"]
        (folder / "manifest.json").write_text(text.replace(sha, "f" * 64))
        needles = ("sha256 of dit_step.onnx does not match",)
    elif case == "missing graph":
        (folder / "vae_decoder.onnx").unlink()
        needles = ("vae_decoder.onnx", "missing")
    elif case == "corrupt graph":
        (folder / "dit_step.onnx").write_bytes(b"not an onnx file" * 100)
        rehash(folder, "dit_step")
        needles = ("onnxruntime cannot load", "dit_step.onnx")
    else:
        (folder / "manifest.json").write_text("{ not json")
        needles = ("cannot read", "manifest.json")
    proc = run_cli("verify", "--engines", str(folder), "--seeds", "0", "--steps", "1", "--no-progress")
    assert_one_line_error(proc, *needles)


def test_sample_command_from_engines(fp32, tmp_path):
    """What `sample --engines DIR` runs: grid PNG, latents and images written."""
    proc = run_cli("sample", "--engines", str(fp32), "--classes", "1", "2", "3", "--steps", "2", "--no-progress",
                   "--out", str(tmp_path / "g.png"), "--save-latents", str(tmp_path / "l.npy"),
                   "--save-images", str(tmp_path / "i.npz"))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "g.png").stat().st_size > 0
    assert np.load(tmp_path / "l.npy").shape == (3, 4, 32, 32)
    assert np.load(tmp_path / "i.npz")["arr_0"].shape == (3, 256, 256, 3)


# --------------------------------------------------------------------------- the request, one entry point


def test_generate_takes_one_request(ort32):
    req = SampleRequest((207, 360, 387), seed=3, steps=2)
    res = ort32.generate(req, decode=False)
    assert res.images is None and res.latents.shape == (3, 4, 32, 32)
    np.testing.assert_array_equal(res.latents, latents(ort32, [207, 360, 387], seed=3, steps=2))
    assert ort32.request([1], steps=2) == SampleRequest((1,), steps=2)
    with pytest.raises(TypeError, match="SampleRequest"):
        ort32.generate([1, 2])  # type: ignore[arg-type]
    for bad, needle in (
        (dict(steps=2.5), "steps must be an integer"),
        (dict(steps=1_000_000_000), "at most 1000 (the training steps)"),
        (dict(cfg_scale="4"), "cfg scale must be a number"),
    ):
        with pytest.raises(UserError, match=re.escape(needle)):
            latents(ort32, [1], **bad)
    with pytest.raises(UserError, match="class labels must be integers"):
        latents(ort32, [1.0], steps=1)


# --------------------------------------------------------------------------- ORT: providers in use, real I/O


def test_ort_follows_the_providers_in_use(fp32, monkeypatch):
    """CUDA asked for but not loaded (the CPU onnxruntime here): buffers, describe() and device say CPU."""
    import onnxruntime as ort

    from dit_export.runtime import Sampler

    with Sampler.load(fp32, backend="ort", providers=["CUDAExecutionProvider", "CPUExecutionProvider"]) as s:
        assert s.backend.device == "cpu" and "CPUExecutionProvider (cpu" in s.backend.describe()
        assert "CUDAExecutionProvider requested, not in use" in s.backend.describe()
        assert np.isfinite(latents(s, [1, 2, 3], steps=2)).all()
    # A CUDA provider that is listed as available but fails to load: ORT falls back to the CPU silently.
    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have:
        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *have])
        with Sampler.load(fp32, backend="ort", providers=["CUDAExecutionProvider"]) as s:
            assert s.backend.device == "cpu", s.backend.describe()
            assert s.backend.active == "CPUExecutionProvider"
            assert "(cpu; CUDAExecutionProvider requested, not in use)" in s.backend.describe()
            a = latents(s, [1, 2, 3], seed=4, steps=2)
        with Sampler.load(fp32, backend="ort", providers=["CPUExecutionProvider"]) as s:
            np.testing.assert_array_equal(a, latents(s, [1, 2, 3], seed=4, steps=2))


def test_manifest_io_against_the_session_is_one_line(fp32, tmp_path):
    """A manifest whose graph I/O the ONNX file contradicts: one line naming the tensor, not an ORT traceback."""
    from dit_export.runtime import Sampler

    folder = link_copy(fp32, tmp_path / "io")
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    for t in m["graphs"]["dit_step"]["inputs"]:
        if t["name"] == "y":
            t["dtype"] = "int32"
    path.write_text(json.dumps(m, indent=1))
    with pytest.raises(UserError) as e:
        Sampler.load(folder, backend="ort")
    msg = str(e.value)  # the manifest's own rules catch it first (the runtimes feed y int64), as in C++
    assert "graphs.dit_step.inputs[2] is y int32 [2]" in msg and "need y int64 [2]" in msg, msg
    assert "\n" not in msg


def test_backend_checks_bindings_once_in_run(ort32):
    be = ort32.backend
    x = be.alloc((2, 4, 32, 32), "float32")
    small = be.alloc((1, 4, 32, 32), "float32")
    names = {"x": x, "t": be.alloc((2,), "int64"), "y": be.alloc((2,), "int64"), "noise": x,
             "guidance": be.alloc((1,), "float32"),
             "coef": be.alloc(ort32._coef_shape(), "float32")}  # fmt: skip
    for name, out in ort32.state_pairs():  # the solver-state tensors (issue 11)
        names[name], names[out] = be.alloc((2, 4, 32, 32), "float32"), be.alloc((2, 4, 32, 32), "float32")
    with pytest.raises(ValueError, match="bound"):
        be.run("dit_step", names)
    with pytest.raises(
        ValueError, match="x_next is bound to float32 \\(1, 4, 32, 32\\), the graph takes float32"
    ):
        be.run("dit_step", {**names, "x_next": small})
    with pytest.raises(ValueError, match="y is bound to float32"):
        be.run(
            "dit_step",
            {**names, "y": be.alloc((2,), "float32"), "x_next": be.alloc((2, 4, 32, 32), "float32")},
        )
    with pytest.raises(UserError, match="was not loaded"):
        be.run("dit", {})


# --------------------------------------------------------------------------- NaN in the reference loop


def test_reference_loop_names_the_nan_step():
    import torch

    from dit_export.models.checkpoints import random_dit
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    model, _ = random_dit("S/8", 256, seed=0)
    with torch.no_grad():
        model.final_layer.linear.weight.fill_(float("nan"))
    noise = make_noise("philox", 0, 2, (4, 32, 32), guided=True)
    with pytest.raises(UserError) as e:
        sample_latents(model, [1, 2], noise, steps=3, progress=False)
    assert "NaN/Inf in the step output first at step 1/3 (t=999; images 0, 1)" in str(e.value)


# --------------------------------------------------------------------------- multistep solvers (issue 11)


@pytest.mark.parametrize("sampler,cfg", [("dpm++2m", 4.0), ("unipc", 1.0), ("unipc", 4.0)])
def test_multistep_solvers_match_the_reference_loop(ort32, torch32, reference_model, sampler, cfg):
    """3 images on a batch-2 export: the history state is zeroed again for the second chunk."""
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    assert [i for i, _ in ort32.state_pairs()] == ["hist_x0", "hist_x0_prev", "hist_x"]
    noise = make_noise("philox", 1, len(LABELS), (4, 32, 32), guided=cfg > 1.0)
    ref = sample_latents(
        reference_model, LABELS, noise, steps=5, sampler=sampler, cfg_scale=cfg, progress=False
    ).numpy()
    for runner in (ort32, torch32):
        got = latents(runner, LABELS, seed=1, cfg_scale=cfg, steps=5, sampler=sampler, progress=False)
        assert rel_l2(got, ref) < 1e-5, (runner.backend.name, sampler, cfg)


def test_ode_samplers_draw_only_the_initial_latent(ort32, monkeypatch):
    from dit_export.sampling.batch_noise import ChunkNoise

    want = {s: latents(ort32, [5, 6, 7], seed=2, steps=4, sampler=s) for s in ("ddim", "dpm++2m", "unipc")}

    def no_step_noise(self, c, k0, k1):
        raise AssertionError("per-step noise drawn")

    monkeypatch.setattr(ChunkNoise, "steps", no_step_noise)
    for s, w in want.items():
        np.testing.assert_array_equal(latents(ort32, [5, 6, 7], seed=2, steps=4, sampler=s), w)
    with pytest.raises(AssertionError, match="per-step noise drawn"):  # DDPM does draw it
        latents(ort32, [5], seed=2, steps=4, sampler="ddpm")
    other = latents(ort32, [5, 6, 7], seed=3, steps=4, sampler="unipc")
    assert rel_l2(other, want["unipc"]) > 0.1  # the initial latent is the seed's


def test_solver_requests_below_their_minimum(ort32):
    with pytest.raises(UserError, match="dpm\\+\\+2m needs at least 2 steps"):
        latents(ort32, [1], steps=1, sampler="dpm++2m")
    with pytest.raises(UserError, match="unknown sampler 'euler'"):
        latents(ort32, [1], steps=10, sampler="euler")


def _without_solver_state(fp32: Path, folder: Path) -> Path:
    """A copy whose dit_step has no solver-state I/O (what an export made before issue 11 holds):
    the state inputs become zero constants, the state outputs are dropped."""
    import onnx
    from onnx import numpy_helper

    from dit_export.sampling.schedule import STATE_NAMES, state_output

    link_copy(fp32, folder)
    model = onnx.load(str(fp32 / "dit_step.onnx"), load_external_data=False)
    g = model.graph
    for name in STATE_NAMES:
        (vi,) = [i for i in g.input if i.name == name]
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        g.input.remove(vi)
        g.initializer.append(numpy_helper.from_array(np.zeros(dims, np.float32), name))
        (vo,) = [o for o in g.output if o.name == state_output(name)]
        g.output.remove(vo)
    replace_graph(folder, "dit_step", model)
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    step = m["graphs"]["dit_step"]
    step["inputs"] = [t for t in step["inputs"] if t["name"] not in STATE_NAMES]
    step["outputs"] = [t for t in step["outputs"] if t["name"] == "x_next"]
    for sampler, rec in list(m["schedule"]["samplers"].items()):  # it recorded the stateless ones only
        if rec["state"]:
            m["schedule"]["samplers"].pop(sampler)
            m["schedule"]["tables"].pop(sampler, None)
    path.write_text(json.dumps(m, indent=1) + "\n")
    return folder


def test_folder_without_solver_state_is_refused(fp32, tmp_path):
    """A dit_step without the solver state (never written under schema /2, which came with it; the
    legacy path is gone, issue 20): refused on load in one line, by the API and the CLI alike."""
    from dit_export.runtime import Sampler

    folder = _without_solver_state(fp32, tmp_path / "old")
    want = "graphs.dit_step has 6 inputs, this runtime feeds 9 (x, t, y, noise, guidance, coef, hist_x0"
    with pytest.raises(UserError, match=re.escape(want)):
        Sampler.load(folder, backend="ort")
    proc = run_cli("sample", "--engines", str(folder), "--classes", "1", "--steps", "5",
                   "--sampler", "ddim", "--no-progress", "--out", str(tmp_path / "g.png"))  # fmt: skip
    assert_one_line_error(proc, want)
