"""The forecast step cache in the runtime loop: which graph step k runs and what it binds.

The export writes `dit_step_full` and `dit_step_forecast` beside `dit_step` (`sampling.cache`:
the schedule and the coefficients; `sampling.step.CachedSamplerStep`: the math). The loop keeps
doing no arithmetic: per step it runs `plan.graph(k)` with the usual bindings plus

    cache       the current cache buffer (depth, 2, slots, 2N, tokens, hidden)
    cache_coef  row k of the plan's coefficient table (a table buffer, bound by row)
    cache_next  (full steps only) the other cache buffer, which becomes the current one after

so the full graph sees two address sets (cache ↔ cache_next) and the cache is ping-ponged like
the latent, but only on full steps. It is zeroed at the start of every chunk (the first full step
multiplies the stale differences by 0, and 0 · NaN would not be 0).

What the cache looks like (slots, shape, dtype) is read from the manifest's I/O of the full
graph, so a folder exported for a larger order serves every smaller one. A request is refused
in one line when the folder has no forecast graphs, when its order exceeds the export's, and
when the two cache buffers would not fit in the memory free where the backend allocates.

numpy only, like the sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dit_export.errors import UserError
from dit_export.export.manifest import GraphSpec, Manifest
from dit_export.runtime.backend import Backend, Buffer
from dit_export.runtime.folder import ExportFolder
from dit_export.sampling.cache import (
    CACHE_COEF,
    CACHE_GRAPHS,
    CACHE_INPUT,
    CACHE_OUTPUT,
    FORECAST_GRAPH,
    FULL_GRAPH,
    CachePlan,
    cache_plan,
)
from dit_export.sampling.request import SampleRequest


@dataclass(frozen=True)
class CacheLayout:
    """The cache I/O of an export: one tensor's shape and dtype, and the orders it can hold."""

    shape: tuple[int, ...]  # (depth, 2, slots, 2N, tokens, hidden)
    dtype: np.dtype

    @property
    def slots(self) -> int:
        return int(self.shape[2])

    @property
    def max_order(self) -> int:
        return self.slots - 1

    @property
    def nbytes(self) -> int:
        """One cache tensor (the loop holds two)."""
        return math.prod(self.shape) * self.dtype.itemsize

    def bytes_per_image(self, batch: int) -> int:
        return self.nbytes // max(1, int(batch))

    @classmethod
    def of(cls, manifest: Manifest) -> CacheLayout | None:
        """The layout of the full graph's `cache` input (the manifest checked it against its `cache`
        record); None when the folder has no forecast graphs."""
        full: GraphSpec | None = manifest.graphs.get(FULL_GRAPH)
        if manifest.cache is None or full is None or manifest.graphs.get(FORECAST_GRAPH) is None:
            return None
        spec = full.spec(CACHE_INPUT)
        return cls(tuple(int(d) for d in spec.shape), np.dtype(spec.np_dtype))


def check_request(manifest: Manifest, req: SampleRequest) -> None:
    """A cached request against the folder: forecast graphs there, order within the export's."""
    if req.cached:
        ExportFolder(manifest.folder or ".", manifest).require_cache(req.cache_order)


def graphs_for(folder: ExportFolder, cached: bool) -> list[str]:
    """The graphs one kind of run loads (`Sampler.load(graphs=...)` of a one-request command): a
    cached run never calls `dit_step`, which on ONNX Runtime saves a session with its own copy of
    the DiT weights."""
    if not cached:
        return folder.sampling_graphs()
    return [g for g in folder.sampling_graphs(cache=True) if g != "dit_step"]


def free_bytes_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class LoopCache:
    """The cache of one run on one backend: the plan, two cache buffers, the coefficient table."""

    def __init__(
        self, backend: Backend, manifest: Manifest, req: SampleRequest, steps: int, bufs, held=()
    ) -> None:
        """`bufs(key, shape, dtype, table=False)`: the sampler's allocate-once buffer pool; `held`:
        the keys it holds already (those need no memory). The cached graphs are added to the backend
        here when it has not loaded them yet (after the memory check)."""
        layout = CacheLayout.of(manifest)
        assert layout is not None  # check_request ran first
        self.layout = layout
        self.plan: CachePlan = cache_plan(steps, req.cache_interval, req.cache_order, layout.slots)
        need = sum(layout.nbytes for key in ("cache:0", "cache:1") if key not in held)
        free = backend.free_bytes()
        if need and free is not None and need > free:
            raise UserError(
                f"the forecast cache needs {free_bytes_text(need)} (two tensors of {layout.shape} "
                f"{layout.dtype.name}), {backend.name} has {free_bytes_text(free)} free: use an export with "
                "a smaller batch, a lower --max-cache-order, or --cache-interval 1"
            )
        backend.add_graphs(CACHE_GRAPHS)  # no-op when loaded (one line where a backend cannot add)
        self.backend = backend
        self.bufs: tuple[Buffer, Buffer] = (
            bufs("cache:0", layout.shape, layout.dtype.name),
            bufs("cache:1", layout.shape, layout.dtype.name),
        )
        self.coef = bufs(CACHE_COEF, self.plan.coefs.shape, "float32", table=True)
        backend.write(self.coef, self.plan.coefs)
        self.cur, self.nxt = self.bufs

    def start(self) -> None:
        """Before a chunk: the cache starts at zero (0 · stale memory could be NaN)."""
        self.cur, self.nxt = self.bufs
        self.backend.write(self.cur, np.zeros(self.layout.shape, dtype=self.layout.dtype))

    def bind(self, k: int, io: dict) -> str:
        """Add step k's cache bindings to `io`; returns the graph to run."""
        io[CACHE_INPUT], io[CACHE_COEF] = self.cur, self.coef.row(k)
        if self.plan.full[k]:
            io[CACHE_OUTPUT] = self.nxt
        return self.plan.graph(k)

    def after(self, k: int) -> None:
        """After step k ran: a full step wrote the refreshed cache into the other buffer."""
        if self.plan.full[k]:
            self.cur, self.nxt = self.nxt, self.cur
