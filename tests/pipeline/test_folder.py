"""The export-folder object (`runtime.folder.ExportFolder`): one read, one reuse rule, one `auto` rule.

Everything runs on the shared S/8 fp32 folder made by `build --backend onnxruntime`. TensorRT
cannot run here: the `auto` cases that need a TensorRT machine set `trt_api.probe` and
`Target.current` to one (the plan records are real files; the rule only reads them).
"""

from __future__ import annotations

import dataclasses

import pytest
from folders import link_copy, s8_folder

from dit_export.engine import trt_api
from dit_export.engine.plans import Target, expected_record, plan_path
from dit_export.engine.records import file_fields, graph_source, write_record
from dit_export.errors import UserError
from dit_export.export.manifest import Manifest
from dit_export.models.spec import ModelSpec
from dit_export.pipeline import BuildConfig, build, export_request
from dit_export.runtime import folder as folders
from dit_export.runtime.folder import SIDECARS, ExportFolder, choose_backend
from dit_export.runtime.sampler import Sampler
from dit_export.sampling.cache import CACHE_GRAPHS

S8 = ModelSpec(model="S/8", random_weights=True, vae="random-tiny")
H100 = Target("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return s8_folder(tmp_path_factory, "fp32")


@pytest.fixture
def reads(monkeypatch):
    """How often manifest.json is read (the real reader runs; the calls are counted)."""
    calls: list[str] = []
    real = Manifest.read.__func__

    def counted(cls, folder, **kw):
        calls.append(str(folder))
        return real(cls, folder, **kw)

    monkeypatch.setattr(Manifest, "read", classmethod(counted))
    return calls


def fake_plan(folder, graph: str, target: Target = H100, onnx_sha256: str | None = None):
    """A plan file and its record as `build_plans` writes them (the bytes are no engine)."""
    m = Manifest.read(folder, check_graphs=False)
    path = plan_path(folder, graph, target)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"not an engine")
    rec = expected_record(graph_source(m, graph), m.precision, target, trt_api.BuildOptions().to_dict())
    rec.update(file_fields(folder, path))
    if onnx_sha256:
        rec["onnx_sha256"] = onnx_sha256
    write_record(path, rec)
    return path


def test_one_build_reads_the_manifest_once(fp32, tmp_path, reads):
    """A build that reuses the export (export check, plans decision, verify with two samplers per
    phase) reads manifest.json once; it read it five times and more before the folder object."""
    folder = link_copy(fp32, tmp_path / "f")
    cfg = BuildConfig(model=S8, out=folder, batch=2, precision="fp32", backend="ort", verify_steps=1)
    result = build(cfg, log=lambda s: None)
    assert result.passed and result.rows[0].result == "reused"
    assert reads == [str(folder)]


def test_sampler_takes_the_folder_object(fp32, reads):
    export = ExportFolder.open(fp32)
    with Sampler.load(export, "ort") as s:
        assert s.manifest is export.manifest
    with Sampler.load(fp32, "onnxruntime") as s:  # a path: its own folder object, one more read
        assert s.has_vae
    assert reads == [str(fp32)] * 2


def test_sidecars_are_read_once_and_new_ones_plug_in(fp32, monkeypatch):
    seen = []

    def read_schedules(path):
        seen.append(path)
        return {"tables": 1}

    monkeypatch.setitem(SIDECARS, "schedules", read_schedules)
    export = ExportFolder(fp32)
    assert export.sidecar("schedules") == {"tables": 1} == export.sidecar("schedules")
    assert seen == [fp32]
    assert export.build_record["request"]["precision"] == "fp32" and export.plans == {}
    with pytest.raises(KeyError, match="no sidecar"):
        export.sidecar("nonsense")


def test_reuse_rule_is_the_folder_s(fp32, tmp_path):
    cfg = BuildConfig(model=S8, batch=2, precision="fp32")
    assert ExportFolder(fp32).why_stale(export_request(cfg), force=False) is None
    changed = export_request(dataclasses.replace(cfg, batch=4))
    assert ExportFolder(fp32).why_stale(changed, force=False) == "changed: batch"
    empty = tmp_path / "empty"
    assert ExportFolder(empty).why_stale(changed, force=False) == "no export yet"
    hand = link_copy(fp32, tmp_path / "hand")
    (hand / folders.BUILD_RECORD).unlink()  # an export made with `export`, not `build`
    with pytest.raises(UserError, match="did not make"):
        ExportFolder(hand).why_stale(changed, force=False)
    assert ExportFolder(hand).why_stale(changed, force=True) == "--force on an export made by `export`"


def test_bench_reuses_a_folder_with_more_cache_than_it_times(fp32):
    """The shared folder has cache graphs of order 2: `build` wants the very order, `bench`
    (more_cache_ok) takes it for no cache or any order up to 2, not for 3 or another change."""
    cfg = BuildConfig(model=S8, batch=2, precision="fp32")
    folder = ExportFolder(fp32)
    for order, build_why in ((None, "changed: max_cache_order"), (0, "changed: max_cache_order"), (2, None)):
        request = export_request(dataclasses.replace(cfg, max_cache_order=order))
        assert folder.why_stale(request, force=False) == build_why
        assert folder.why_stale(request, force=False, more_cache_ok=True) is None
    more = export_request(dataclasses.replace(cfg, max_cache_order=3))
    assert folder.why_stale(more, force=False, more_cache_ok=True) == "changed: max_cache_order"
    other = export_request(dataclasses.replace(cfg, max_cache_order=None, batch=4))
    assert folder.why_stale(other, force=False, more_cache_ok=True) == "changed: batch, max_cache_order"


# ------------------------------------------------------------------------------ the `auto` rule


def test_auto_on_a_folder_without_plans_is_onnxruntime(fp32):
    backend, why = ExportFolder(fp32).choose_backend("auto")
    assert backend == "ort" and "holds no TensorRT plans" in why
    assert ExportFolder(fp32).choose_backend("auto", elsewhere=True)[0] == "ort"
    assert ExportFolder(fp32).choose_backend("pytorch")[0] == "torch"
    with pytest.raises(
        UserError, match="unknown backend 'torch' for this command: it takes trt, ort or auto"
    ):
        ExportFolder(fp32).choose_backend("torch", allowed=("trt", "ort"))


def test_auto_with_plans_follows_the_one_rule(fp32, tmp_path, monkeypatch):
    folder = link_copy(fp32, tmp_path / "f")
    fake_plan(folder, "dit_step")
    # on another machine (triton-repo): plans of every graph it runs, any GPU
    backend, why = ExportFolder(folder).choose_backend("auto", elsewhere=True)
    assert backend == "ort" and "vae_decoder" in why
    fake_plan(folder, "vae_decoder")
    # the forecast cache's step graphs (exported by default) are graphs it runs too
    backend, why = ExportFolder(folder).choose_backend("auto", elsewhere=True)
    assert backend == "ort" and "dit_step_full, dit_step_forecast" in why
    for graph in CACHE_GRAPHS:
        fake_plan(folder, graph)
    assert ExportFolder(folder).choose_backend("auto", elsewhere=True)[0] == "trt"
    # here, without a working TensorRT: ONNX Runtime, saying why
    ok, reason = trt_api.probe()
    if not ok:
        backend, why = ExportFolder(folder).choose_backend("auto")
        assert backend == "ort" and reason in why
    # here, on a TensorRT machine (simulated: TensorRT cannot run on this one)
    monkeypatch.setattr(trt_api, "probe", lambda: (True, "TensorRT 10.13.0.35 and an H100 found"))
    monkeypatch.setattr(Target, "current", staticmethod(lambda: H100))
    assert ExportFolder(folder).choose_backend("auto")[0] == "trt"
    other = Target("10.13.0.35", "NVIDIA L4", "8.9")
    monkeypatch.setattr(Target, "current", staticmethod(lambda: other))
    backend, why = ExportFolder(folder).choose_backend("auto")
    assert backend == "ort" and "no dit_step engine for" in why  # a plan for another GPU: missing here
    monkeypatch.setattr(Target, "current", staticmethod(lambda: H100))
    fake_plan(folder, "vae_decoder", onnx_sha256="0" * 64)  # stale: no fallback, the load names the rebuild
    assert ExportFolder(folder).choose_backend("auto")[0] == "trt"
    with pytest.raises(UserError, match="rebuild with"):
        ExportFolder(folder).plan("vae_decoder", H100)
    # building: TensorRT whenever it works here (the plans are made next)
    assert choose_backend("auto", allowed=("ort", "trt"))[0] == "trt"
