"""The forecast step cache (TaylorSeer; FORA is its order 0): which steps run the whole network,
and the host coefficients that refresh and extrapolate the cached branch outputs.

TaylorSeer (Liu et al., arXiv 2503.06923, code ``TaylorSeer-DiT``) runs the first two steps and
then one step in every ``interval`` in full ("full" steps). A full step stores, per block, the
attention and MLP branch outputs (before their adaLN gates) and their finite differences up to the
order; every other ("forecast") step runs only the embeddings, the adaLN modulation, the gated
residual adds of the forecast branch outputs and the final layer. Which steps are full depends only
on (steps, interval), so it is a host table like the sampler coefficients, and the loop still does
no arithmetic: it picks `dit_step_full` or `dit_step_forecast` per step and binds one row of
`CachePlan.coefs` as the graphs' ``cache_coef`` input.

The cache holds Newton divided differences over the step index (D_0 = the latest full output,
D_i = f[k_0, …, k_i] over the latest i+1 full steps). A full step at index k, whose earlier full
steps are p_1 > p_2 > …, refreshes them as D'_0 = F, D'_i = (D'_{i−1} − D_{i−1}) · a_i with
a_i = 1/(k − p_i); a forecast at index s reads F ≈ Σ_i b_i D_i with b_0 = 1 and
b_i = Π_{j<i} (s − k_j). Orders that lack points (the first full steps) get a_i = b_i = 0, as
TaylorSeer's recursion stops there. **Deviation from TaylorSeer's code**, on purpose: it divides
every order by the latest spacing and weighs order i by (s − k_0)^i / i!, which is the same at
order ≤ 1 but at order 2 misses a quadratic by a·d·x on even spacing (and more on the uneven
spacing its first two steps make). Newton's form is exact for every polynomial of degree ≤ O on
any spacing (tests/sampling/test_cache.py checks the closed form).

numpy only: both runtimes and the exporter import it; the C++ runtime restates `cache_plan`
(cpp/src/runtime.cpp) and is checked against this module by shared vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dit_export.errors import UserError

MAX_ORDER = 3  # the largest Taylor order a request may ask (the 0–3)
FIRST_FULL = 2  # TaylorSeer-DiT's `first_enhance`: the first two steps always run in full
DEFAULT_ORDER = 2  # TaylorSeer's recommended order for DiT when caching is on
FULL_GRAPH, FORECAST_GRAPH = "dit_step_full", "dit_step_forecast"
CACHE_INPUT, CACHE_COEF, CACHE_OUTPUT = "cache", "cache_coef", "cache_next"
CACHE_GRAPHS = (FULL_GRAPH, FORECAST_GRAPH)
BRANCHES = ("attn", "mlp")  # the two cached outputs of every block, in the cache's axis-1 order


def check_cache(interval: int, order: int, max_order: int | None = None) -> None:
    """One-line errors for a bad (interval, order); `max_order`: what the export's graphs hold."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise UserError(f"cache interval {interval!r}: an integer ≥ 1 (1 = every step full, no caching)")
    if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= MAX_ORDER:
        raise UserError(f"cache order {order!r}: an integer 0..{MAX_ORDER} (0 = FORA reuse, 1–3 = Taylor)")
    if interval > 1 and max_order is not None and order > max_order:
        raise UserError(
            f"cache order {order}: this export's forecast graphs hold order ≤ {max_order} "
            f"(re-export with --max-cache-order {order})"
        )


def slots_for(max_order: int) -> int:
    """Cache slots (D_0..D_O) of graphs exported for orders up to `max_order`."""
    return max_order + 1


def full_steps(steps: int, interval: int) -> np.ndarray:
    """bool (steps,): loop indices that run the whole network — 0, 1, then 1+N, 1+2N, … (TaylorSeer-DiT
    `cal_type`: the first `FIRST_FULL` steps, then a full step whenever the counter reaches N−1)."""
    k = np.arange(steps)
    full = (k < FIRST_FULL) | ((k - (FIRST_FULL - 1)) % interval == 0)
    return full if interval > 1 else np.ones(steps, dtype=bool)


@dataclass(frozen=True)
class CachePlan:
    """The host tables of one cached run: `full[k]` picks the graph, `coefs[k]` is its cache_coef."""

    steps: int
    interval: int
    order: int
    slots: int
    full: np.ndarray  # bool (steps,)
    coefs: np.ndarray  # float32 (steps, slots)

    @property
    def num_full(self) -> int:
        return int(self.full.sum())

    def graph(self, k: int) -> str:
        return FULL_GRAPH if self.full[k] else FORECAST_GRAPH


def cache_plan(steps: int, interval: int, order: int, slots: int) -> CachePlan:
    """Full-step mask and per-step coefficient rows (Newton divided differences over the step index).

    Full row: [1, a_1, …, a_{slots−1}] (column 0 unused); forecast row: [1, b_1, …]. Computed in
    float64, stored float32 (the graphs' `cache_coef` dtype)."""
    check_cache(interval, order, slots - 1)
    full = full_steps(steps, interval)
    order = min(order, slots - 1)  # interval 1 runs no forecast: any order is accepted there
    coefs = np.zeros((steps, slots), dtype=np.float64)
    nodes: list[int] = []  # full-step indices, latest first
    for k in range(steps):
        coefs[k, 0] = 1.0
        if full[k]:
            for i in range(1, min(order, len(nodes)) + 1):
                coefs[k, i] = 1.0 / (k - nodes[i - 1])
            nodes.insert(0, k)
        else:
            w = 1.0
            for i in range(1, min(order, len(nodes) - 1) + 1):
                w *= k - nodes[i - 1]
                coefs[k, i] = w
    return CachePlan(steps, interval, order, slots, full, coefs.astype(np.float32))


def cache_shape(depth: int, batch: int, tokens: int, hidden: int, slots: int, guided: bool = True) -> tuple:
    """(depth, 2 branches, slots, rows, tokens, hidden): rows = 2·batch for the guided step graphs."""
    return (depth, len(BRANCHES), slots, 2 * batch if guided else batch, tokens, hidden)


def config_cache_shape(cfg, batch: int, slots: int) -> tuple:
    """`cache_shape` of a DiT config (anything with depth, num_tokens, hidden_size)."""
    return cache_shape(cfg.depth, batch, cfg.num_tokens, cfg.hidden_size, slots)


def cache_bytes(depth: int, batch: int, tokens: int, hidden: int, slots: int, dtype: str = "float32") -> int:
    """Bytes of one cache tensor (the runtime holds two: the full step writes the refreshed one)."""
    return int(np.prod(cache_shape(depth, batch, tokens, hidden, slots))) * np.dtype(dtype).itemsize
