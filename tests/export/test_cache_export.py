"""The forecast step cache's export (issue 21): `dit_step_full.onnx` and `dit_step_forecast.onnx`.

The shared S/8 folders (tests/folders.py, batch 2, made once per test run and exported with the
default --max-cache-order 2): the fp32 `export` whose DiT weights sit in the one shared external
file, and the mixed-fp16 `build`; plus the tiny-digits model exported with `--max-cache-order
none` through the CLI. ONNX Runtime runs both cached graphs on
random caches and coefficient rows and is held to the torch `CachedSamplerStep`; the manifest's
`cache` record round-trips and is refused when it disagrees with its graphs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_user_error, run_dit_export
from folders import s8_export_folder, s8_folder

from dit_export.cli.export import cache_order_arg
from dit_export.compare import rel_l2
from dit_export.errors import UserError
from dit_export.export import check, feeds
from dit_export.export.exporter import SHARED_WEIGHTS, ExportOptions, cache_info, export
from dit_export.export.manifest import FILENAME, Manifest
from dit_export.export.report import cache_line
from dit_export.models.checkpoints import random_dit
from dit_export.models.configs import model_config
from dit_export.models.spec import ModelSpec
from dit_export.runtime.folder import ExportFolder
from dit_export.sampling.cache import (
    CACHE_COEF,
    CACHE_GRAPHS,
    CACHE_INPUT,
    CACHE_OUTPUT,
    FIRST_FULL,
    FORECAST_GRAPH,
    FULL_GRAPH,
    cache_bytes,
    cache_plan,
)
from dit_export.sampling.step import STEP_INPUTS, STEP_OUTPUTS, CachedSamplerStep, cached_step_io

SPEC = ModelSpec(model="tiny-digits", vae="none")  # the CLI cases


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    """The shared S/8 fp32 `export` (batch 2, default --max-cache-order 2, weights in external
    data: the DiT graphs share one file); read only."""
    return s8_export_folder(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def fp16(tmp_path_factory) -> Path:
    """The shared S/8 mixed-fp16 `build` folder (default --max-cache-order 2); read only."""
    return s8_folder(tmp_path_factory, "fp16")


@pytest.fixture(scope="module")
def torch_model():
    """The folders' weights (S/8, random, seed 0) in fp32 torch."""
    return random_dit("S/8", 256, seed=0)[0].eval()


def _session(path: Path):
    return check.ort_session(path)


def _cases(m: Manifest, k_full: int, k_cast: int, seed: int):
    """(graph, feeds) of one full and one forecast call: seeded inputs, the plan's rows k."""
    plan = cache_plan(10, 3, m.cache.max_order, m.cache.slots)
    cfg = m.model.config
    for i, (graph, k) in enumerate(((FULL_GRAPH, k_full), (FORECAST_GRAPH, k_cast))):
        assert plan.full[k] == (graph == FULL_GRAPH)
        yield (
            graph,
            feeds.example_feeds(
                graph,
                batch=m.batch,
                channels=m.latent_channels,
                size=m.latent_size,
                num_classes=cfg["num_classes"],
                seed=[seed, i],
                t=700 - 50 * k,
                guidance=3.0,
                sampler="unipc",
                steps=10,
                cache_shape=m.cache.shape,
                cache_coef=plan.coefs[k],
            ),
        )


def _compare(folder: Path, torch_model, limit: float, k_full: int = 4, k_cast: int = 5) -> dict[str, float]:
    """Every output of both cached graphs in ORT against CachedSamplerStep (fp32 torch): worst rel-L2.
    Both get the same cache, in the graphs' cache dtype (the reference computes in fp32 on it)."""
    m = Manifest.read(folder)
    store = np.dtype(m.cache.dtype)
    worst: dict[str, float] = {}
    for graph, f in _cases(m, k_full, k_cast, seed=7):
        f[CACHE_INPUT] = f[CACHE_INPUT].astype(store)
        sess = _session(m.path(m.graph(graph).file))
        ins, outs = cached_step_io("full" if graph == FULL_GRAPH else "forecast")
        assert [i.name for i in sess.get_inputs()] == list(ins) == list(f)
        assert [o.name for o in sess.get_outputs()] == list(outs)
        got = sess.run(None, f)
        step = CachedSamplerStep(torch_model, "full" if graph == FULL_GRAPH else "forecast").eval()
        with torch.inference_mode():
            want = [w.numpy() for w in step(*(torch.from_numpy(v) for v in f.values()))]
        assert len(got) == len(want) == len(outs)
        for name, g, w in zip(outs, got, want):
            assert g.shape == w.shape and g.dtype == w.dtype == (
                store if name == CACHE_OUTPUT else np.float32
            ), name
            err = rel_l2(g, w)
            assert err < limit, f"{graph} {name}: rel-L2 {err:.3g} ≥ {limit}"
            worst[f"{graph}.{name}"] = err
    return worst


# --------------------------------------------------------------------------- the graphs


def test_cached_graphs_match_torch_fp32(fp32, torch_model):
    worst = _compare(fp32, torch_model, 1e-5)
    assert set(worst) >= {f"{FULL_GRAPH}.{CACHE_OUTPUT}", f"{FORECAST_GRAPH}.x_next"}
    # the export's own check ran both graphs too (its rows name the graph)
    rows = Manifest.read(fp32).checks["rows"]
    for mode in ("full", "forecast"):  # the case's first word names the graph (check.CASE_GRAPHS)
        mine = [r for r in rows if r["case"].startswith(mode + " ")]
        assert len(mine) == (4 if mode == "full" else 2) and all(r["passed"] for r in mine), rows
    assert any(r["case"].endswith(CACHE_OUTPUT) for r in rows)


def test_forecast_reuses_the_cache_at_order_zero_coefficients(fp32, torch_model):
    """With cache_coef [1, 0, 0] the forecast step equals the uncached step whose branch outputs
    are the cache's D_0: the full step's refreshed D_0 fed back reproduces dit_step exactly
    (up to ORT rounding) at the same inputs."""
    m = Manifest.read(fp32)
    (_, f_full), _ = _cases(m, 4, 5, seed=3)
    full = _session(m.path(m.graph(FULL_GRAPH).file))
    cast = _session(m.path(m.graph(FORECAST_GRAPH).file))
    plain = _session(m.path(m.graph("dit_step").file))
    out_full = full.run(None, f_full)
    refreshed = out_full[-1]
    f_cast = dict(
        f_full, **{CACHE_INPUT: refreshed, CACHE_COEF: np.eye(1, m.cache.slots, dtype=np.float32)[0]}
    )
    out_cast = cast.run(None, f_cast)
    out_plain = plain.run(None, {k: f_full[k] for k in STEP_INPUTS})
    for a, b, c in zip(out_cast, out_plain, out_full):
        assert rel_l2(a, b) < 1e-5 and rel_l2(c, b) < 1e-6


def test_graphs_share_the_weights_file(fp32):
    m = Manifest.read(fp32)
    files = {g: [e.file for e in m.graph(g).external_data] for g in ("dit", "dit_step", *CACHE_GRAPHS)}
    assert all(f == [SHARED_WEIGHTS] for f in files.values()), files
    # written once: the shared file holds the DiT's weights, not four copies of them
    params = m.graph("dit").info["param_bytes"]
    size = (fp32 / SHARED_WEIGHTS).stat().st_size
    assert size < 1.25 * sum(params.values()), (size, params)
    assert not [p for p in fp32.glob("*.data") if p.name.startswith("dit") and p.name != SHARED_WEIGHTS]


def test_fp16_cached_graphs_store_the_cache_in_fp16(fp16, fp32, torch_model):
    """A mixed-fp16 export stores the cache as float16 (precision.cache_dtype): the manifest's record
    and both graphs' cache I/O say so (the ONNX files' own types too), its memory is half the fp32
    export's, and the graphs still match the fp32 torch step on the same (fp16-valued) cache."""
    import onnx

    from dit_export.export.precision import FP16, FP32, cache_dtype

    assert (cache_dtype(FP16), cache_dtype(FP32), cache_dtype("int8")) == ("float16", "float32", "float32")
    m = Manifest.read(fp16)
    assert m.precision == "fp16" and m.cache.max_order == 2 and m.cache.slots == 3
    assert m.cache.dtype == "float16"
    assert m.cache.bytes_per_image * 2 == Manifest.read(fp32).cache.bytes_per_image
    assert m.cache.bytes_for(m.batch) == int(np.prod(m.cache.shape)) * 2
    for graph in CACHE_GRAPHS:
        g = m.graph(graph)
        io = {t.name: t for t in g.inputs + g.outputs}
        assert io[CACHE_INPUT].dtype == "float16" and io[CACHE_COEF].dtype == "float32"
        assert all(
            t.dtype in ("float32", "int64") for n, t in io.items() if n not in (CACHE_INPUT, CACHE_OUTPUT)
        )
        onnx_io = {
            v.name: v.type.tensor_type.elem_type
            for v in onnx.load(m.path(g.file), load_external_data=False).graph.input
        }
        assert (
            onnx_io[CACHE_INPUT] == onnx.TensorProto.FLOAT16 and onnx_io[CACHE_COEF] == onnx.TensorProto.FLOAT
        )
        assert all(c["ok"] for c in g.info["static_checks"]), g.info["static_checks"]
        assert g.info["fp32_islands"], graph  # the policy applied: fp16 inside, islands reported
    assert m.graph(FULL_GRAPH).info["fp16_flop_share"] > 0.9  # attention and MLP in fp16, as dit_step
    assert m.graph(FULL_GRAPH).spec(CACHE_OUTPUT).dtype == "float16"
    # the export's own check ran both graphs on the fp16 cache, against the fp32 torch step
    rows = [r for r in m.checks["rows"] if r["case"].split(" ", 1)[0] in check.CASE_GRAPHS]
    assert len(rows) == 6 and all(r["passed"] for r in rows), rows
    worst = _compare(fp16, torch_model, 3e-2, k_full=7, k_cast=9)
    assert max(worst.values()) > 1e-6  # really fp16 inside (an fp32 graph would match to ~1e-7)
    assert "float16" in cache_line(m)


# --------------------------------------------------------------------------- the manifest


def test_cache_record_and_round_trip(fp32):
    m = Manifest.read(fp32)
    cfg = m.model.config
    tokens = (cfg["input_size"] // cfg["patch_size"]) ** 2
    c = m.cache
    assert (c.max_order, c.slots, c.dtype, c.schedule, c.first_full) == (
        2,
        3,
        "float32",
        "taylorseer-dit",
        FIRST_FULL,
    )
    assert tuple(c.shape) == (cfg["depth"], 2, 3, 2 * m.batch, tokens, cfg["hidden_size"])
    assert c.bytes_per_image == cache_bytes(cfg["depth"], 1, tokens, cfg["hidden_size"], 3)
    assert c.bytes_for(m.batch) == int(np.prod(c.shape)) * 4
    ins, outs = cached_step_io("full")
    assert m.graph(FULL_GRAPH).input_names == ins and m.graph(FULL_GRAPH).output_names == outs
    assert m.graph(FORECAST_GRAPH).output_names == STEP_OUTPUTS
    raw = json.loads((fp32 / FILENAME).read_text())
    assert raw["cache"] == c.to_dict() and m.to_dict() == raw
    assert Manifest.from_dict(m.to_dict(), fp32) == m
    folder = ExportFolder.open(fp32)
    assert folder.has_cache and folder.cache_record == c
    assert folder.sampling_graphs() == ["dit_step", "vae_decoder"]
    assert folder.sampling_graphs(cache=True) == ["dit_step", "vae_decoder", *CACHE_GRAPHS]
    assert folder.require_cache(2) == c
    with pytest.raises(UserError, match=r"hold order ≤ 2 \(re-export with --max-cache-order 3\)"):
        folder.require_cache(3)
    assert "0.00 GB" not in cache_line(m) and f"for batch {m.batch}" in cache_line(m)


def test_cache_record_must_agree(fp32, tmp_path):
    """A stripped cache record is an older folder (it loads, and asks to re-export when caching is
    asked); an edited one is refused in one line."""
    raw = json.loads((fp32 / FILENAME).read_text())
    old = copy.deepcopy(raw)
    del old["cache"], old["graphs"][FULL_GRAPH], old["graphs"][FORECAST_GRAPH]
    m = Manifest.from_dict(old, tmp_path)
    assert m.cache is None and not m.has_cache and m.graphs[FULL_GRAPH] is None
    with pytest.raises(UserError, match=r"no forecast graphs .*re-export with --max-cache-order 2"):
        m.graph(FULL_GRAPH)
    (tmp_path / FILENAME).write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"re-export with --max-cache-order 3") as e:
        ExportFolder(tmp_path).require_cache(3)
    assert "\n" not in str(e.value)
    bad = copy.deepcopy(raw)
    bad["graphs"][FULL_GRAPH]["inputs"][-2]["shape"][2] = 4  # a cache of 4 slots, the record says 3
    with pytest.raises(UserError, match=r"graphs.dit_step_full.inputs\[9\] is cache float32"):
        Manifest.from_dict(bad, tmp_path)
    bad = copy.deepcopy(raw)
    del bad["cache"]
    with pytest.raises(UserError, match="missing field 'cache'"):
        Manifest.from_dict(bad, tmp_path)


def test_the_export_check_refuses_a_wrong_cached_graph(fp32, torch_model):
    """The export-time check compares the cached graphs with torch: a graph of a perturbed model fails."""
    m = Manifest.read(fp32)
    cases = check.cached_cases(torch_model, m.batch, m.cache.slots)
    assert [check.CASE_GRAPHS[c.label.split()[0]] for c in cases[FULL_GRAPH]] == [FULL_GRAPH] * 2
    rows = check.run_cases(m.path(m.graph(FULL_GRAPH).file), cases[FULL_GRAPH], "fp32")
    assert len(rows) == 4 and all(rows)  # x_next and cache_next of two cases
    for case in cases[FULL_GRAPH]:
        case.more[CACHE_OUTPUT] = case.more[CACHE_OUTPUT] * 1.01
    rows = check.run_cases(m.path(m.graph(FULL_GRAPH).file), cases[FULL_GRAPH], "fp32")
    assert check.failure_message(rows).startswith(f"{FULL_GRAPH}.onnx failed its check")


# --------------------------------------------------------------------------- the CLI


def test_max_cache_order_none_writes_no_cache_graphs(tmp_path):
    out = tmp_path / "none"
    r = run_dit_export(
        "export", "--model", "tiny-digits", "--vae", "none", "--batch", "2", "--precision", "fp32",
        "--max-cache-order", "none", "--no-check", "--out", out, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["dit.onnx", "dit_step.onnx", FILENAME]
    raw = json.loads((out / FILENAME).read_text())
    assert "cache" not in raw and set(raw["graphs"]) == {"dit", "dit_step", "vae_decoder"}
    m = Manifest.read(out)
    assert not m.has_cache and "forecast cache: not exported" in cache_line(m)
    with pytest.raises(UserError, match="this export has no forecast graphs"):
        ExportFolder(out).require_cache()
    r = run_dit_export("inspect", out, "--no-hash")
    assert r.returncode == 0 and "forecast cache: not exported" in r.stdout, r.stdout + r.stderr


def test_bad_max_cache_order_is_one_line(tmp_path):
    r = run_dit_export("export", "--model", "tiny-digits", "--max-cache-order", "4", "--out", tmp_path / "x")
    assert_user_error(r, "--max-cache-order", "0, 1, 2, 3, none")
    assert not (tmp_path / "x").exists()
    assert [cache_order_arg(w) for w in ("0", "3", "None")] == [0, 3, None]
    for word in ("-1", "two", "2.0"):
        with pytest.raises(argparse.ArgumentTypeError, match="0, 1, 2, 3, none"):
            cache_order_arg(word)
    for bad in (4, -1, True, "2"):
        with pytest.raises(UserError, match="--max-cache-order"):
            export(ExportOptions(model=SPEC, out=tmp_path / "y", max_cache_order=bad))
    with pytest.raises(UserError, match="cache dtype must be one of float32, float16, got 'bfloat16'"):
        export(ExportOptions(model=SPEC, out=tmp_path / "y", cache_dtype="bfloat16"))
    assert not (tmp_path / "y").exists()


def test_build_passes_max_cache_order_to_the_export_and_its_request():
    """`build --max-cache-order` reaches ExportOptions and build.json's request (a changed order
    re-exports the folder)."""
    from dit_export.cli.app import build_parser
    from dit_export.cli.args import ModelArgs, fields
    from dit_export.cli.build import BUILD_FIELDS
    from dit_export.pipeline import BuildConfig, EnsureExport, export_request

    args = build_parser().parse_args(["build", "--model", "tiny-digits", "--max-cache-order", "none"])
    cfg = BuildConfig(model=ModelArgs.parse(args), **fields(args, *BUILD_FIELDS)).validate()
    assert cfg.max_cache_order is None
    assert EnsureExport(cfg, Path("unused"))._options().max_cache_order is None
    default = BuildConfig(model=SPEC).validate()
    assert default.max_cache_order == 2 and EnsureExport(default, Path("x"))._options().cache_slots == 3
    assert export_request(cfg)["max_cache_order"] is None and export_request(default)["max_cache_order"] == 2
    with pytest.raises(UserError, match="--max-cache-order must be in 0..3, got 7"):
        BuildConfig(model=SPEC, max_cache_order=7).validate()


def test_inspect_line_gives_the_cache_memory_of_xl(fp32):
    """The record and `inspect`'s line for DiT-XL/2 at 256 px, O = 2 (issue 21: about 0.4 GB per image)."""
    cfg = model_config("XL/2", 256)
    info = cache_info(ExportOptions(model=SPEC, out=Path("unused"), batch=4), cfg)
    assert info.shape == (28, 2, 3, 8, 256, 1152) and info.bytes_per_image == 28 * 2 * 3 * 2 * 256 * 1152 * 4
    line = cache_line(dataclasses.replace(Manifest.read(fp32), cache=info, batch=4))
    assert "0.40 GB per image, 1.59 GB for batch 4" in line and "holds two: 3.17 GB" in line, line
    assert cache_info(ExportOptions(model=SPEC, out=Path("unused"), max_cache_order=None), cfg) is None
    # mixed fp16: the policy's float16 cache, half the memory; ExportOptions.cache_dtype overrides it
    half = cache_info(ExportOptions(model=SPEC, out=Path("unused"), batch=4, precision="fp16"), cfg)
    assert (half.dtype, half.bytes_per_image * 2) == ("float16", info.bytes_per_image)
    assert "0.20 GB per image" in cache_line(dataclasses.replace(Manifest.read(fp32), cache=half, batch=4))
    kept = ExportOptions(model=SPEC, out=Path("unused"), precision="fp16", cache_dtype="float32")
    assert cache_info(kept, cfg).dtype == "float32"
