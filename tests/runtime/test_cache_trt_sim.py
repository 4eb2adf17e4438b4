"""The forecast step cache on the TensorRT backend, on the simulated GPU of test_trt_sim.py.

Two more engines (dit_step_full, dit_step_forecast) built by the real `build_plans`; the cache's
two device buffers swap after every full step, so each cached engine sees several address sets
(latent side × cache side), each captured once as a CUDA graph. Fresh simulated device memory is
NaN, so a cache that is not zeroed per chunk, or a replay with stale addresses, changes the latents.
"""

from __future__ import annotations

import numpy as np
import pytest
from folders import s8_folder
from test_trt_sim import gpu, planned, reference  # noqa: F401  (fixtures)

from dit_export.engine import cuda
from dit_export.errors import UserError
from dit_export.runtime import Sampler, SampleRequest
from dit_export.sampling.cache import CACHE_GRAPHS, cache_plan

# 3 images on batch 2 (two chunks); 7 steps at N = 3: full 0, 1, 4, forecast 2, 3, 5, 6
REQUEST = SampleRequest((207, 360, 387), seed=5, cfg_scale=4.0, steps=7, sampler="ddim",
                        cache_interval=3, cache_order=2)  # fmt: skip


@pytest.fixture(scope="module")
def folder(request, tmp_path_factory):
    """The shared S/8 build test_trt_sim.py's `planned` and `reference` use: fp32, or (indirect
    parametrization) the mixed-fp16 one, whose cache is float16."""
    return s8_folder(tmp_path_factory, getattr(request, "param", "fp32"))


@pytest.fixture
def mem_info(gpu, monkeypatch):  # noqa: F811
    """cudaMemGetInfo on the simulated device (asked before the cache is allocated)."""
    rt = cuda._cudart
    ok = rt.cudaError_t.cudaSuccess
    free = {"bytes": None}

    def info():
        size = gpu.arena.size
        return ok, free["bytes"] if free["bytes"] is not None else size - gpu.top, size

    monkeypatch.setattr(rt, "cudaMemGetInfo", info, raising=False)
    return free


def address_sets(req: SampleRequest, slots: int) -> int:
    """Distinct (graph, latent side, cache side) of one chunk: what the CUDA graphs are keyed by."""
    plan = cache_plan(req.steps, req.cache_interval, req.cache_order, slots)
    seen, side = set(), 0
    for k in range(plan.steps):
        seen.add((plan.graph(k), k % 2, side))
        if plan.full[k]:
            side ^= 1
    return len(seen)


@pytest.mark.parametrize("cuda_graph", [True, False], ids=["graphs", "no-graphs"])
def test_cached_trt_sampler_equals_the_ort_loop(planned, gpu, reference, mem_info, cuda_graph):  # noqa: F811
    want = reference.generate(REQUEST, decode=False)
    with Sampler.load(planned, backend="trt", cuda_graph=cuda_graph) as s:
        assert all(s.backend.has_graph(g) for g in CACHE_GRAPHS)
        got = s.generate(REQUEST, decode=False)
        again = s.generate(REQUEST, decode=False)  # cache buffers, staging and graphs reused
        keys = list(s.backend._captured)
        assert s.backend._capture_failed is None
        slots = s.cache_layout.slots
    np.testing.assert_array_equal(got.latents, want.latents)
    np.testing.assert_array_equal(again.latents, want.latents)
    if cuda_graph:
        assert {g for g, _ in keys} == set(CACHE_GRAPHS)  # dit_step never ran
        assert len(keys) == address_sets(REQUEST, slots) == 6  # full: 2 address sets, forecast: 4
        assert gpu.launches == 2 * 2 * REQUEST.steps  # every step of both requests' chunks replays
    else:
        assert keys == [] and gpu.launches == 0


@pytest.mark.parametrize("folder", ["fp16"], indirect=True)
def test_the_fp16_cache_on_tensorrt_equals_the_ort_loop(planned, gpu, reference, mem_info):  # noqa: F811
    """A mixed-fp16 export's float16 cache: two-byte device buffers, swapped and replayed the same way."""
    want = reference.generate(REQUEST, decode=False)
    with Sampler.load(planned, backend="trt") as s:
        assert s.cache_layout.dtype == np.float16
        got = s.generate(REQUEST, decode=False)
        assert len(s.backend._captured) == address_sets(REQUEST, s.cache_layout.slots)
    np.testing.assert_array_equal(got.latents, want.latents)


def test_uncached_and_cached_requests_share_the_backend(planned, gpu, reference, mem_info):  # noqa: F811
    plain = SampleRequest((1, 2), seed=3, steps=4, sampler="dpm++2m")
    with Sampler.load(planned, backend="trt") as s:
        for req in (plain, REQUEST, plain):
            np.testing.assert_array_equal(
                s.generate(req, decode=False).latents, reference.generate(req, decode=False).latents
            )


def test_a_cache_larger_than_the_free_device_memory_is_one_line(planned, gpu, mem_info):  # noqa: F811
    mem_info["bytes"] = 1 << 20
    with Sampler.load(planned, backend="trt") as s:
        with pytest.raises(UserError, match=r"the forecast cache needs .* trt has 1\.0 MiB free"):
            s.generate(REQUEST, decode=False)
        assert not [k for k in s._bufs if k.startswith("cache")]


def test_tensorrt_loads_the_cached_engines_up_front(planned, gpu, mem_info):  # noqa: F811
    """Its shared scratch is sized when it opens: cache=False and a cached request is one line."""
    with Sampler.load(planned, backend="trt", cache=False) as s:
        assert not s.backend.has_graph(CACHE_GRAPHS[0])
        with pytest.raises(UserError, match=r"trt backend loads its graphs when it is opened.*cache=True"):
            s.generate(REQUEST, decode=False)
