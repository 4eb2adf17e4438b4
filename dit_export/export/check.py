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

from dit_export.errors import UserError
from dit_export.verify.metrics import finite_or_none, psnr, rel_l2

CHECK_TIMESTEPS = (999, 500, 0)
CHECK_GUIDANCE = ((1.5, "ddim", 50), (4.0, "ddpm", 250))  # scale, sampler, steps of the coef row
PSNR_CAP = 100.0  # identical images would be +inf dB, which strict JSON cannot hold

# graph → precision → (metric, limit); rel-L2 is an upper limit, PSNR a lower one.
TOLERANCES: dict[str, dict[str, tuple[str, float]]] = {
    "dit": {"fp32": ("rel_l2", 1e-5), "fp16": ("rel_l2", 1e-2)},
    "dit_step": {"fp32": ("rel_l2", 1e-5), "fp16": ("rel_l2", 1e-2)},
    "vae_decoder": {"fp32": ("rel_l2", 1e-5), "fp16": ("psnr_uint8", 40.0)},
}


@dataclass
class Row:
    graph: str
    case: str
    metric: str  # "rel_l2" | "psnr_uint8"
    value: float
    limit: float | None  # None: reported, not enforced

    @property
    def ok(self) -> bool:
        if self.limit is None:
            return True
        if self.metric.startswith("psnr"):
            return bool(self.value >= self.limit)
        return bool(self.value <= self.limit)  # NaN fails

    def to_dict(self) -> dict:
        cap = PSNR_CAP if self.metric.startswith("psnr") else None
        return {
            "graph": self.graph,
            "case": self.case,
            "metric": self.metric,
            "value": finite_or_none(self.value, cap),
            "limit": self.limit,
            "ok": self.ok,
        }


@dataclass
class Case:
    """One graph call: ORT feeds, the torch fp32 output, and how to turn outputs into rows."""

    graph: str
    label: str
    feeds: dict[str, np.ndarray]
    reference: np.ndarray
    rows: Callable[[np.ndarray, np.ndarray, str], list[Row]] = field(repr=False)


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, salt])


def guided_eps(out: np.ndarray, n: int, cfg_channels: int, in_channels: int, scale: float) -> np.ndarray:
    """CFG on a (2N, 2C, L, L) denoiser output, the rule of `GuidedDenoiser` (cond rows first)."""
    cond, uncond = out[:n].astype(np.float64), out[n:].astype(np.float64)
    k = cfg_channels
    g = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
    return np.concatenate([g, cond[:, k:in_channels]], axis=1)


def _limit(graph: str, precision: str, metric: str) -> float | None:
    m, lim = TOLERANCES[graph][precision]
    return lim if m == metric else None


def model_cases(model, batch: int, seed: int = 0) -> dict[str, list[Case]]:
    """Cases for `dit.onnx` and `dit_step.onnx` from one set of PyTorch forwards.

    `dit_step`: every check timestep × guidance, with that sampler's coefficient row nearest t.
    `dit`: at each check timestep, the 2N-row batch the guided step fed to the model
    ([x, x], [y, null]) and the model output captured there — so the dit reference costs no
    extra forward (XL/2 on 2 CPU cores: ~15 s each). Fused SDPA is used for the reference
    forwards (fp32, equal to the matmul-softmax path to ~1e-7) and restored afterwards.
    """
    import torch

    from dit_export.sampling.schedule import make_schedule
    from dit_export.sampling.step import SamplerStep

    cfg = model.config
    n, c, size = batch, cfg.in_channels, cfg.input_size
    step = SamplerStep(model, guided=True).eval()
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
            for j, (scale, sampler, nsteps) in enumerate(CHECK_GUIDANCE):
                rng = _rng(seed, 200 + 10 * i + j)
                sched = make_schedule(nsteps, sampler)
                k = int(np.argmin(np.abs(sched.timesteps - t)))  # the row nearest t (t itself is fed as is)
                feeds = {
                    "x": rng.standard_normal((n, c, size, size), dtype=np.float32),
                    "t": np.full(n, t, dtype=np.int64),
                    "y": rng.integers(0, cfg.num_classes, size=n).astype(np.int64),
                    "noise": rng.standard_normal((n, c, size, size), dtype=np.float32),
                    "guidance": np.array([scale], dtype=np.float32),
                    "coef": sched.coefs[k].copy(),
                }
                captured.clear()
                with torch.inference_mode():
                    ref = step(*(torch.from_numpy(v) for v in feeds.values())).numpy()
                label = f"t={t} cfg={scale:g} {sampler}"

                def step_rows(
                    out: np.ndarray, ref: np.ndarray, precision: str, label: str = label
                ) -> list[Row]:
                    return [
                        Row(
                            "dit_step",
                            label,
                            "rel_l2",
                            rel_l2(out, ref),
                            _limit("dit_step", precision, "rel_l2"),
                        )
                    ]

                steps.append(Case("dit_step", label, feeds, ref, step_rows))
                if j == len(CHECK_GUIDANCE) - 1:  # one dit case per timestep
                    (x2, t2, y2), out = captured[0]
                    dits.append(Case("dit", f"t={t}", {"x": x2, "t": t2, "y": y2}, out, _dit_rows(cfg, n, t)))
    finally:
        handle.remove()
        for b, f in zip(model.blocks, fused):
            b.attn.use_sdpa = f
    return {"dit": dits, "dit_step": steps}


def _dit_rows(cfg, n: int, t: int) -> Callable[[np.ndarray, np.ndarray, str], list[Row]]:
    """Raw output, then guided ε at each check scale (the guidance rule applied in float64)."""

    def rows(out: np.ndarray, ref: np.ndarray, precision: str) -> list[Row]:
        r = [Row("dit", f"t={t} out", "rel_l2", rel_l2(out, ref), _limit("dit", precision, "rel_l2"))]
        for scale, _, _ in CHECK_GUIDANCE:
            got = guided_eps(out, n, cfg.cfg_channels, cfg.in_channels, scale)
            want = guided_eps(ref, n, cfg.cfg_channels, cfg.in_channels, scale)
            r.append(
                Row(
                    "dit",
                    f"t={t} cfg={scale:g} guided ε",
                    "rel_l2",
                    rel_l2(got, want),
                    _limit("dit", precision, "rel_l2"),
                )
            )
        return r

    return rows


def vae_cases(decode, batch: int, latent_channels: int, latent_size: int, seed: int = 0) -> list[Case]:
    """`vae_decoder.onnx` on latent-like N(0, 1) latents (DiT's latent space, before 1/0.18215)."""
    import torch

    from dit_export.images import to_uint8

    rng = _rng(seed, 300)
    z = rng.standard_normal((batch, latent_channels, latent_size, latent_size), dtype=np.float32)
    with torch.no_grad():
        ref = decode(torch.from_numpy(z)).float().numpy()

    def rows(out: np.ndarray, ref: np.ndarray, precision: str) -> list[Row]:
        return [
            Row(
                "vae_decoder",
                "images",
                "rel_l2",
                rel_l2(out, ref),
                _limit("vae_decoder", precision, "rel_l2"),
            ),
            Row(
                "vae_decoder",
                "uint8 images",
                "psnr_uint8",
                psnr(to_uint8(out), to_uint8(ref)),
                _limit("vae_decoder", precision, "psnr_uint8"),
            ),
        ]

    return [Case("vae_decoder", "images", {"latent": z}, ref, rows)]


def ort_session(path: str | Path):
    """A CPU session that runs the graph as written (basic optimisations only: no op fusions)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
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
    for case in cases:
        (out,) = sess.run(None, case.feeds)
        rows += case.rows(np.asarray(out), case.reference, precision)
    del sess
    return rows


def format_table(rows: list[Row]) -> str:
    """The check table as printed by `export` (worst rows are what fail)."""
    lines = [f"{'graph':<12} {'case':<28} {'metric':<11} {'value':>11} {'limit':>9}  result"]
    for r in rows:
        val = f"{r.value:.3e}" if r.metric == "rel_l2" else f"{r.value:.2f} dB"
        lim = "" if r.limit is None else (f"≤ {r.limit:.0e}" if r.metric == "rel_l2" else f"≥ {r.limit:g} dB")
        res = "ok" if r.ok and r.limit is not None else ("info" if r.limit is None else "FAIL")
        lines.append(f"{r.graph:<12} {r.case:<28} {r.metric:<11} {val:>11} {lim:>9}  {res}")
    return "\n".join(lines)
