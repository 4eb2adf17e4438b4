"""The forecast step cache in the runtime: ONNX Runtime and torch against the cached reference loop,
interval 1 bit-identical to the uncached sampler, the graph picked per step, one-line errors.

Runs on the shared S/8 folder (`build` writes dit_step_full / dit_step_forecast by default, cache
slots for orders ≤ 2); the folder without forecast graphs is a copy whose manifest drops them (what
an export from before the cache, or with --max-cache-order none, has).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from folders import assert_one_line_error, link_copy, rehash, run_cli, s8_folder
from test_runtime import fp32, ort32, torch32  # noqa: F401  (shared fixtures: the S/8 build and its samplers)

from dit_export.compare import rel_l2
from dit_export.errors import UserError
from dit_export.runtime import Sampler
from dit_export.sampling import cache
from dit_export.sampling.request import DEFAULT_CACHE_ORDER, SampleRequest

LABELS = [207, 360, 387]  # 3 images on a batch-2 export: two chunks (the cache restarts per chunk)
TOL = 1e-5  # the runtime tests' fp32 tolerance (tests/runtime/test_runtime.py)
# (sampler, cfg, interval, order, steps): 7 steps at N = 3 run full steps 0, 1, 4, so the forecasts
# at 5 and 6 use three nodes (order 2); dpm++2m carries solver state through forecast steps.
CASES = [("ddim", 4.0, 3, 2, 7), ("dpm++2m", 1.0, 2, 1, 6), ("dpm++2m", 4.0, 3, 0, 7)]


@pytest.fixture(scope="module")
def ort(ort32):
    return ort32


@pytest.fixture(scope="module")
def torch_rt(torch32):
    return torch32


@pytest.fixture(scope="module")
def reference():
    """The cached reference loop's latents per case (and uncached), computed once."""
    from dit_export.models.checkpoints import random_dit
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    model, _ = random_dit("S/8", 256, seed=0)  # the weights of the shared folder

    def run(sampler, cfg, interval, order, steps):
        noise = make_noise("philox", 1, len(LABELS), (4, 32, 32), guided=cfg > 1.0)
        return sample_latents(model, LABELS, noise, steps=steps, sampler=sampler, cfg_scale=cfg,
                              progress=False, cache_interval=interval, cache_order=order).numpy()  # fmt: skip

    return {c: (run(*c), run(c[0], c[1], 1, c[3], c[4])) for c in CASES}


def request(case, **kw) -> SampleRequest:
    sampler, cfg, interval, order, steps = case
    return SampleRequest(tuple(LABELS), seed=1, cfg_scale=cfg, steps=steps, sampler=sampler,
                         cache_interval=interval, cache_order=order, **kw)  # fmt: skip


# ------------------------------------------------------------------------------ the request


def test_request_fields_round_trip_and_validate():
    r = SampleRequest((1, 2))
    assert (r.cache_interval, r.cache_order, r.cached) == (1, DEFAULT_CACHE_ORDER, False)
    assert DEFAULT_CACHE_ORDER == cache.DEFAULT_ORDER  # request.py restates it without numpy
    c = SampleRequest((1, 2), cache_interval=np.int64(3), cache_order=0).validate()
    assert c.cached and type(c.cache_interval) is int and SampleRequest.from_dict(c.to_dict()) == c
    for kw, needle in [
        (dict(cache_interval=0), "cache interval 0: an integer ≥ 1"),
        (dict(cache_interval=2.0), "cache interval must be an integer"),
        (dict(cache_interval=True), "cache interval must be an integer"),
        (dict(cache_interval=2, cache_order=4), "cache order 4: an integer 0..3"),
        (dict(cache_order=-1), "cache order -1"),
    ]:
        with pytest.raises(UserError, match=needle):
            SampleRequest((1,), **kw).validate()


# ------------------------------------------------------------------------------ against the reference


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-N{c[2]}-O{c[3]}")
def test_backends_match_the_cached_reference_loop(ort, torch_rt, reference, case):
    ref, uncached = reference[case]
    # What caching changes (random S/8 weights: little, 2e-5..1e-4 of the latents): the test must see it.
    effect = rel_l2(ref, uncached)
    assert effect > TOL, effect
    for s in (ort, torch_rt):
        got = s.generate(request(case), decode=False).latents
        assert rel_l2(got, ref) < TOL, (s.backend.name, rel_l2(got, ref))
        # the cache's own effect is reproduced, not only the latents (which it changes only a little)
        assert rel_l2(got - uncached, ref - uncached) < 5e-2, (s.backend.name, case)


def test_each_step_runs_the_graph_of_the_plan(fp32, ort, monkeypatch):
    """Per chunk, the loop runs plan.graph(k) at step k with the cache swapped after full steps."""
    assert (fp32 / "dit_step_full.onnx").is_file(), "the shared S/8 build has no forecast graphs"
    case = CASES[0]
    seen: list[tuple[str, int, int | None]] = []
    real = type(ort.backend).run

    def spy(self, graph, bindings):
        out = bindings.get(cache.CACHE_OUTPUT)
        seen.append((graph, id(bindings[cache.CACHE_INPUT]), None if out is None else id(out)))
        real(self, graph, bindings)

    monkeypatch.setattr(type(ort.backend), "run", spy)
    ort.generate(request(case), decode=False)
    plan = cache.cache_plan(case[4], case[2], case[3], 3)
    per_chunk = [plan.graph(k) for k in range(plan.steps)]
    assert [g for g, _, _ in seen] == per_chunk * 2
    cur = seen[0][1]
    for (_graph, got_in, got_out), full in zip(seen[: plan.steps], plan.full, strict=True):
        assert got_in == cur and (got_out is not None) == bool(full)
        if full:
            assert got_out != got_in
            cur = got_out


def test_interval_1_is_the_uncached_sampler_bit_for_bit(fp32, ort, torch_rt):
    for s, backend in ((ort, "ort"), (torch_rt, "torch")):
        req = SampleRequest(
            tuple(LABELS), seed=4, steps=3, sampler="dpm++2m", cache_interval=1, cache_order=3
        )
        got = s.generate(req, decode=False).latents
        with Sampler.load(fp32, backend=backend, cache=False) as plain:
            assert not plain.backend.has_graph(cache.FULL_GRAPH)
            want = plain.generate(
                SampleRequest(tuple(LABELS), seed=4, steps=3, sampler="dpm++2m"), decode=False
            )
        np.testing.assert_array_equal(got, want.latents)


# ------------------------------------------------------------------------------ the fp16 cache


@pytest.fixture(scope="module")
def fp16(tmp_path_factory):
    """The shared S/8 mixed-fp16 build: its cache is float16 (precision.cache_dtype)."""
    return s8_folder(tmp_path_factory, "fp16")


@pytest.fixture(scope="module")
def fp16_fp32_cache(fp16, tmp_path_factory):
    """The same mixed-fp16 export with an fp32 cache, made cheaply from it: the cached graphs cast
    the cache to fp32 right after reading it and back just before writing it (models/cached.py),
    so retyping the cache I/O to float32 (the read Casts become identities, the write Cast
    float32) gives exactly what `ExportOptions(cache_dtype="float32")` exports. Checked: on this
    S/8 and on tiny-digits the retyped graphs sample bit-identical latents to that real export
    (ddim-20, N = 3, O = 2 and 3; benchmarks/results/fp16_cache.md)."""
    import onnx

    dst = link_copy(fp16, tmp_path_factory.mktemp("fp16c32") / "s8")
    m = json.loads((dst / "manifest.json").read_text())
    io = (cache.CACHE_INPUT, cache.CACHE_OUTPUT)
    for g in cache.CACHE_GRAPHS:
        f = dst / f"{g}.onnx"
        model = onnx.load(str(f), load_external_data=False)
        for v in [*model.graph.input, *model.graph.output]:
            if v.name in io:
                assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
                v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        (write,) = [n for n in model.graph.node if cache.CACHE_OUTPUT in n.output] or [None]
        if write is not None:
            assert write.op_type == "Cast" and write.attribute[0].i == onnx.TensorProto.FLOAT16
            write.attribute[0].i = onnx.TensorProto.FLOAT
        del model.graph.value_info[:]
        f.unlink()  # a new file: the hard-linked shared folder stays intact
        onnx.save(model, str(f))
        for t in m["graphs"][g]["inputs"] + m["graphs"][g]["outputs"]:
            if t["name"] in io:
                t["dtype"] = "float32"
    m["cache"]["dtype"], m["cache"]["bytes_per_image"] = "float32", 2 * m["cache"]["bytes_per_image"]
    (dst / "manifest.json").write_text(json.dumps(m, indent=1))
    for g in cache.CACHE_GRAPHS:
        rehash(dst, g)
    return dst


def test_fp16_cache_agrees_with_an_fp32_cache(fp16, fp16_fp32_cache, reference):
    """ONNX Runtime, mixed fp16: sampling with the float16 cache against the same export with an fp32
    cache, beside the fp16 graphs' own difference from fp32 (measured: benchmarks/results/fp16_cache.md)."""
    case = CASES[0]  # ddim, N = 3, O = 2
    with (
        Sampler.load(fp16, backend="ort", cache=True) as s16,
        Sampler.load(fp16_fp32_cache, backend="ort") as s32,
    ):
        assert s16.cache_layout.dtype == np.float16 and s32.cache_layout.dtype == np.float32
        assert s16.cache_layout.nbytes * 2 == s32.cache_layout.nbytes
        half = s16.generate(request(case), decode=False).latents
        full = s32.generate(request(case), decode=False).latents
        plain = s16.generate(request(case[:2] + (1,) + case[3:]), decode=False).latents
        # order 0 reuses D_0, the branch outputs as they left their fp16 region: stored exactly
        reuse = CASES[2]
        np.testing.assert_array_equal(
            s16.generate(request(reuse), decode=False).latents,
            s32.generate(request(reuse), decode=False).latents,
        )
    ref, uncached = reference[case]
    # measured (ORT CPU): storage 1.3e-7, the fp16 graphs vs the fp32 reference loop 1.7e-5, the
    # cache's effect 9.5e-5 of which the fp16 run reproduces all but 0.7 %
    storage, graphs = rel_l2(half, full), rel_l2(full, ref)
    assert np.isfinite(half).all() and 0 < storage < 1e-5, storage
    assert storage < graphs, (storage, graphs)  # the cache's dtype matters less than the fp16 graphs
    assert rel_l2(half - plain, ref - uncached) < 5e-2, rel_l2(half - plain, ref - uncached)


def test_fp16_cache_interval_1_is_the_uncached_sampler_bit_for_bit(fp16):
    with (
        Sampler.load(fp16, backend="ort", cache=True) as s,
        Sampler.load(fp16, backend="ort", cache=False) as plain,
    ):
        req = SampleRequest(
            tuple(LABELS), seed=4, steps=3, sampler="dpm++2m", cache_interval=1, cache_order=2
        )
        np.testing.assert_array_equal(
            s.generate(req, decode=False).latents,
            plain.generate(
                SampleRequest(tuple(LABELS), seed=4, steps=3, sampler="dpm++2m"), decode=False
            ).latents,
        )


def test_torch_backend_runs_the_fp16_folders_cache(fp16, torch_rt, reference):
    """The torch backend computes in fp32 on the folder's float16 cache buffers: the cache's storage
    alone (S/8: the same weights as the fp32 reference loop)."""
    case = CASES[0]
    with Sampler.load(fp16, backend="torch") as s:
        got = s.generate(request(case), decode=False).latents
        assert s.cache_layout.dtype == np.float16
    ref, uncached = reference[case]
    assert 0 < rel_l2(got, ref) < 1e-5, rel_l2(got, ref)  # measured: the storage alone, 2.8e-7
    assert rel_l2(got - uncached, ref - uncached) < 5e-2


def test_cached_graphs_load_on_the_first_cached_request(fp32):
    """ort/torch add the cached graphs when a cached request comes (no memory for them before)."""
    with Sampler.load(fp32, backend="ort") as s:
        short = SampleRequest((1,), steps=2, sampler="ddim")
        s.generate(short, decode=False)
        assert not s.backend.has_graph(cache.FULL_GRAPH)
        s.generate(SampleRequest((1,), steps=3, sampler="ddim", cache_interval=2), decode=False)
        assert all(s.backend.has_graph(g) for g in cache.CACHE_GRAPHS)
    with Sampler.load(fp32, backend="ort", cache=True) as s:
        assert all(s.backend.has_graph(g) for g in cache.CACHE_GRAPHS)


def test_generate_many_packs_only_equal_cache_settings(ort):
    a = SampleRequest((1, 2, 3), seed=2, steps=4, sampler="ddim")
    b = SampleRequest((4,), seed=3, steps=4, sampler="ddim", cache_interval=2, cache_order=1)
    c = SampleRequest((5,), seed=3, steps=4, sampler="ddim", cache_interval=2, cache_order=0)
    many = ort.generate_many([a, b, c], decode=False)
    for r, got in zip((a, b, c), many, strict=True):
        np.testing.assert_array_equal(got.latents, ort.generate(r, decode=False).latents)
    # the orders give different images: packing b with c would have been wrong
    other = ort.generate(
        SampleRequest((4,), seed=3, steps=4, sampler="ddim", cache_interval=2, cache_order=0)
    )
    assert not np.array_equal(many[1].latents, other.latents)


# ------------------------------------------------------------------------------ one-line errors


def test_order_above_the_exports_is_one_line(ort):
    with pytest.raises(UserError, match=r"hold order ≤ 2 \(re-export with --max-cache-order 3\)"):
        ort.generate(request(("ddim", 4.0, 3, 3, 7)), decode=False)
    ort.generate(request(("ddim", 4.0, 1, 3, 2)), decode=False)  # order is unused at interval 1


def test_folder_without_forecast_graphs(fp32, tmp_path):
    old = link_copy(fp32, tmp_path / "old")
    m = json.loads((old / "manifest.json").read_text())
    m.pop("cache")
    for g in cache.CACHE_GRAPHS:
        m["graphs"].pop(g)
    (old / "manifest.json").write_text(json.dumps(m))
    with Sampler.load(old, backend="ort") as s:
        assert sorted(s.backend.graphs) == ["dit_step", "vae_decoder"]
        with pytest.raises(UserError, match="no forecast graphs .*re-export with --max-cache-order 2") as e:
            s.generate(request(CASES[0]), decode=False)
        assert "\n" not in str(e.value)
        s.generate(request(CASES[0][:2] + (1, 2, 2)), decode=False)  # uncached: works as before


def test_a_cache_that_does_not_fit_is_refused_before_allocating(fp32, monkeypatch):
    with Sampler.load(fp32, backend="ort") as s:
        monkeypatch.setattr(type(s.backend), "free_bytes", lambda self: 1 << 20)
        layout = s.cache_layout
        assert layout is not None and 2 * layout.nbytes > 1 << 20
        with pytest.raises(UserError, match=r"the forecast cache needs .* has 1\.0 MiB free") as e:
            s.generate(request(CASES[0]), decode=False)
        assert "\n" not in str(e.value)
        assert not [k for k in s._bufs if k.startswith("cache")]  # nothing allocated for it


def test_cli_sample_with_the_cache_writes_a_png(fp32, tmp_path):
    from PIL import Image

    png = tmp_path / "grid.png"
    r = run_cli("sample", "--engines", fp32, "--backend", "onnxruntime", "--classes", "1", "2", "--steps",
                "5", "--cache-interval", "3", "--out", png, "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert Image.open(png).size[0] > 0
    for flags, needle in [
        (("--cache-interval", "0"), "cache interval 0"),
        (("--cache-interval", "3", "--cache-order", "3"), "re-export with --max-cache-order 3"),
    ]:
        bad = tmp_path / "bad.png"
        r = run_cli("sample", "--engines", fp32, "--backend", "onnxruntime", "--classes", "1", "--steps",
                    "3", *flags, "--out", bad, "--no-progress")  # fmt: skip
        assert_one_line_error(r, needle)
        assert not bad.exists()


# ------------------------------------------------------------------------------ verify, sets, bench


def test_verify_runs_the_same_cache_on_both_sides(fp32, tmp_path, capsys):
    from dit_export.cli.app import main  # in-process: the torch reference is imported already

    out = tmp_path / "verify.json"
    rc = main(["verify", "--engines", str(fp32), "--backend", "onnxruntime", "--steps", "5", "--sampler", "ddim",
               "--cache-interval", "3", "--cache-order", "1", "--json", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert (rep["cache_interval"], rep["cache_order"], rep["passed"]) == (3, 1, True)
    cases = [row["case"] for row in rep["rows"] if row["stage"] == "step"]
    assert any(c.startswith("dit_step_full k=") for c in cases), cases
    assert any(c.startswith("dit_step_forecast k=") for c in cases), cases


def test_a_sample_set_records_and_runs_its_cache(fp32, tmp_path):
    from dit_export.sets import SetRequest, run_shard
    from dit_export.sets.launcher import parse_shard

    req = SetRequest(
        num_images=3, classes=(1, 2), seed=2, steps=4, sampler="ddim", cache_interval=2, cache_order=1
    )
    res = run_shard(
        fp32, req, tmp_path / "set", parse_shard("0/1"), backend="ort", progress=False, log=lambda s: None
    )
    rec = json.loads((res.folder / "request.json").read_text())["set"]
    assert (rec["cache_interval"], rec["cache_order"]) == (2, 1) and res.generated == 3
    plain = SetRequest(num_images=3, classes=(1, 2), seed=2, steps=4, sampler="ddim")
    with pytest.raises(UserError, match="cache_interval was 2, now"):  # a resume with other settings
        run_shard(fp32, plain, tmp_path / "set", parse_shard("0/1"), backend="ort", progress=False,
                  log=lambda s: None)  # fmt: skip


def test_bench_times_the_cached_graphs_and_reports_the_cache(fp32):
    from dit_export.bench import backends as bk
    from dit_export.bench.report import cache_table
    from dit_export.bench.run import BenchConfig, measure
    from dit_export.models.spec import ModelSpec

    cfg = BenchConfig(ModelSpec(model="S/8", random_weights=True), backends=["ort"], batches=[2], steps=5,
                      warmup=1, repeat=1, cache_interval=3, cache_order=2).validate()  # fmt: skip
    ctx = {"device": "cpu", "torch": {}, "peak": None, "flops_per_image": 1e9}
    row = measure(bk.SPECS["ort"], fp32, cfg, ctx, 1e9, None)
    c = row["sample"]["cache"]
    assert row["dit_step_full"]["median_ms"] > 0 and row["dit_step_forecast"]["median_ms"] > 0
    assert (c["full_steps"], c["forecast_steps"], c["interval"], c["order"]) == (3, 2, 3, 2)
    # S/8 at 256 px: depth 12 × 2 branches × 3 slots × 2 rows × 16 tokens × 384 × 4 bytes per image
    assert (
        c["bytes_per_image"] == 12 * 2 * 3 * 2 * 16 * 384 * 4 and c["held_bytes"] == 4 * c["bytes_per_image"]
    )
    table = "\n".join(cache_table({"results": [{**row, "backend": "ort", "batch": 2}]}))
    assert "| ort | 2 |" in table and "3 / 5" in table and "MiB" in table


def test_triton_rows_group_by_their_cache_settings(monkeypatch):
    """The sampler model's optional inputs: rows with other cache settings are other requests."""
    import types

    from dit_export.serve import triton, triton_model

    names = [n for n, *_ in triton.SAMPLER_INPUTS]
    assert {"cache_interval", "cache_order"} <= set(names) and set(triton_model.OPTIONAL) <= set(names)

    class Tensor:
        def __init__(self, a):
            self.a = np.asarray(a).reshape(-1, 1)

        def as_numpy(self):
            return self.a

    fake = types.SimpleNamespace(get_input_tensor_by_name=lambda req, name: req.get(name))
    monkeypatch.setattr(triton_model, "pb_utils", fake)
    request = {
        "class_label": Tensor([1, 2, 3, 4]),
        "seed": Tensor(np.array([7, 7, 7, 7], dtype=np.uint64)),
        "cache_interval": Tensor(np.array([1, 3, 3, 3], dtype=np.int32)),
        "cache_order": Tensor(np.array([2, 2, 2, 0], dtype=np.int32)),
    }
    groups = triton_model._groups(request, {"cfg_scale": 4.0, "steps": 10, "sampler": "ddim"})
    got = [((r.cache_interval, r.cache_order), r.labels, rows) for r, rows in groups]
    assert got == [((1, 2), (1,), [0]), ((3, 2), (2, 3), [1, 2]), ((3, 0), (4,), [3])]
    without = {k: v for k, v in request.items() if not k.startswith("cache")}
    ((only, _),) = triton_model._groups(without, {"cfg_scale": 4.0, "steps": 10, "sampler": "ddim"})
    assert (only.cache_interval, only.cache_order) == (1, DEFAULT_CACHE_ORDER)
