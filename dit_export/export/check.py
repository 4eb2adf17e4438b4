"""Proof that each exported graph computes what the PyTorch fp32 reference computes.

References are taken from the fp32 modules BEFORE the precision policy touches them; the graphs
then run in ONNX Runtime (CPU) on the same inputs. ORT's CPU provider runs many fp16 ops by
up-casting, so an fp16 graph's error here is a lower bound of what a GPU engine shows.

Cases: t ∈ {999, 500, 0} and guidance 1.5 and 4 (DDIM coefficients with 1.5, DDPM with 4), on
seeded latent-like inputs, random labels and (for `dit`) the null label in the second half. The
forecast cache's step graphs (`cached_cases`): a full and a forecast step of an interval-3 plan
on a seeded random cache, their x_next and the refreshed cache against `CachedSamplerStep`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dit_export import compare
from dit_export.backends import env_threads
from dit_export.compare import Row
from dit_export.errors import UserError
from dit_export.export.feeds import example_feeds, for_inputs
from dit_export.images import to_uint8
from dit_export.sampling.cache import CACHE_OUTPUT, FORECAST_GRAPH, FULL_GRAPH, cache_plan, config_cache_shape
from dit_export.sampling.schedule import STATE_NAMES

CHECK_TIMESTEPS = (999, 500, 0)
CHECK_GUIDANCE = ((1.5, "ddim", 50), (4.0, "ddpm", 250))  # scale, sampler, steps of the coef row
# A multistep row (UniPC: corrector + predictor on the solver state) checked too when the graph
# has the state inputs (every export since issue 11).
CHECK_MULTISTEP = (4.0, "unipc", 10)
# The cached step graphs (forecast cache, issue 21): per case (guidance, sampler, steps, the loop
# index of the checked full step, of the checked forecast step) of an interval-3 plan at the
# graphs' largest order — full steps 0, 1, 4, 7: at 7 every refresh coefficient a_i is non-zero
# (orders ≤ 3), and the forecasts at 8 and 9 weigh every cached difference. Random N(0, 1) caches.
CHECK_CACHE = ((1.5, "ddim", 50, 7, 8), (4.0, "unipc", 10, 4, 9))
CHECK_CACHE_INTERVAL = 3
CHECK_CACHE_TOKENS = 16  # tokens of the refreshed cache compared (strided over the sequence)
GRAPH_OF_STAGE = {"dit": "dit", "guided_eps": "dit", "step": "dit_step", "vae": "vae_decoder"}
CASE_GRAPHS = {"full": FULL_GRAPH, "forecast": FORECAST_GRAPH}  # the cached cases' first word


@dataclass
class Case:
    """One graph call: ORT feeds, the torch fp32 output, and how to turn outputs into rows."""

    graph: str
    label: str
    feeds: dict[str, np.ndarray]
    reference: np.ndarray
    # (output, reference, precision, label) -> rows
    rows: Callable[[np.ndarray, np.ndarray, str, str], list[Row]] = field(repr=False)
    # further outputs compared as "step" rows by name (the full step's refreshed cache), each on
    # the part `more_index` selects (the references are kept small: XL/2's cache is 0.4 GB per image)
    more: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    more_index: tuple = (...,)


def guided_eps(out: np.ndarray, n: int, cfg_channels: int, in_channels: int, scale: float) -> np.ndarray:
    """CFG on a (2N, 2C, L, L) denoiser output, the rule of `GuidedDenoiser` (cond rows first)."""
    cond, uncond = out[:n].astype(np.float64), out[n:].astype(np.float64)
    k = cfg_channels
    g = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
    return np.concatenate([g, cond[:, k:in_channels]], axis=1)


def _step_feeds(cfg, batch: int, graph: str, seed: list[int], t: int, row: tuple, **cached) -> dict:
    """Seeded `example_feeds` of a step graph at timestep `t` for a check row (guidance, sampler,
    steps of the coefficient row): the config's shapes, the solver state, and `cached` (the cache
    graphs' cache shape, coefficient row and cache)."""
    scale, sampler, steps = row
    shape = dict(batch=batch, channels=cfg.in_channels, size=cfg.input_size, num_classes=cfg.num_classes)
    return example_feeds(
        graph, **shape, seed=seed, t=t, guidance=scale, sampler=sampler, steps=steps, state=True, **cached
    )


@contextlib.contextmanager
def reference_forwards(model, hook: Callable | None = None) -> Iterator[None]:
    """The fp32 reference forwards: fused SDPA (equal to the matmul-softmax path to ~1e-7) and
    `hook` on the model's forward, both undone afterwards."""
    fused = [b.attn.use_sdpa for b in model.blocks]
    model.set_fused_attention(True)
    handle = model.register_forward_hook(hook) if hook is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        for b, f in zip(model.blocks, fused):
            b.attn.use_sdpa = f


def model_cases(model, batch: int, seed: int = 0) -> dict[str, list[Case]]:
    """Cases for `dit.onnx` and `dit_step.onnx` from one set of PyTorch forwards.

    `dit_step`: every check timestep × guidance, with that sampler's coefficient row nearest t.
    `dit`: at each check timestep, the 2N-row batch the guided step fed to the model
    ([x, x], [y, null]) and the model output captured there — so the dit reference costs no
    extra forward (XL/2 on 2 CPU cores: ~15 s each). Fused SDPA is used for the reference
    forwards (fp32, equal to the matmul-softmax path to ~1e-7) and restored afterwards.
    """
    import torch

    from dit_export.sampling.step import SamplerStep

    cfg = model.config
    step = SamplerStep(model, guided=True, with_state=True).eval()
    captured: list[tuple[tuple[np.ndarray, ...], np.ndarray]] = []

    def hook(module, args, out):
        captured.append((tuple(a.detach().numpy().copy() for a in args), out.detach().numpy().copy()))

    steps: list[Case] = []
    dits: list[Case] = []
    with reference_forwards(model, hook):
        for i, t in enumerate(CHECK_TIMESTEPS):
            for j, row in enumerate((*CHECK_GUIDANCE, CHECK_MULTISTEP)):
                scale, sampler, _ = row
                feeds = _step_feeds(cfg, batch, "dit_step", [seed, 200 + 10 * i + j], t, row)
                captured.clear()
                with torch.inference_mode():
                    ref = step(*(torch.from_numpy(v) for v in feeds.values()))[0].numpy()
                steps.append(Case("dit_step", f"t={t} cfg={scale:g} {sampler}", feeds, ref, _step_rows))
                if j == len(CHECK_GUIDANCE) - 1:  # one dit case per timestep
                    (x2, t2, y2), out = captured[0]
                    dits.append(
                        Case("dit", f"t={t}", {"x": x2, "t": t2, "y": y2}, out, _dit_rows(cfg, batch))
                    )
    return {"dit": dits, "dit_step": steps}


def cached_cases(model, batch: int, slots: int, seed: int = 0) -> dict[str, list[Case]]:
    """Cases for `dit_step_full` and `dit_step_forecast` (`CachedSamplerStep`, fp32 torch).

    Each `CHECK_CACHE` row: the step's seeded feeds with the solver state, one seeded N(0, 1)
    cache of the export's shape (shared by every case: XL/2's is 0.4 GB per image, held until the
    graphs are checked) and the `CachePlan` coefficient row of the checked loop index (its
    timestep and sampler row too). The full step's x_next and refreshed cache (every block, branch,
    slot, row and channel; `CHECK_CACHE_TOKENS` tokens spread over the sequence) are compared; the
    forecast step's x_next. Labels start with the mode (`CASE_GRAPHS`: `failure_message` names the graph)."""
    import torch

    from dit_export.sampling.samplers import make_schedule
    from dit_export.sampling.step import CachedSamplerStep

    cfg = model.config
    shape = config_cache_shape(cfg, batch, slots)
    cache = np.random.default_rng([seed, 400]).standard_normal(shape, dtype=np.float32)
    tokens = (..., slice(None, None, max(1, shape[4] // CHECK_CACHE_TOKENS)), slice(None))
    steps_of = {m: CachedSamplerStep(model, m).eval() for m in ("full", "forecast")}
    out: dict[str, list[Case]] = {FULL_GRAPH: [], FORECAST_GRAPH: []}
    with reference_forwards(model):
        for i, (scale, sampler, nsteps, k_full, k_cast) in enumerate(CHECK_CACHE):
            plan = cache_plan(nsteps, CHECK_CACHE_INTERVAL, slots - 1, slots)
            timesteps = make_schedule(nsteps, sampler).timesteps
            checked = (("full", FULL_GRAPH, k_full), ("forecast", FORECAST_GRAPH, k_cast))
            for j, (mode, graph, k) in enumerate(checked):
                assert plan.full[k] == (mode == "full")
                t = int(timesteps[k])
                cached = {"cache_shape": shape, "cache_coef": plan.coefs[k], "cache": cache}
                row = (scale, sampler, nsteps)
                feeds = _step_feeds(cfg, batch, graph, [seed, 400 + 10 * i + j], t, row, **cached)
                with torch.inference_mode():
                    ref = steps_of[mode](*(torch.from_numpy(v) for v in feeds.values()))
                more = {CACHE_OUTPUT: ref[-1].numpy()[tokens].copy()} if mode == "full" else {}
                label = f"{mode} k={k} {sampler}"  # fits the table's case column; mode names the graph
                out[graph].append(Case(graph, label, feeds, ref[0].numpy(), _step_rows, more, tokens))
                del ref
    return out


def _step_rows(out: np.ndarray, ref: np.ndarray, precision: str, label: str) -> list[Row]:
    return [compare.compare("step", "rel_l2", out, ref, precision, label)]


def _dit_rows(cfg, n: int) -> Callable[[np.ndarray, np.ndarray, str, str], list[Row]]:
    """Raw output, then guided ε at each check scale (the guidance rule applied in float64)."""

    def rows(out: np.ndarray, ref: np.ndarray, precision: str, label: str) -> list[Row]:
        r = [compare.compare("dit", "rel_l2", out, ref, precision, f"{label} out")]
        for scale, _, _ in CHECK_GUIDANCE:
            got = guided_eps(out, n, cfg.cfg_channels, cfg.in_channels, scale)
            want = guided_eps(ref, n, cfg.cfg_channels, cfg.in_channels, scale)
            r.append(compare.compare("guided_eps", "rel_l2", got, want, precision, f"{label} cfg={scale:g}"))
        return r

    return rows


def _vae_rows(out: np.ndarray, ref: np.ndarray, precision: str, label: str) -> list[Row]:
    return [
        compare.compare("vae", "rel_l2", out, ref, precision, label),
        compare.compare("vae", "psnr_db", to_uint8(out), to_uint8(ref), precision, f"uint8 {label}"),
    ]


def vae_cases(decode, batch: int, latent_channels: int, latent_size: int, seed: int = 0) -> list[Case]:
    """`vae_decoder.onnx` on latent-like N(0, 1) latents (DiT's latent space, before 1/0.18215)."""
    import torch

    feeds = example_feeds(
        "vae_decoder",
        batch=batch,
        channels=latent_channels,
        size=latent_size,
        num_classes=1,
        seed=[seed, 300],
    )
    with torch.no_grad():
        ref = decode(torch.from_numpy(feeds["latent"])).float().numpy()
    return [Case("vae_decoder", "images", feeds, ref, _vae_rows)]


def ort_session(path: str | Path):
    """A CPU session that runs the graph as written (basic optimisations only: no op fusions)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    so.intra_op_num_threads = env_threads()
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run_cases(path: str | Path, cases: list[Case], precision: str) -> list[Row]:
    """Run every case of one graph in ORT and compare with its reference."""
    try:
        sess = ort_session(path)
    except Exception as e:  # ORT reports unsupported ops / bad models as generic exceptions
        if os.environ.get("DIT_EXPORT_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"ONNX Runtime cannot load {Path(path).name}: {first}") from None
    rows: list[Row] = []
    names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    for case in cases:
        if not set(names) <= set(case.feeds) or (
            case.label.endswith(CHECK_MULTISTEP[1]) and not set(STATE_NAMES) <= set(names)
        ):
            continue  # a multistep case for a graph without the solver state
        outs = sess.run(None, for_inputs(case.feeds, sess.get_inputs()))  # x_next first, then the state
        rows += case.rows(np.asarray(outs[0]), case.reference, precision, case.label)
        named = dict(zip(out_names, outs))
        for name, ref in case.more.items():
            got = np.asarray(named[name])[case.more_index]
            rows.append(compare.compare("step", "rel_l2", got, ref, precision, f"{case.label} {name}"))
    del sess
    return rows


def format_table(rows: list[Row]) -> str:
    """The check table as printed by `export` (worst rows are what fail)."""
    return compare.format_table(rows)


def failure_message(rows: list[Row]) -> str | None:
    """The export's one-line error for failing rows, naming the graph file; None when all pass."""
    bad = compare.failures(rows)
    if not bad:
        return None
    r = bad[0]
    more = f" (+{len(bad) - 1} more failing rows)" if len(bad) > 1 else ""
    graph = CASE_GRAPHS.get(r.case.split(" ", 1)[0], GRAPH_OF_STAGE[r.stage])
    return f"{graph}.onnx failed its check: {r.describe()}{more}; nothing written"
