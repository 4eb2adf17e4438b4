"""`verify`: one backend against the PyTorch fp32 reference, stage by stage, same inputs and noise.

Stages per seed (N = the engine batch, labels drawn from the seed):
  denoiser     `dit` output at t ∈ {999, 500, 0} on latent-like x, labels then the null label
  guided eps   classifier-free-guided ε from that output at the requested scale
  step         one full `dit_step` call: the first step of the loop (t = 999 for DDPM)
  final latents after the whole loop (the runtime sampler on both sides)
  images       the decoded images as uint8: PSNR and max |Δ|
The first failing row names the stage; the exit code is 1 then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dit_export.verify import thresholds as th
from dit_export.verify.metrics import finite_or_none, max_abs, psnr, rel_l2

DENOISER_TIMESTEPS = (999, 500, 0)


@dataclass
class Row:
    seed: int
    stage: str
    case: str
    metric: str
    value: float
    limit: float | None

    @property
    def ok(self) -> bool:
        return th.passes(self.metric, self.value, self.limit)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value"] = finite_or_none(self.value, 999.0 if self.metric == "psnr_db" else None)
        d["ok"] = self.ok
        return d


@dataclass
class Report:
    folder: str
    backend: str
    reference: str
    precision: str
    seeds: list[int]
    steps: int
    sampler: str
    cfg_scale: float
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def first_failure(self) -> Row | None:
        return next((r for r in self.rows if not r.ok), None)

    def worst(self, stage: str) -> Row | None:
        rows = [r for r in self.rows if r.stage == stage]
        if not rows:
            return None
        if rows[0].metric == "psnr_db":
            return min(rows, key=lambda r: r.value if not math.isnan(r.value) else -math.inf)
        return max(rows, key=lambda r: r.value if not math.isnan(r.value) else math.inf)

    def to_dict(self) -> dict:
        fail = self.first_failure
        return {
            "folder": self.folder,
            "backend": self.backend,
            "reference": self.reference,
            "precision": self.precision,
            "seeds": self.seeds,
            "steps": self.steps,
            "sampler": self.sampler,
            "cfg_scale": self.cfg_scale,
            "thresholds": {s: {"metric": m, "limits": lims} for s, (m, lims) in th.THRESHOLDS.items()},
            "rows": [r.to_dict() for r in self.rows],
            "skipped": self.skipped,
            "passed": self.passed,
            "failed_stage": fail.stage if fail else None,
            "seconds": round(self.seconds, 2),
        }


def run_graph(backend, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """One call of a graph on a backend with host inputs; returns its (only) output."""
    io = backend.graphs[graph]
    bindings = {}
    for spec in io.inputs:
        buf = backend.alloc(spec.shape, spec.np_dtype)
        backend.write(buf, feeds[spec.name])
        bindings[spec.name] = buf
    (out_spec,) = io.outputs
    out = backend.alloc(out_spec.shape, out_spec.np_dtype)
    bindings[out_spec.name] = out
    backend.run(graph, bindings)
    return backend.read(out)


def _fmt(r: Row) -> tuple[str, str, str]:
    if r.metric == "psnr_db":
        val = f"{r.value:.2f} dB" if math.isfinite(r.value) else ("inf" if r.value > 0 else "nan")
        lim = "" if r.limit is None else f"≥ {r.limit:g} dB"
    elif r.metric == "max_abs_u8":
        val = f"{r.value:.0f}" if math.isfinite(r.value) else "nan"
        lim = "" if r.limit is None else f"≤ {r.limit:g}"
    else:
        val = f"{r.value:.3e}"
        lim = "" if r.limit is None else f"≤ {r.limit:.0e}"
    res = "info" if r.limit is None else ("ok" if r.ok else "FAIL")
    return val, lim, res


def format_table(report: Report) -> str:
    lines = [f"{'seed':>4}  {'stage':<14} {'case':<22} {'metric':<10} {'value':>11} {'limit':>10}  result"]
    for r in report.rows:
        val, lim, res = _fmt(r)
        lines.append(f"{r.seed:>4}  {r.stage:<14} {r.case:<22} {r.metric:<10} {val:>11} {lim:>10}  {res}")
    for s in report.skipped:
        lines.append(f"      skipped: {s}")
    return "\n".join(lines)


def summary_line(report: Report) -> str:
    fail = report.first_failure
    if fail is None:
        w = report.worst("final latents")
        tail = f"; final latents rel-L2 ≤ {w.value:.1e}" if w else ""
        return f"verify passed: {len(report.rows)} checks, {report.backend} vs {report.reference}{tail}"
    val, lim, _ = _fmt(fail)
    n_bad = sum(not r.ok for r in report.rows)
    return (
        f"verify FAILED at stage '{fail.stage}' ({fail.case}, seed {fail.seed}): {fail.metric} {val}, limit {lim}"
        f"{f' (+{n_bad - 1} more failing rows)' if n_bad > 1 else ''}"
    )


def _load(folder: Path, manifest: dict, backend: str, want: list[str], providers, options: dict):
    """The sampler under test; a TensorRT folder built without a `dit` plan skips the denoiser stages."""
    from dit_export.runtime.sampler import Sampler

    skipped = []
    if backend == "trt" and "dit" in want:
        from dit_export.engine.plans import Target, plan_status

        status, why = plan_status(folder, manifest, "dit", Target.current(), check_hash=False)
        if status != "fresh":
            want = [g for g in want if g != "dit"]
            skipped.append(f"denoiser and guided eps: {why}")
    return Sampler.load(folder, backend, providers, graphs=want, **options), skipped


def verify(
    folder: str | Path,
    backend: str = "ort",
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 50,
    sampler: str = "ddpm",
    cfg_scale: float = 4.0,
    providers: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    **options,
) -> Report:
    """Run every stage for every seed; the report says what passed (nothing raised for a failure)."""
    from dit_export.export.check import guided_eps
    from dit_export.export.manifest import read_manifest
    from dit_export.images import to_uint8
    from dit_export.runtime.backend import canonical_backend
    from dit_export.sampling.noise import make_noise

    t_start = time.perf_counter()
    folder = Path(folder)
    m = read_manifest(folder)
    backend = canonical_backend(backend)
    prec = m["precision"]
    want = [g for g in ("dit", "dit_step", "vae_decoder") if m["graphs"].get(g)]
    sut, skipped = _load(folder, m, backend, want, providers, options)
    ref = None
    try:
        from dit_export.runtime.sampler import Sampler

        ref = Sampler.load(folder, "torch", graphs=want, check_hashes=False)
        report = Report(
            str(folder),
            sut.backend.describe(),
            ref.backend.describe(),
            prec,
            list(seeds),
            int(steps),
            sampler,
            float(cfg_scale),
            skipped=skipped,
        )
        n, shape = sut.batch, sut.latent_shape
        cfg = m["model"]["config"]
        null = int(m["model"]["null_class"])
        timesteps, coefs = sut.schedule(steps, sampler)
        for seed in seeds:
            labels = (
                np.random.default_rng([int(seed), 7]).integers(0, sut.num_classes, size=n).astype(np.int64)
            )
            noise = make_noise("philox", int(seed), n, shape, guided=cfg_scale > 1.0)
            x = noise.initial()

            def add(stage: str, case: str, value: float, seed: int = int(seed)) -> None:
                report.rows.append(
                    Row(seed, stage, case, th.metric(stage), float(value), th.limit(stage, prec))
                )

            if sut.backend.has_graph("dit"):
                for t in DENOISER_TIMESTEPS:
                    feeds = {
                        "x": np.concatenate([x, x]),
                        "t": np.full(2 * n, t, dtype=np.int64),
                        "y": np.concatenate([labels, np.full(n, null, dtype=np.int64)]),
                    }
                    got = run_graph(sut.backend, "dit", feeds)
                    exp = run_graph(ref.backend, "dit", feeds)
                    add("denoiser", f"t={t} out", rel_l2(got, exp))
                    if cfg_scale > 1.0:
                        ge = guided_eps(
                            got, n, int(m["model"]["cfg_channels"]), int(cfg["in_channels"]), cfg_scale
                        )
                        ee = guided_eps(
                            exp, n, int(m["model"]["cfg_channels"]), int(cfg["in_channels"]), cfg_scale
                        )
                        add("guided eps", f"t={t} cfg={cfg_scale:g}", rel_l2(ge, ee))
            feeds = {
                "x": x,
                "t": np.full(n, timesteps[0], dtype=np.int64),
                "y": labels,
                "noise": noise.step(0),
                "guidance": np.array([1.0 if cfg_scale == 1.0 else cfg_scale], dtype=np.float32),
                "coef": coefs[0],
            }
            add(
                "step",
                f"t={int(timesteps[0])} {sampler}",
                rel_l2(run_graph(sut.backend, "dit_step", feeds), run_graph(ref.backend, "dit_step", feeds)),
            )
            kw = dict(seed=int(seed), cfg_scale=cfg_scale, steps=steps, sampler=sampler, progress=progress)
            got_r = sut.generate(labels, decode=True, **kw)  # type: ignore[arg-type]
            exp_r = ref.generate(labels, decode=True, **kw)  # type: ignore[arg-type]
            add("final latents", f"{len(timesteps)} {sampler} steps", rel_l2(got_r.latents, exp_r.latents))
            if got_r.images is not None and exp_r.images is not None:
                a, b = to_uint8(got_r.images), to_uint8(exp_r.images)
                add("images psnr", "uint8", psnr(a, b))
                add("images max", "uint8 max |Δ|", max_abs(a, b))
            if log:
                log(
                    f"seed {seed}: {sum(r.ok for r in report.rows if r.seed == seed)}/"
                    f"{sum(1 for r in report.rows if r.seed == seed)} checks pass"
                )
        if not sut.has_vae:
            report.skipped.append("images: the export has no VAE decoder")
    finally:
        sut.close()
        if ref is not None:
            ref.close()
    report.seconds = time.perf_counter() - t_start
    return report
