"""Example feeds for the exported graphs: one function for export's check, `verify` and `bench`.

Inputs are latent-like (x, noise ~ N(0, 1) float32), labels drawn uniformly from the classes, the
timestep `t` as given, and for `dit_step` the coefficient row of the sampler's schedule nearest `t`
(`t` itself is fed as is). `dit` gets the 2N-row guided batch a guided step feeds the model:
[x, x] with [labels, null label].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dit_export.sampling.cache import CACHE_COEF, CACHE_GRAPHS, CACHE_INPUT
from dit_export.sampling.samplers import make_schedule
from dit_export.sampling.schedule import STATE_NAMES

GRAPHS = ("dit", "dit_step", "vae_decoder", *CACHE_GRAPHS)


def coef_row(t: int, sampler: str = "ddpm", steps: int = 50) -> np.ndarray:
    """The coefficient row of a `steps`-step schedule whose timestep is nearest `t` (float32)."""
    sched = make_schedule(steps, sampler)
    k = int(np.argmin(np.abs(np.asarray(sched.timesteps, dtype=np.int64) - int(t))))
    return np.asarray(sched.coefs[k], dtype=np.float32).copy()


def example_feeds(
    graph: str,
    *,
    batch: int,
    channels: int,
    size: int,
    num_classes: int,
    null_class: int | None = None,
    seed: int | Sequence[int] = 0,
    t: int = 500,
    guidance: float = 4.0,
    sampler: str = "ddpm",
    steps: int = 50,
    x: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    noise: np.ndarray | None = None,
    coef: np.ndarray | None = None,
    state: bool = False,
    cache_shape: Sequence[int] | None = None,
    cache_coef: np.ndarray | None = None,
    cache: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Host inputs of one call of `graph` (dit | dit_step | vae_decoder | dit_step_full |
    dit_step_forecast), by input name.

    `x`, `labels`, `noise` and `coef` override the seeded draws (verify feeds its sampler's noise).
    `batch` is N, the images per call: `dit` gets 2N rows. `state`: also the solver-state inputs
    of dit_step (`schedule.STATE_NAMES`, seeded N(0, 1)), which every export since issue 11 has.
    The cached step graphs take the step's feeds with the state, then `cache` (seeded N(0, 1) of
    `cache_shape`, the manifest's `cache.shape`; `cache` passes one instead, e.g. to share one
    large array between calls) and `cache_coef` (default [1, 0, …]: reuse D_0).
    """
    if graph not in GRAPHS:
        raise ValueError(f"no example feeds for graph {graph!r}; graphs are {', '.join(GRAPHS)}")
    rng = np.random.default_rng(seed)
    shape = (batch, channels, size, size)
    x = rng.standard_normal(shape, dtype=np.float32) if x is None else np.asarray(x, dtype=np.float32)
    if graph == "vae_decoder":
        return {"latent": x}
    if labels is None:
        labels = rng.integers(0, num_classes, size=batch)
    y = np.asarray(labels, dtype=np.int64)
    if graph == "dit":
        null = num_classes if null_class is None else null_class
        return {
            "x": np.concatenate([x, x]),
            "t": np.full(2 * batch, t, dtype=np.int64),
            "y": np.concatenate([y, np.full(batch, null, dtype=np.int64)]),
        }
    noise = rng.standard_normal(shape, dtype=np.float32) if noise is None else noise
    feeds = {
        "x": x,
        "t": np.full(batch, t, dtype=np.int64),
        "y": y,
        "noise": np.asarray(noise, dtype=np.float32),
        "guidance": np.array([guidance], dtype=np.float32),
        "coef": coef_row(t, sampler, steps) if coef is None else np.asarray(coef, dtype=np.float32),
    }
    cached = graph in CACHE_GRAPHS
    if cached and cache_shape is None:
        raise ValueError(f"example feeds of {graph} need the cache shape (the manifest's cache.shape)")
    if state or cached:  # the multistep solvers' history, the step's state inputs (drawn after the rest)
        # A graph exported before them has none: bind by the graph's input names (`for_inputs`).
        for name in STATE_NAMES:
            feeds[name] = rng.standard_normal(shape, dtype=np.float32)
    if cached:
        assert cache_shape is not None
        if cache is None:
            cache = rng.standard_normal(tuple(cache_shape), dtype=np.float32)
        feeds[CACHE_INPUT] = np.asarray(cache, dtype=np.float32)
        slots = int(cache_shape[2])
        default = np.eye(1, slots, dtype=np.float32)[0]
        feeds[CACHE_COEF] = default if cache_coef is None else np.asarray(cache_coef, dtype=np.float32)
    return feeds


def for_inputs(feeds: dict[str, np.ndarray], inputs) -> dict[str, np.ndarray]:
    """The feeds a graph with `inputs` takes (an older dit_step has no solver-state inputs).

    `inputs`: input names, or an ONNX Runtime session's `get_inputs()`: then a float feed of an
    fp16 input is cast to it (the forecast cache of a mixed-fp16 export is float16 I/O)."""
    out = {}
    for i in inputs:
        name = getattr(i, "name", i)
        a = feeds[name]
        out[name] = a.astype(np.float16) if getattr(i, "type", "") == "tensor(float16)" else a
    return out
