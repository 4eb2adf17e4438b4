"""Proof that each exported graph computes what the PyTorch fp32 reference computes.

References are taken from the fp32 modules BEFORE the precision policy touches them; the graphs
then run in ONNX Runtime (CPU) on the same inputs. ORT's CPU provider runs many fp16 ops by
up-casting, so an fp16 graph's error here is a lower bound of what a GPU engine shows.

Cases: t ∈ {999, 500, 0} and guidance 1.5 and 4 (DDIM coefficients with 1.5, DDPM with 4), on
seeded latent-like inputs, random labels and (for `dit`) the null label in the second half.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dit_export import compare
from dit_export.backends import env_threads
from dit_export.compare import Row
from dit_export.errors import UserError
from dit_export.export.feeds import example_feeds, for_inputs
from dit_export.images import to_uint8
from dit_export.sampling.schedule import STATE_NAMES

CHECK_TIMESTEPS = (999, 500, 0)
CHECK_GUIDANCE = ((1.5, "ddim", 50), (4.0, "ddpm", 250))  # scale, sampler, steps of the coef row
# A multistep row (UniPC: corrector + predictor on the solver state) checked too when the graph
# has the state inputs (every export since issue 11).
CHECK_MULTISTEP = (4.0, "unipc", 10)
GRAPH_OF_STAGE = {"dit": "dit", "guided_eps": "dit", "step": "dit_step", "vae": "vae_decoder"}


@dataclass
class Case:
    """One graph call: ORT feeds, the torch fp32 output, and how to turn outputs into rows."""

    graph: str
    label: str
    feeds: dict[str, np.ndarray]
    reference: np.ndarray
    # (output, reference, precision, label) -> rows
    rows: Callable[[np.ndarray, np.ndarray, str, str], list[Row]] = field(repr=False)


def guided_eps(out: np.ndarray, n: int, cfg_channels: int, in_channels: int, scale: float) -> np.ndarray:
    """CFG on a (2N, 2C, L, L) denoiser output, the rule of `GuidedDenoiser` (cond rows first)."""
    cond, uncond = out[:n].astype(np.float64), out[n:].astype(np.float64)
    k = cfg_channels
    g = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
    return np.concatenate([g, cond[:, k:in_channels]], axis=1)


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

    fused = [b.attn.use_sdpa for b in model.blocks]
    model.set_fused_attention(True)
    handle = model.register_forward_hook(hook)
    steps: list[Case] = []
    dits: list[Case] = []
    try:
        for i, t in enumerate(CHECK_TIMESTEPS):
            for j, (scale, sampler, nsteps) in enumerate((*CHECK_GUIDANCE, CHECK_MULTISTEP)):
                feeds = example_feeds(
                    "dit_step",
                    batch=batch,
                    channels=cfg.in_channels,
                    size=cfg.input_size,
                    num_classes=cfg.num_classes,
                    seed=[seed, 200 + 10 * i + j],
                    t=t,
                    guidance=scale,
                    sampler=sampler,
                    steps=nsteps,
                    state=True,
                )
                captured.clear()
                with torch.inference_mode():
                    ref = step(*(torch.from_numpy(v) for v in feeds.values()))[0].numpy()
                steps.append(Case("dit_step", f"t={t} cfg={scale:g} {sampler}", feeds, ref, _step_rows))
                if j == len(CHECK_GUIDANCE) - 1:  # one dit case per timestep
                    (x2, t2, y2), out = captured[0]
                    dits.append(
                        Case("dit", f"t={t}", {"x": x2, "t": t2, "y": y2}, out, _dit_rows(cfg, batch))
                    )
    finally:
        handle.remove()
        for b, f in zip(model.blocks, fused):
            b.attn.use_sdpa = f
    return {"dit": dits, "dit_step": steps}


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
    for case in cases:
        if not set(names) <= set(case.feeds) or (
            case.label.endswith(CHECK_MULTISTEP[1]) and not set(STATE_NAMES) <= set(names)
        ):
            continue  # a multistep case for a graph without the solver state
        out = sess.run(None, for_inputs(case.feeds, names))[0]  # dit_step: x_next first, then the state
        rows += case.rows(np.asarray(out), case.reference, precision, case.label)
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
    return f"{GRAPH_OF_STAGE[r.stage]}.onnx failed its check: {r.describe()}{more}; nothing written"
