"""The typed manifest and the export folder's safety rules (issues 10.4/10.5, 15.1-3/6/8/10, 16.4/16.5).

One real export (DiT-S/8, random weights, tiny random VAE, fp32, external data forced so that
dit.onnx and dit_step.onnx share one weights file) is made once per module; everything else edits
copies of its manifest or calls the export's cheap parts with the heavy ones stubbed out.
"""

from __future__ import annotations

import errno
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_user_error as assert_one_line_error
from conftest import hidden_names as hidden
from conftest import run_dit_export
from folders import s8_export_folder

from dit_export.compare import rel_l2
from dit_export.errors import UserError
from dit_export.export import exporter, graphs, manifest
from dit_export.export.check import ort_session
from dit_export.export.exporter import ExportOptions, check_out_dir, export, export_lock
from dit_export.export.manifest import FILENAME, SCHEMA, Manifest, validate_schema
from dit_export.models.checkpoints import random_dit
from dit_export.models.spec import ModelSpec
from dit_export.sampling.schedule import STATE_NAMES, state_output
from dit_export.sampling.step import SamplerStep

REPO = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(model="S/8", random_weights=True, vae="random-tiny")


run_cli = functools.partial(run_dit_export, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """S/8 fp32, batch 2, external data (1 MB threshold): the export tests/export/test_export.py
    checks too, made once per test run (read only: the tests edit copies)."""
    return s8_export_folder(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def torch_model():
    return random_dit("S/8", 256, seed=0)[0].eval()


def edited(src: Path, dst: Path, fn) -> Path:
    """A copy of an export whose manifest.json was changed by `fn(dict)` (graph files copied)."""
    shutil.copytree(src, dst)
    raw = json.loads((dst / FILENAME).read_text())
    fn(raw)
    (dst / FILENAME).write_text(json.dumps(raw))
    return dst


def expect_error(folder: Path, *needles: str, check_graphs: bool = True) -> str:
    with pytest.raises(UserError) as e:
        Manifest.read(folder, check_graphs=check_graphs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --------------------------------------------------------------------------- typed reading, copies, shared weights


def test_typed_manifest(exported):
    m = Manifest.read(exported)
    assert m.schema == SCHEMA and m.folder == exported and m.batch == 2 and m.num_classes == 1000
    assert ModelSpec.from_dict(dict(m.model.spec)) == SPEC.validate()  # the weights source as data
    assert m.model.source.startswith("random weights (seed 0")
    step = m.graph("dit_step")
    # issue 11: the multistep solvers' state follows the 6 step inputs and x_next
    assert step.input_names == ("x", "t", "y", "noise", "guidance", "coef", *STATE_NAMES)
    assert step.output_names == ("x_next", *(state_output(n) for n in STATE_NAMES))
    assert step.spec("coef").shape == (len(m.schedule.coef_names),) and step.spec("x").np_dtype == np.float32
    assert m.vae is not None and m.vae.factor == 8 and m.has_vae
    ts, coefs = m.table("ddim", 10)
    assert (
        ts.dtype == np.int64 and coefs.dtype == np.float32 and coefs.shape == (10, len(m.schedule.coef_names))
    )
    with pytest.raises(UserError, match="no stored ddim table for 7 steps"):
        m.table("ddim", 7)
    with pytest.raises(UserError, match="no graph 'unet'"):
        m.graph("unet")
    assert m.to_dict() == json.loads((exported / FILENAME).read_text())


def test_dit_graphs_share_one_weights_file(exported, torch_model):
    """dit.onnx and dit_step.onnx reference ONE external-data file; both run in ORT and match torch."""
    m = Manifest.read(exported)
    assert [e.file for e in m.graph("dit").external_data] == ["dit.onnx.data"]
    assert m.graph("dit_step").external_data == m.graph("dit").external_data
    data_files = sorted(p.name for p in exported.iterdir() if p.suffix == ".data")
    assert data_files == ["dit.onnx.data"]
    assert [r.file for r in m.files()].count("dit.onnx.data") == 1
    weights = sum(p.numel() * 4 for p in torch_model.parameters())
    assert m.graph("dit_step").file.bytes < weights / 100  # the step graph itself holds no weights
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2 * m.batch, 4, 32, 32), dtype=np.float32)  # conditional + null rows
    t, y = (
        np.full(2 * m.batch, 500, dtype=np.int64),
        np.array([7] * m.batch + [1000] * m.batch, dtype=np.int64),
    )
    (got,) = ort_session(m.path(m.graph("dit").file)).run(None, {"x": x, "t": t, "y": y})
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    assert rel_l2(got, want) <= 1e-5
    feeds = _step_feeds(m, 0)
    got = ort_session(m.path(m.graph("dit_step").file)).run(None, feeds)[0]
    with torch.no_grad():
        want = SamplerStep(torch_model, guided=True)(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert rel_l2(got, want) <= 1e-5


def _step_feeds(m: Manifest, k: int, x: np.ndarray | None = None) -> dict[str, np.ndarray]:
    ts, coefs = m.table("ddim", 10)
    rng = np.random.default_rng(k)
    shape = m.graph("dit_step").spec("x").shape
    return {
        "x": rng.standard_normal(shape, dtype=np.float32) if x is None else x,
        "t": np.full(m.batch, ts[k], dtype=np.int64),
        "y": np.full(m.batch, 3, dtype=np.int64),
        "noise": rng.standard_normal(shape, dtype=np.float32),
        "guidance": np.array([4.0], dtype=np.float32),
        "coef": coefs[k],
        **{name: np.zeros(shape, dtype=np.float32) for name in STATE_NAMES},  # unused by DDIM rows
    }


def _three_steps(m: Manifest) -> np.ndarray:
    sess = ort_session(m.path(m.graph("dit_step").file))
    x = np.random.default_rng(9).standard_normal(m.graph("dit_step").spec("x").shape, dtype=np.float32)
    for k in range(3):
        x = sess.run(None, _step_feeds(m, k, x))[0]
    (img,) = ort_session(m.path(m.graph("vae_decoder").file)).run(None, {"latent": x / m.vae.scaling_factor})
    return img


def test_copied_and_moved_folder_loads_samples_and_verifies(exported, tmp_path):
    """Every path is relative to the folder: a copy elsewhere (then moved again) is a whole export."""
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(exported, copy)
    m = Manifest.read(copy)
    assert m.folder == copy and all(m.path(r).parent == copy for r in m.files())
    m.verify_hashes()
    want = _three_steps(Manifest.read(exported))
    moved = tmp_path / "moved"
    shutil.move(str(copy), str(moved))
    m = Manifest.read(moved)
    m.verify_hashes()
    assert np.array_equal(_three_steps(m), want)


# --------------------------------------------------------------------------- refused manifests


@pytest.mark.parametrize(
    "name", ["../../x", "/etc/passwd", "sub/../../x", "a//b", "..\\x.onnx", "C:x.onnx", ".hidden", "sub/.x"]
)
@pytest.mark.parametrize("where", ["file", "external"])
def test_paths_outside_the_folder_are_refused(exported, tmp_path, monkeypatch, name, where):
    """'../../x' or an absolute path: one line, before anything is opened or hashed."""
    (tmp_path / "x").write_bytes(b"secret")

    def edit(m: dict) -> None:
        g = m["graphs"]["dit"]
        (g if where == "file" else g["external_data"][0])["file"] = name

    folder = edited(exported, tmp_path / "root" / "m", edit)

    def no_hash(path, *a, **k):
        raise AssertionError(f"hashed {path}")

    for module in (manifest.disk, manifest.records):  # every place the manifest package hashes
        monkeypatch.setattr(module, "sha256_file", no_hash)
    expect_error(folder, "must be a relative path inside the folder", check_graphs=False)
    expect_error(
        folder, "must be a relative path inside the folder"
    )  # also with the ONNX I/O check: refused before any file is opened


def test_older_and_newer_schema(exported, tmp_path):
    old = edited(exported, tmp_path / "old", lambda m: m.__setitem__("schema", "dit_export.manifest/1"))
    expect_error(old, "exported by an older dit_export", "re-export")
    new = edited(exported, tmp_path / "new", lambda m: m.__setitem__("schema", "dit_export.manifest/99"))
    expect_error(new, "not supported")


def _set_coef(m: dict) -> None:
    m["schedule"]["tables"]["ddim"]["10"]["coefs"][3][1] = 12345.5


@pytest.mark.parametrize(
    "edit,needles",
    [
        (lambda m: m.__setitem__("batch", 3), ("graphs.dit", "batch 3")),
        (lambda m: m["model"]["config"].__setitem__("num_classes", 10), ("null_class", "10 classes")),
        (lambda m: m.__setitem__("latent_size", 16), ("latent",)),
        (lambda m: m.__setitem__("image_size", 512), ("image_size",)),
        (
            lambda m: m["schedule"]["tables"]["ddim"]["10"]["timesteps"].__setitem__(0, 1000),
            ("leaves 0..999",),
        ),
        (lambda m: m["schedule"]["tables"]["ddpm"]["25"]["timesteps"].__setitem__(5, -1), ("leaves 0..999",)),
        (lambda m: m["vae"].__setitem__("scaling_factor", 0), ("vae.scaling_factor",)),
        (lambda m: m.__setitem__("vae", None), ("'vae'", "graphs.vae_decoder")),
        (lambda m: m["graphs"]["dit_step"]["inputs"][5].__setitem__("shape", [9]), ("coef",)),
        (
            lambda m: m["graphs"]["dit"]["inputs"][0].__setitem__("dtype", "float64"),
            ("graphs.dit.inputs[0].dtype",),
        ),
        (lambda m: m["graphs"]["dit"]["inputs"][0].__setitem__("extra", 1), ("graphs.dit.inputs[0].extra",)),
        (lambda m: m["graphs"].__setitem__("unet", None), ("graphs.unet",)),
        (lambda m: m["model"].pop("spec"), ("model.spec",)),
        (lambda m: m["model"].__setitem__("flavor", "mine"), ("model.flavor",)),
        (lambda m: m["graphs"]["dit"].__setitem__("sha256", "z" * 64), ("graphs.dit.sha256",)),
    ],
)
def test_manifest_contradictions_are_one_line(exported, tmp_path, edit, needles):
    expect_error(edited(exported, tmp_path / "m", edit), *needles, check_graphs=False)


def test_non_finite_coefficient(exported, tmp_path):
    folder = edited(exported, tmp_path / "m", _set_coef)
    text = (folder / FILENAME).read_text()
    (folder / FILENAME).write_text(text.replace("12345.5", "1e400", 1))  # parses as inf
    expect_error(folder, "schedule.tables.ddim.10", check_graphs=False)


def test_graph_io_checked_against_the_onnx_file(exported, tmp_path):
    """Names/shapes the manifest claims but the graph file does not have: caught on load."""
    renamed = edited(
        exported, tmp_path / "renamed", lambda m: m["graphs"]["dit"]["inputs"][0].__setitem__("name", "z")
    )
    expect_error(renamed, "disagrees with dit.onnx")
    Manifest.read(renamed, check_graphs=False)  # without onnx (the ORT runtime) only the manifest's own rules
    garbage = edited(exported, tmp_path / "garbage", lambda m: None)
    (garbage / "vae_decoder.onnx").write_bytes(b"not a protobuf at all" * 10)
    expect_error(garbage, "vae_decoder.onnx is not a readable ONNX file")


def test_schema_file_and_validator(exported):
    raw = json.loads((exported / FILENAME).read_text())
    schema = json.loads(manifest.SCHEMA_FILE.read_text())
    assert schema["title"] == SCHEMA
    validate_schema(raw)
    raw["graphs"]["dit"]["inputs"][0]["shape"][0] = "2"
    with pytest.raises(UserError, match=r"field 'graphs.dit.inputs\[0\].shape\[0\]' should be int, got str$"):
        validate_schema(raw)
    # 2.0: an integer in JSON Schema (and so for fastjsonschema); both readers accept it and type it as 2
    raw = json.loads((exported / FILENAME).read_text())
    raw["batch"] = float(raw["batch"])
    validate_schema(raw)
    m = Manifest.from_dict(raw, exported)
    assert type(m.batch) is int and m.batch == 2


def test_jsonschema_agrees_with_fastjsonschema(exported):
    """The reference implementation (when installed) accepts the real manifest and refuses a bad one."""
    jsonschema = pytest.importorskip("jsonschema")
    raw = json.loads((exported / FILENAME).read_text())
    jsonschema.Draft202012Validator(manifest.schema()).validate(raw)
    raw["batch"] = "2"
    assert not jsonschema.Draft202012Validator(manifest.schema()).is_valid(raw)


def test_manifest_is_written_once(exported, tmp_path):
    m = Manifest.read(exported)
    with pytest.raises(UserError, match="written once"):
        m.write(exported)
    folder = tmp_path / "fresh"
    shutil.copytree(exported, folder)
    (folder / FILENAME).unlink()
    m.write(folder)
    assert Manifest.read(folder) == m


# --------------------------------------------------------------------------- the output folder


def test_force_never_replaces_what_we_did_not_write(exported, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    proc = run_cli(
        "export", "--model", "S/8", "--random-weights", "--vae", "none", "--force", "--out", str(mine)
    )
    assert_one_line_error(proc, "not a dit_export export", "even with --force")
    assert (mine / "thesis.tex").read_text() == "years of work"
    other = tmp_path / "webapp"  # someone else's manifest.json does not make a folder ours
    other.mkdir()
    (other / FILENAME).write_text('{"name": "my web app", "version": 3}')
    with pytest.raises(UserError, match="not a dit_export export"):
        check_out_dir(other, force=True)
    ours = tmp_path / "ours"
    shutil.copytree(exported, ours)
    check_out_dir(ours, force=True)  # an export (with engine artifacts) may be replaced
    (ours / "plans").mkdir()
    (ours / "plans" / "dit_step.trt10.13.sm90.plan").write_bytes(b"x")
    check_out_dir(ours, force=True)
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"did not write \(notes.txt\)"):
        check_out_dir(ours, force=True)


def test_second_export_of_a_folder_fails_at_once(tmp_path):
    out = tmp_path / "out"
    with export_lock(out):
        proc = run_cli("export", "--model", "S/8", "--random-weights", "--vae", "none", "--out", str(out))
    assert_one_line_error(proc, "another export of", "is running")
    assert not out.exists() and hidden(tmp_path) == []  # the lock file goes with the lock


def _stub_tracing(monkeypatch, save):
    """Export without tracing: the pipeline's file handling, on a stubbed graph writer."""
    monkeypatch.setattr(exporter.graphs, "trace", lambda *a, **k: object())
    monkeypatch.setattr(exporter.graphs, "cleanup", lambda model: None)
    monkeypatch.setattr(exporter.graphs, "save", save)


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """ENOSPC while writing a graph: one line, no output, no staging folder; a stale one is cleaned."""
    stale = tmp_path / ".out.k1ll3d.partial"
    stale.mkdir()
    (stale / "dit.onnx").write_bytes(b"half")

    def full(model, path, threshold=None, shared=None):
        Path(path).write_bytes(b"some")
        raise OSError(errno.ENOSPC, "No space left on device")

    _stub_tracing(monkeypatch, full)
    opts = ExportOptions(
        model=ModelSpec(model="S/8", random_weights=True, vae="none"), out=tmp_path / "out", check=False
    )
    with pytest.raises(UserError) as e:
        export(opts, log=lambda s: None)
    assert "no space left on the device" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and hidden(tmp_path) == []


def test_manifest_write_failure_is_one_line(exported, tmp_path, monkeypatch):
    m = Manifest.read(exported)
    folder = tmp_path / "f"
    shutil.copytree(exported, folder)
    (folder / FILENAME).unlink()

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match="no space left on the device"):
        m.write(folder)
    assert not (folder / FILENAME).exists() and not list(folder.glob(".*"))


def test_cheap_checks_come_before_the_model_is_built(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the DiT was built before a cheap check failed")

    monkeypatch.setattr(ModelSpec, "load_dit", boom)
    for spec, kw, needle in (
        (ModelSpec(model="S/8", random_weights=True, vae=str(tmp_path / "no-vae")), {}, "--vae"),
        (ModelSpec(model="S/8", random_weights=True, vae="none"), {"opset": 99}, "--opset"),
        (ModelSpec(model="S/8", random_weights=True, vae="none"), {"batch": 0}, "--batch"),
        (ModelSpec(model="S/8", random_weights=True, vae="none", image_size=0), {}, "--image-size"),
    ):
        with pytest.raises(UserError, match=needle):
            export(ExportOptions(model=spec, out=tmp_path / "out", **kw), log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_inspect_a_file_that_is_not_onnx(tmp_path, exported):
    junk = tmp_path / "notes.onnx"
    junk.write_text("hello")
    assert_one_line_error(run_cli("inspect", str(junk)), "is not an ONNX model")
    proc = run_cli("inspect", str(exported / "dit_step.onnx"))
    assert proc.returncode == 0 and "dit_step: dit_step.onnx" in proc.stdout, proc.stdout + proc.stderr


def test_graph_save_shares_by_content(tmp_path):
    """SharedWeights: the second graph points at the first one's tensors and appends only new ones."""
    import onnx_ir as ir

    def tiny(w: np.ndarray, extra: np.ndarray | None = None) -> ir.Model:
        x = ir.Value(name="x", shape=ir.Shape([512]), type=ir.TensorType(ir.DataType.FLOAT))
        inits, nodes, value = [], [], x
        for i, arr in enumerate([w] + ([extra] if extra is not None else [])):
            c = ir.Value(
                name=f"w{i}", const_value=ir.tensor(arr, name=f"w{i}"), shape=ir.Shape([512]), type=x.type
            )
            node = ir.Node("", "Add", [value, c], num_outputs=1)
            node.outputs[0].name, node.outputs[0].shape, node.outputs[0].type = (
                f"y{i}",
                ir.Shape([512]),
                x.type,
            )
            inits.append(c)
            nodes.append(node)
            value = node.outputs[0]
        g = ir.Graph([x], [value], nodes=nodes, initializers=inits, opset_imports={"": 18}, name="tiny")
        return ir.Model(g, ir_version=10)

    w, extra = np.arange(512, dtype=np.float32), np.full(512, 2.0, dtype=np.float32)
    shared = graphs.SharedWeights("w.data")
    graphs.save(tiny(w), tmp_path / "a.onnx", threshold=0, shared=shared)
    size_a = (tmp_path / "w.data").stat().st_size
    graphs.save(tiny(w.copy(), extra), tmp_path / "b.onnx", threshold=0, shared=shared)
    assert (tmp_path / "w.data").stat().st_size == size_a + extra.nbytes  # w stored once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "w.data"]
    ones = np.ones(512, dtype=np.float32)
    (a,) = ort_session(tmp_path / "a.onnx").run(None, {"x": ones})
    (b,) = ort_session(tmp_path / "b.onnx").run(None, {"x": ones})
    assert np.array_equal(a, ones + w) and np.array_equal(b, ones + w + extra)
    assert (
        onnx.load(str(tmp_path / "b.onnx"), load_external_data=False).graph.initializer[0].data_location == 1
    )


# --------------------------------------------------------------------------- the shared corpus of bad manifests

CORPUS = REPO / "tests" / "data" / "bad_manifests"  # also run by cpp/tests/test_manifest.cpp


def json_patch(doc: object, ops: list[dict]) -> object:
    """RFC 6902 add / remove / replace (what the corpus uses; C++ applies it with nlohmann::json::patch)."""
    doc = json.loads(json.dumps(doc))
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = doc
        for p in parents:
            target = target[int(p) if isinstance(target, list) else p]
        key = int(last) if isinstance(target, list) else last
        if op["op"] == "remove":
            del target[key]
        elif op["op"] == "add" and isinstance(target, list):
            target.insert(key, op["value"])
        else:
            target[key] = op["value"]
    return doc


def _corpus() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*.json") if p.name != "base.json")


def test_corpus_base_is_valid():
    m = Manifest.from_dict(json.loads((CORPUS / "base.json").read_text()), CORPUS)
    assert m.batch == 2 and m.graph("dit_step").input_names[-3:] == STATE_NAMES


@pytest.mark.parametrize("case", _corpus(), ids=lambda p: p.stem)
def test_bad_manifest_corpus(case):
    """Every case of tests/data/bad_manifests/: refused with its one line (or accepted, error null)."""
    spec = json.loads(case.read_text())
    raw = json_patch(json.loads((CORPUS / "base.json").read_text()), spec["patch"])
    if spec.get("error", "") is None:
        Manifest.from_dict(raw, CORPUS)
        return
    with pytest.raises(UserError) as e:
        Manifest.from_dict(raw, CORPUS)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{CORPUS / FILENAME}: "), msg
    text = msg.removeprefix(f"{CORPUS / FILENAME}: ")
    if "error" in spec:
        assert text == spec["error"]
    for needle in spec.get("needles", ()):
        assert needle in text, text


def test_one_dtype_table_agrees_with_onnx_numpy_and_the_schema():
    """dtypes.TABLE against ONNX's own element types and numpy's sizes; the schema's I/O enum is DTYPES."""
    from onnx import helper

    from dit_export.export.manifest import dtypes

    for d in dtypes.TABLE:
        np_dtype = helper.tensor_dtype_to_np_dtype(d.onnx)
        assert np_dtype.itemsize == d.itemsize, d
        if d.name not in ("bfloat16", "float8e4m3fn"):  # numpy has neither (onnx maps them to stand-ins)
            assert np.dtype(d.name) == np_dtype, d
    tensor = manifest.schema()["$defs"]["tensor"]["properties"]["dtype"]["enum"]
    assert tuple(tensor) == dtypes.DTYPES
    assert dtypes.names_by("ort")["tensor(float)"] == "float32" and dtypes.to("tensorrt")["float16"] == "HALF"
