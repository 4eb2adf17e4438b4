"""TensorRT engines and the trt backend on a GPU (skipped with the reason where they cannot run).

What these check, on a machine with TensorRT 10.x/11.x, cuda-python and a CUDA GPU:
- `build --backend tensorrt` builds strongly typed plans for every graph the S/8 export holds
  into plans/, each with its record (the manifest is untouched), and reuses them on a second run;
- every graph the folder holds (dit, dit_step, vae_decoder, and whatever graph kind is added
  next, e.g. a forecast-cache step) gives on TensorRT what it gives on ONNX Runtime, within the
  verify limit of its stage at the folder's precision;
- every sampler of the registry (`dit_export.sampling.samplers`, which is what the folder's
  manifest records) samples on TensorRT as on ONNX Runtime and the PyTorch fp32 reference, with
  CUDA-graph replay and the shared scratch block changing nothing, and `verify --backend trt`
  passes for it;
- a corrupt plan, a plan recorded for another TensorRT version, and a missing plan are one-line
  errors.
Everything runs per precision of `export.precision.PRECISIONS` (one TensorRT folder each), so a
precision added there (int8, fp8) is built and checked here without a new test; a precision
without a row in `compare.LIMITS` fails rather than passing unchecked.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from folders import MODEL_ARGS, assert_one_line_error, link_copy, run_cli, s8_folder

from dit_export import compare
from dit_export.compare import rel_l2
from dit_export.engine import trt_api
from dit_export.engine.plans import list_plans
from dit_export.engine.records import record_path
from dit_export.export.manifest import Manifest
from dit_export.export.precision import PRECISIONS
from dit_export.sampling import samplers


def _why_not() -> str | None:
    ok, why = trt_api.probe()
    return None if ok else why


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"TensorRT tests: {REASON}")]
LABELS = [207, 360, 387]


def stage_result(summary: str, stage: str) -> str | None:
    """The result word of a summary row: the first column widens with "engine vae_decoder"."""
    m = re.search(rf"^{re.escape(stage)}\s+(\S+)", summary, re.M)
    return m.group(1) if m else None


SAMPLERS = samplers.names()
_PLANNED: dict[str, object] = {}


def _planned(tmp_path_factory, precision: str):
    """A copy of the S/8 folder of `precision` with TensorRT plans built into it (once a session)."""
    if precision not in _PLANNED:
        src = s8_folder(tmp_path_factory, precision)
        folder = link_copy(src, tmp_path_factory.mktemp("trt") / f"s8-{precision}")
        proc = run_cli("build", *MODEL_ARGS, "--precision", precision, "--backend", "tensorrt",
                       "--out", str(folder), "--verify-steps", "5")  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        assert "backend: tensorrt" in proc.stdout and stage_result(proc.stdout, "export") == "reused"
        _PLANNED[precision] = folder
    return _PLANNED[precision]


@pytest.fixture(scope="module")
def trt16(tmp_path_factory):
    return _planned(tmp_path_factory, "fp16")


@pytest.fixture(scope="module", params=PRECISIONS)
def trt_folder(request, tmp_path_factory):
    """Each precision's TensorRT folder in turn."""
    return _planned(tmp_path_factory, request.param)


def test_build_records_and_reuses_plans(trt_folder):
    m = json.loads((trt_folder / "manifest.json").read_text())
    plans = list_plans(trt_folder)
    graphs = {g for g, spec in m["graphs"].items() if spec}
    assert {r["graph"] for r in plans.values()} == graphs  # a plan for every graph kind the folder holds
    assert "engines" not in m  # the export's manifest is never rewritten
    for path, r in plans.items():
        name = path.name
        assert path.is_file() and name.endswith(".plan") and f".trt{r['tensorrt'][:2]}" in name
        assert r["onnx_sha256"] == m["graphs"][r["graph"]]["sha256"] and r["options"]["strongly_typed"]
    leftovers = [
        p.name for p in (trt_folder / "plans").iterdir() if p.name.startswith(".") or p.suffix == ".lock"
    ]
    assert leftovers == []  # no scratch timing cache, no polygraphy .lock files (issue 14.10)
    proc = run_cli("build", *MODEL_ARGS, "--precision", m["precision"], "--backend", "tensorrt",
                   "--out", str(trt_folder), "--no-verify")  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.count("reused") >= 1 + len(graphs), proc.stdout


# The verify stage whose limit a graph's outputs are held to (a graph kind not named here is a
# step-like graph: a forecast-cache step is held to the step's limit).
GRAPH_STAGE = {"dit": "dit", "dit_step": "step", "vae_decoder": "vae"}


def _feeds(manifest: Manifest, graph: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for any graph from its manifest I/O: latent-like floats, in-range labels and
    timesteps, the guidance scale, a real coefficient row for coefficient inputs."""
    rng = np.random.default_rng(seed)
    classes = int(manifest.model.config["num_classes"])
    out = {}
    for spec in manifest.graph(graph).inputs:
        shape, dtype = spec.shape, spec.np_dtype
        if spec.name == "t":
            v = np.full(shape, 500)
        elif spec.name == "guidance":
            v = np.full(shape, 4.0)
        elif spec.name == "coef":
            ts, rows = samplers.get("ddpm").coefficients(50)
            v = np.broadcast_to(rows[int(np.argmin(np.abs(ts - 500)))], shape)
        elif np.issubdtype(dtype, np.integer):
            v = rng.integers(0, classes, size=shape)
        else:
            v = rng.standard_normal(shape)
        out[spec.name] = np.array(v, dtype=dtype)  # a writable copy
    return out


def _run_all(backend, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    io = backend.graphs[graph]
    bindings = {}
    for spec in io.inputs:
        bindings[spec.name] = backend.alloc(spec.shape, spec.np_dtype)
        backend.write(bindings[spec.name], feeds[spec.name])
    for spec in io.outputs:
        bindings[spec.name] = backend.alloc(spec.shape, spec.np_dtype)
    backend.run(graph, bindings)
    return {spec.name: backend.read(bindings[spec.name]) for spec in io.outputs}


def test_every_graph_matches_onnxruntime(trt_folder):
    """Every graph of the folder, every output: TensorRT against ONNX Runtime on the same inputs."""
    from dit_export.images import to_uint8
    from dit_export.runtime import Sampler

    manifest = Manifest.read(trt_folder)
    graphs = [g for g, spec in manifest.graphs.items() if spec]
    rows = []
    for graph in graphs:
        feeds = _feeds(manifest, graph)
        outs = {}
        for backend in ("trt", "ort"):
            with Sampler.load(trt_folder, backend=backend, graphs=[graph]) as s:
                outs[backend] = _run_all(s.backend, graph, feeds)
        stage = GRAPH_STAGE.get(graph, "step")
        for name, got in outs["trt"].items():
            want = outs["ort"][name]
            if compare.limit(stage, "rel_l2", manifest.precision) is None:  # the fp16 VAE: uint8 PSNR
                row = compare.compare(stage, "psnr_db", to_uint8(got), to_uint8(want), manifest.precision)
            else:
                row = compare.compare(stage, "rel_l2", got, want, manifest.precision)
            rows.append((graph, name, row))
    bad = [f"{g}.{n}: {r.describe()}" for g, n, r in rows if not r]
    assert not bad, bad
    assert {g for g, _, _ in rows} == set(graphs)


def test_every_sampler_is_recorded_by_the_folder(trt_folder):
    """The folder's sampler record is the registry's: the parametrized tests below cover it all."""
    recorded = set(Manifest.read(trt_folder).schedule.samplers)
    assert recorded == set(SAMPLERS), (sorted(recorded), SAMPLERS)


def _steps(sampler: str) -> int:
    """A short run the folder has a stored table for (the C++ runtime runs only stored ones)."""
    spec = samplers.get(sampler)
    return min(spec.stored_steps) if spec.stored_steps else max(spec.min_steps, 10)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_matches_ort_and_torch(trt_folder, sampler):
    """Each sampler on TensorRT (CUDA graphs on and off: identical) against ONNX Runtime and the
    PyTorch fp32 reference, 3 images on batch 2 (the second chunk restarts the solver state)."""
    from dit_export.runtime import Sampler, SampleRequest

    precision = Manifest.read(trt_folder).precision
    req = SampleRequest((207, 360, 387), seed=3, cfg_scale=4.0, steps=_steps(sampler), sampler=sampler)
    got = {}
    for name, backend, opts in (("graphs", "trt", {"cuda_graph": True}), ("plain", "trt", {"cuda_graph": False}),
                                ("ort", "ort", {}), ("torch", "torch", {})):  # fmt: skip
        with Sampler.load(trt_folder, backend=backend, **opts) as s:
            got[name] = s.generate(req, decode=False).latents
    np.testing.assert_array_equal(got["graphs"], got["plain"])
    limit = compare.limit("latents", "rel_l2", precision)
    assert rel_l2(got["graphs"], got["torch"]) < limit and rel_l2(got["graphs"], got["ort"]) < limit


def test_trt_matches_ort_and_torch(trt16):
    from dit_export.runtime import Sampler, SampleRequest

    req = SampleRequest(tuple(LABELS), seed=0, steps=10)
    with Sampler.load(trt16, backend="trt") as s:
        a = s.generate(req, decode=False).latents
        assert "TensorRT" in s.describe()
    with Sampler.load(trt16, backend="ort") as s:
        b = s.generate(req, decode=False).latents
    with Sampler.load(trt16, backend="torch") as s:
        c = s.generate(req, decode=False).latents
    assert rel_l2(a, c) < 1e-2 and rel_l2(a, b) < 1e-2


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("option", ["cuda_graph", "shared_scratch"])
def test_replay_and_shared_scratch_change_nothing(trt16, option, sampler):
    from dit_export.runtime import Sampler

    steps = _steps(sampler)
    with Sampler.load(trt16, backend="trt", **{option: True}) as s:
        on = s.sample(LABELS, seed=1, steps=steps, sampler=sampler, return_latents=True, progress=False)
        desc = s.backend.describe()
    with Sampler.load(trt16, backend="trt", **{option: False}) as s:
        off = s.sample(LABELS, seed=1, steps=steps, sampler=sampler, return_latents=True, progress=False)
    assert (
        ("CUDA graph on" in desc) if option == "cuda_graph" else ("shared scratch" in desc or "10.0" in desc)
    )
    np.testing.assert_array_equal(on[1], off[1])
    np.testing.assert_array_equal(on[0], off[0])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_verify_trt_passes(trt_folder, sampler):
    proc = run_cli("verify", "--engines", str(trt_folder), "--backend", "trt", "--seeds", "0",
                   "--steps", str(_steps(sampler)), "--sampler", sampler, "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", ["corrupt plan", "other TensorRT", "missing plan"])
def test_bad_plans_are_one_line_errors(trt16, tmp_path, case):
    folder = link_copy(trt16, tmp_path / "f")
    shutil.copytree(trt16 / "plans", folder / "plans")  # link_copy takes the top-level files only
    path, rec = next((p, r) for p, r in list_plans(folder).items() if r["graph"] == "dit_step")
    if case == "corrupt plan":
        path.unlink()
        path.write_bytes(b"\0" * rec["bytes"])
        needles = ("does not match its sha256",)
    elif case == "other TensorRT":
        rec["tensorrt"] = "9.0.0.0"
        record_path(path).write_text(json.dumps(rec))
        needles = ("built with TensorRT 9.0.0.0",)
    else:
        path.unlink()
        needles = ("file is missing",)
    proc = run_cli("verify", "--engines", str(folder), "--backend", "trt", "--seeds", "0", "--steps", "1")
    assert_one_line_error(proc, *needles)
