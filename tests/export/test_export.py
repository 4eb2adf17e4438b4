"""ONNX export: real exports of DiT-S/8 (random weights, perturbed adaLN-Zero) + a tiny random VAE.

Two folders, each made once per test run and shared with other modules (tests/folders.py): fp32
through the CLI `export` with external data forced by a tiny threshold, and the mixed-fp16 `build`
(its export checked, weights inline). Every number is checked by running the real graphs in ONNX
Runtime against the PyTorch modules.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_user_error as assert_one_line_error
from conftest import hidden_names as leftovers
from conftest import run_dit_export
from folders import link_copy, s8_export_folder, s8_folder

from dit_export import compare
from dit_export.compare import psnr, rel_l2
from dit_export.engine.lock import lock_path
from dit_export.errors import UserError
from dit_export.export import analysis, check, trt_ops
from dit_export.export.exporter import ExportOptions, check_out_dir, export
from dit_export.export.manifest import FILENAME, Manifest
from dit_export.models.checkpoints import random_dit
from dit_export.models.spec import ModelSpec
from dit_export.sampling.cache import CACHE_GRAPHS
from dit_export.sampling.samplers import make_schedule
from dit_export.sampling.schedule import COEF_NAMES, STATE_NAMES, state_output
from dit_export.sampling.step import SamplerStep

REPO = Path(__file__).resolve().parents[2]
N = 2  # images per call
L = 32  # latent side at 256 px


run_cli = functools.partial(run_dit_export, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory) -> Path:
    """CLI export, fp32, with every weight-carrying graph forced to external data (1 MB threshold)."""
    out, stdout = s8_export_folder(tmp_path_factory)  # shared with tests/export/test_manifest.py
    assert "guided_eps" in stdout and "FAIL" not in stdout  # compare.format_table names the stage
    return out


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory) -> Path:
    """The shared S/8 mixed-fp16 `build` folder (the same request as an fp16 `export`, plus build.json); read only."""
    return s8_folder(tmp_path_factory, "fp16")  # shared with the runtime, build and cache-export tests


@pytest.fixture(scope="module")
def torch_model():
    model, _ = random_dit("S/8", 256, seed=0)
    return model


# --------------------------------------------------------------------------- files and manifest


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_files_and_manifest(which, fp32_dir, fp16_dir):
    folder = fp32_dir if which == "fp32" else fp16_dir
    typed = Manifest.read(folder)
    m = typed.to_dict()
    assert m["precision"] == which and m["batch"] == N and m["opset"] == trt_ops.DEFAULT_OPSET
    assert (
        m["model"]["name"] == "DiT-S/8"
        and m["model"]["null_class"] == 1000
        and m["model"]["cfg_channels"] == 3
    )
    assert m["image_size"] == 256 and m["latent_size"] == L and m["vae"]["factor"] == 8
    g = m["graphs"]
    io = {k: [(t["name"], t["shape"], t["dtype"]) for t in g[k]["inputs"] + g[k]["outputs"]] for k in g}
    assert io["dit"] == [
        ("x", [2 * N, 4, L, L], "float32"),
        ("t", [2 * N], "int64"),
        ("y", [2 * N], "int64"),
        ("out", [2 * N, 8, L, L], "float32"),
    ]
    assert io["dit_step"] == [
        ("x", [N, 4, L, L], "float32"),
        ("t", [N], "int64"),
        ("y", [N], "int64"),
        ("noise", [N, 4, L, L], "float32"),
        ("guidance", [1], "float32"),
        ("coef", [len(COEF_NAMES)], "float32"),
        *((name, [N, 4, L, L], "float32") for name in STATE_NAMES),  # the multistep solvers' state
        ("x_next", [N, 4, L, L], "float32"),
        *((state_output(name), [N, 4, L, L], "float32") for name in STATE_NAMES),
    ]
    assert io["vae_decoder"] == [("latent", [N, 4, L, L], "float32"), ("image", [N, 3, 256, 256], "float32")]
    # External data: forced for the two DiT graphs of the fp32 export, which share ONE weights
    # file (issue 16.5: the weights are written once); the tiny VAE stays inline.
    ext = {k: [e["file"] for e in g[k]["external_data"]] for k in g}
    # both hold the forecast cache's two step graphs (default --max-cache-order 2)
    if which == "fp32":  # ... which share the one external weights file too
        shared = ["dit.onnx.data"]
        assert ext == {"dit": shared, "dit_step": shared, "vae_decoder": [], **dict.fromkeys(CACHE_GRAPHS, shared)}  # fmt: skip
        assert (folder / "dit_step.onnx").stat().st_size < (folder / "dit.onnx.data").stat().st_size / 100
        assert not leftovers(folder.parent)  # a folder of its own: nothing hidden beside it
    else:  # the build's folder: its build record besides the export, no scratch or set-aside folder
        assert ext == {"dit": [], "dit_step": [], "vae_decoder": [], **dict.fromkeys(CACHE_GRAPHS, [])}
        beside = [n for n in leftovers(folder.parent) if n.startswith(f".{folder.name}.")]
        assert beside in ([], [lock_path(folder).name]), beside  # the build's lock file may stay
    record = ["build.json"] if which == "fp16" else []
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        {FILENAME, *(g[k]["file"] for k in g), *sum(ext.values(), []), *record}
    )
    typed.verify_hashes()
    ts, coefs = typed.table("ddpm", 250)
    ref = make_schedule(250, "ddpm")
    assert np.array_equal(ts, ref.timesteps) and np.array_equal(coefs, ref.coefs)
    ts, coefs = typed.table("ddim", 10)
    assert np.array_equal(coefs, make_schedule(10, "ddim").coefs)
    rows = m["checks"]["rows"]
    # dit: 3 timesteps × 3 rows; dit_step: 3 timesteps × (ddim, ddpm, unipc rows); vae: 2; with the
    # forecast cache: dit_step_full 2 cases × (x_next, cache_next), dit_step_forecast 2 cases
    assert typed.has_cache and m["checks"]["passed"] is True
    assert len(rows) == 9 + 3 * 3 + 2 + 6 and all(r["passed"] for r in rows)


# --------------------------------------------------------------------------- static graphs


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_static_graph_properties(which, fp32_dir, fp16_dir):
    folder = fp32_dir if which == "fp32" else fp16_dir
    for name in ("dit", "dit_step", "vae_decoder"):
        path = folder / f"{name}.onnx"
        rep = analysis.analyze(path, which)
        assert rep.ok, [c for c in rep.checks if not c.ok]
        model = onnx.load(str(path), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        assert ops <= trt_ops.TRT_SUPPORTED_OPS
        assert not ops & trt_ops.FORBIDDEN_OPS
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
        # Every tensor has a static shape after clean-up (value_info written by shape inference).
        known = {vi.name for vi in model.graph.value_info} | {o.name for o in model.graph.output}
        assert all(o in known for n in model.graph.node for o in n.output if o)
        if name != "vae_decoder":
            # unpatchify: a constant Reshape then Transpose (0,5,1,3,2,4) — no Einsum, no Shape.
            perms = [list(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]
            assert [0, 5, 1, 3, 2, 4] in perms
            assert "Split" in ops  # adaLN chunk(6) as a static Split


def test_fp16_policy_in_graph(fp16_dir):
    """fp16 tensors inside, fp32/int64 at the edges, the timestep path and LayerNorm in fp32."""
    m = Manifest.read(fp16_dir).to_dict()
    assert m["precision_policy"]["name"]
    for name in ("dit", "dit_step"):
        model = onnx.load(str(fp16_dir / f"{name}.onnx"))
        types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
        types.update({i.name: i.data_type for i in model.graph.initializer})
        fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
        for vi in list(model.graph.input) + list(model.graph.output):
            assert vi.type.tensor_type.elem_type in (fp32, onnx.TensorProto.INT64)
        by_op: dict[str, set[int]] = {}
        for n in model.graph.node:
            by_op.setdefault(n.op_type, set()).add(types.get(n.output[0], 0))
        assert by_op["Sin"] == {fp32} and by_op["Cos"] == {fp32}
        assert by_op["LayerNormalization"] == {fp32}
        assert by_op["Softmax"] == {fp16}
        assert fp16 in by_op["MatMul"]
        # The sinusoid's MLP: the first Gemm after Concat(cos, sin) consumes and makes fp32.
        cos = next(n for n in model.graph.node if n.op_type == "Cos")
        cat = next(n for n in model.graph.node if cos.output[0] in n.input)
        gemm = next(n for n in model.graph.node if cat.output[0] in n.input)
        assert gemm.op_type == "Gemm" and types[gemm.output[0]] == fp32 and types[gemm.input[1]] == fp32
        islands = m["graphs"][name]["fp32_islands"]
        assert {"timestep sinusoid + MLP", "LayerNorm statistics", "modulate, gates, residual adds"} <= set(
            islands
        )
        assert m["graphs"][name]["fp16_flop_share"] > 0.95
    assert set(m["graphs"]["vae_decoder"]["fp32_islands"]) == {"GroupNorm"}
    assert m["graphs"]["vae_decoder"]["param_bytes"]["float16"] > 0


# --------------------------------------------------------------------------- numerics, independently of check.py


@pytest.mark.parametrize("which,limit", [("fp32", 1e-5), ("fp16", 1e-2)])
def test_dit_step_matches_torch(which, limit, fp32_dir, fp16_dir, torch_model):
    """Our own ORT run of dit_step (DDPM and DDIM rows) against the PyTorch step module."""
    folder = fp32_dir if which == "fp32" else fp16_dir
    sess = check.ort_session(folder / "dit_step.onnx")
    step = SamplerStep(torch_model, guided=True).eval()
    rng = np.random.default_rng(7)
    for sampler, steps, t, scale in (("ddpm", 250, 999, 4.0), ("ddim", 25, 480, 1.5), ("ddpm", 250, 0, 4.0)):
        sched = make_schedule(steps, sampler)
        k = int(np.argmin(np.abs(sched.timesteps - t)))
        feeds = {
            "x": rng.standard_normal((N, 4, L, L), dtype=np.float32),
            "t": np.full(N, sched.timesteps[k], dtype=np.int64),
            "y": np.array([3, 999], dtype=np.int64),
            "noise": rng.standard_normal((N, 4, L, L), dtype=np.float32),
            "guidance": np.array([scale], dtype=np.float32),
            "coef": sched.coefs[k],
            **{name: np.zeros((N, 4, L, L), dtype=np.float32) for name in STATE_NAMES},  # solver state
        }
        with torch.no_grad():
            want = step(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values())).numpy()
        got = sess.run(None, feeds)[0]
        assert rel_l2(got, want) <= limit, (sampler, t)


def test_dit_guided_eps_fp16(fp16_dir, torch_model):
    sess = check.ort_session(fp16_dir / "dit.onnx")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, 4, L, L), dtype=np.float32)
    x = np.concatenate([x, x])
    t = np.full(2 * N, 500, dtype=np.int64)
    y = np.array([1, 2, 1000, 1000], dtype=np.int64)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    (got,) = sess.run(None, {"x": x, "t": t, "y": y})
    for s in (1.5, 4.0):
        assert rel_l2(check.guided_eps(got, N, 3, 4, s), check.guided_eps(want, N, 3, 4, s)) <= 1e-2


def test_vae_fp16_psnr(fp16_dir, fp32_dir):
    """fp16 decoder vs the fp32 graph (itself ≤ 1e-5 from torch) on uint8 images: ≥ 40 dB."""
    from dit_export.images import to_uint8

    z = np.random.default_rng(5).standard_normal((N, 4, L, L), dtype=np.float32)
    (a,) = check.ort_session(fp16_dir / "vae_decoder.onnx").run(None, {"latent": z})
    (b,) = check.ort_session(fp32_dir / "vae_decoder.onnx").run(None, {"latent": z})
    assert a.dtype == np.float32 and a.shape == (N, 3, 256, 256)
    assert psnr(to_uint8(a), to_uint8(b)) >= 40.0


# --------------------------------------------------------------------------- manifest validation and inspect


def _linked_copy(src: Path, dst: Path) -> Path:
    """A folder with the same graph files (symlinks) and an editable manifest copy."""
    dst.mkdir()
    for p in src.iterdir():
        if p.name != FILENAME:
            (dst / p.name).symlink_to(p)
    shutil.copy(src / FILENAME, dst / FILENAME)
    return dst


def _edit(folder: Path, fn) -> None:
    m = json.loads((folder / FILENAME).read_text())
    fn(m)
    (folder / FILENAME).write_text(json.dumps(m))


def test_manifest_round_trip_and_errors(fp16_dir, tmp_path):
    m = Manifest.read(fp16_dir).to_dict()
    assert m == json.loads((fp16_dir / FILENAME).read_text())
    cases = [
        (lambda m: m["graphs"]["dit"].pop("sha256"), "graphs.dit.sha256"),  # fmt: skip
        (lambda m: m.__setitem__("batch", "2"), "'batch'"),
        (lambda m: m.__setitem__("schema", "dit_export.manifest/9"), "not supported"),
        (lambda m: m["graphs"]["dit_step"]["inputs"][0].__setitem__("shape", [2, 4, -1, 32]), "static graph"),
        (lambda m: m["graphs"]["vae_decoder"].__setitem__("file", "../x.onnx"), "inside the folder"),
        (lambda m: m["schedule"]["tables"]["ddim"]["10"]["coefs"].pop(), "schedule.tables.ddim.10"),
    ]
    for i, (fn, needle) in enumerate(cases):
        folder = _linked_copy(fp16_dir, tmp_path / f"m{i}")
        _edit(folder, fn)
        with pytest.raises(UserError, match=None) as e:
            Manifest.read(folder)
        assert needle in str(e.value) and "\n" not in str(e.value)
    # A changed graph file is caught by the hash check (same size, other bytes).
    folder = _linked_copy(fp16_dir, tmp_path / "hash")
    (folder / "vae_decoder.onnx").unlink()
    data = bytearray((fp16_dir / "vae_decoder.onnx").read_bytes())
    data[-1] ^= 1
    (folder / "vae_decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 of vae_decoder.onnx"):
        Manifest.read(folder).verify_hashes()
    with pytest.raises(UserError, match="no manifest.json"):
        Manifest.read(tmp_path)


def test_inspect_cli(fp32_dir, tmp_path):
    proc = run_cli("inspect", str(fp32_dir))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    out = proc.stdout
    for needle in (
        "dit:",
        "dit_step:",
        "vae_decoder:",
        "ops:",
        "tensors:",
        "params:",
        "ok   static shapes",
        "all checks passed",
    ):
        assert needle in out
    assert "FAIL" not in out
    # A manifest whose I/O no longer matches the graph fails inspect (exit 1), naming the check.
    folder = _linked_copy(fp32_dir, tmp_path / "bad")
    _edit(folder, lambda m: m["graphs"]["dit"]["outputs"][0].__setitem__("name", "eps"))
    proc = run_cli("inspect", "--no-hash", str(folder))
    assert proc.returncode == 1 and "FAIL manifest I/O" in proc.stdout
    assert_one_line_error(run_cli("inspect", str(tmp_path / "nothing")), "not a folder")


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_one_line_errors(tmp_path, fp16_dir):
    base = ["export", "--model", "S/8", "--random-weights", "--vae", "none"]
    out = tmp_path / "out"
    assert_one_line_error(run_cli(*base, "--batch", "0", "--out", str(out)), "--batch must be ≥ 1")
    assert_one_line_error(run_cli(*base, "--image-size", "200", "--out", str(out)), "multiple of 64")
    assert_one_line_error(run_cli(*base, "--opset", "21", "--out", str(out)), "17–20")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_cli(*base, "--out", str(blocker / "sub" / "out")), "cannot create folder")
    assert not out.exists() and not leftovers(tmp_path)
    # An existing export is never replaced without --force, and stays as it was.
    folder = link_copy(fp16_dir, tmp_path / "fp16")  # the shared folder is read by other workers meanwhile
    before = (folder / FILENAME).read_bytes()
    assert_one_line_error(run_cli(*base, "--out", str(folder)), "already holds an export", "--force")
    assert (folder / FILENAME).read_bytes() == before
    # A half-written folder (no manifest) is not overwritten silently either.
    half = tmp_path / "half"
    half.mkdir()
    (half / "dit.onnx").write_bytes(b"partial")
    assert_one_line_error(run_cli(*base, "--out", str(half)), "not empty")


def test_leftover_partial_folder_is_not_output(tmp_path):
    """A temp folder left by a killed export neither counts as the export nor blocks a new one."""
    (tmp_path / ".out.abc123.partial").mkdir()
    check_out_dir(tmp_path / "out", force=False)  # no error: 'out' does not exist
    with pytest.raises(UserError):
        Manifest.read(tmp_path / ".out.abc123.partial")


def test_failing_check_fails_export_and_writes_nothing(tmp_path, monkeypatch):
    """A graph outside its tolerance: exit with the measured number; --out does not appear. (The
    shipped tiny-digits model: the same exporter and check as S/8, a third of the CPU time.)"""
    monkeypatch.setitem(
        compare._TABLE, ("step", "rel_l2"), compare.Limit("step", "rel_l2", 1e-12, 1e-12, "test")
    )
    out = tmp_path / "fails"
    with pytest.raises(UserError) as e:
        export(
            ExportOptions(
                model=ModelSpec(model="tiny-digits", vae="none"),
                out=out,
                batch=1,
                precision="fp32",
                max_cache_order=None,  # the plain step fails first; no need to trace the cached pair
            ),
            log=lambda s: None,
        )
    msg = str(e.value)
    assert "dit_step.onnx failed its check" in msg and "rel_l2" in msg and "e-" in msg
    assert not out.exists() and not leftovers(tmp_path)
