"""`verify`: one backend against the PyTorch fp32 reference, stage by stage, same inputs and noise.

Stages per seed (N = the engine batch, labels drawn from the seed); limits: `dit_export.compare`.
  dit          `dit` output at t ∈ {999, 500, 0} on the initial latent, labels then the null label
  guided_eps   classifier-free-guided ε from that output at the requested scale
  step         one full `dit_step` call: the first step of the loop (t = 999 for DDPM); with the
               forecast cache (cache_interval > 1) also one `dit_step_full` and one
               `dit_step_forecast` call on a seeded cache with the plan's coefficient rows
  latents      the final latents after the whole loop (the runtime sampler on both sides)
  images       the decoded images as uint8: PSNR and max |Δ|
The first failing row names the stage; the exit code is 1 then. With the cache, the loop on both
sides runs the same cache settings (the reference: the torch backend's `CachedSamplerStep`).

The default is a quick check (one seed, 10 steps: seconds on a small model); `thorough=True` runs
3 seeds × 50 steps. The limits hold for every step count, so both judge the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dit_export import compare
from dit_export.backends import canonical_backend
from dit_export.compare import Row
from dit_export.engine.plans import Target
from dit_export.export.check import guided_eps
from dit_export.export.feeds import example_feeds
from dit_export.export.manifest import Manifest
from dit_export.images import to_uint8
from dit_export.runtime.folder import ExportFolder
from dit_export.runtime.sampler import Sampler
from dit_export.runtime.step_cache import check_request as check_cache_request
from dit_export.sampling.cache import CACHE_GRAPHS, DEFAULT_ORDER, cache_plan
from dit_export.sampling.noise import make_noise
from dit_export.sampling.request import SampleRequest

DENOISER_TIMESTEPS = (999, 500, 0)
QUICK = {"seeds": (0,), "steps": 10}
THOROUGH = {"seeds": (0, 1, 2), "steps": 50}


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
    cache_interval: int = 1
    cache_order: int = DEFAULT_ORDER

    @property
    def passed(self) -> bool:
        return all(self.rows)

    @property
    def first_failure(self) -> Row | None:
        return compare.first_failure(self.rows)

    def worst(self, stage: str, metric: str = "rel_l2") -> Row | None:
        return compare.worst(self.rows, stage, metric)

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
            "cache_interval": self.cache_interval,
            "cache_order": self.cache_order,
            "limits": compare.limits_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "skipped": self.skipped,
            "passed": self.passed,
            "failed_stage": fail.stage if fail is not None else None,
            "seconds": round(self.seconds, 2),
        }


def run_graph(backend, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """One call of a graph on a backend with host inputs; returns its first output (dit_step:
    x_next; the solver-state outputs that follow it are bound and not returned)."""
    io = backend.graphs[graph]
    bindings = {}
    for spec in io.inputs:
        buf = backend.alloc(spec.shape, spec.np_dtype)
        backend.write(buf, feeds[spec.name])
        bindings[spec.name] = buf
    for spec in io.outputs:
        bindings[spec.name] = backend.alloc(spec.shape, spec.np_dtype)
    backend.run(graph, bindings)
    return backend.read(bindings[io.outputs[0].name])


def format_table(report: Report) -> str:
    lines = [compare.format_table(report.rows)]
    lines += [f"      skipped: {s}" for s in report.skipped]
    return "\n".join(lines)


def summary_line(report: Report) -> str:
    fail = report.first_failure
    if fail is None:
        w = compare.worst(report.rows, "latents")
        tail = f"; final latents rel-L2 ≤ {w.value:.1e}" if w else ""
        return f"verify passed: {len(report.rows)} checks, {report.backend} vs {report.reference}{tail}"
    n_bad = len(compare.failures(report.rows))
    more = f" (+{n_bad - 1} more failing rows)" if n_bad > 1 else ""
    return f"verify FAILED at stage '{fail.stage}': {fail.describe()}{more}"


def _phases(folder: ExportFolder, backend: str, cached: bool = False) -> tuple[list[list[str]], list[str]]:
    """The graphs of each phase (dit, then dit_step + VAE, and the cached steps when `cached`),
    loaded one phase at a time, and what is skipped: a TensorRT folder built without a `dit` plan
    skips the dit stages."""
    loop = ["dit_step", "vae_decoder", *(CACHE_GRAPHS if cached else ())]
    want = [g for g in ("dit", *loop) if folder.manifest.graphs.get(g)]
    skipped = []
    if backend == "trt" and "dit" in want:
        status, why = folder.plan_status("dit", Target.current(), check_hash=False)
        if status != "fresh":
            want.remove("dit")
            skipped.append(f"dit and guided_eps: {why}")
    phases = [[g for g in want if g in phase] for phase in (["dit"], loop)]
    return [p for p in phases if p], skipped


class _Pair:
    """The backend under test and the reference, fed the same inputs; adds rows to a report."""

    def __init__(self, sut: Sampler, ref: Sampler, manifest: Manifest, report: Report, seed: int) -> None:
        self.sut, self.ref, self.manifest, self.report, self.seed = sut, ref, manifest, report, seed

    def add(self, stage: str, metric: str, got: np.ndarray, want: np.ndarray, case: str) -> None:
        row = compare.compare(stage, metric, got, want, self.report.precision, case, self.seed)
        self.report.rows.append(row)

    def graph(self, graph: str, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return run_graph(self.sut.backend, graph, feeds), run_graph(self.ref.backend, graph, feeds)


def _seed_inputs(sut: Sampler, seed: int, guided: bool):
    """The labels, noise and initial latent of one seed (one engine batch), the same in both
    phases, and the feed shape fields of `example_feeds`."""
    labels = np.random.default_rng([seed, 7]).integers(0, sut.num_classes, size=sut.batch).astype(np.int64)
    noise = make_noise("philox", seed, sut.batch, sut.latent_shape, guided=guided)
    (c, size, _) = sut.latent_shape
    shape = {"batch": sut.batch, "channels": c, "size": size, "num_classes": sut.num_classes}
    return labels, noise, noise.initial(), shape


def _check_denoiser(pair: _Pair, seed: int) -> None:
    """The `dit` and `guided_eps` stages of one seed."""
    sut, rep, model = pair.sut, pair.report, pair.manifest.model
    labels, _, x, shape = _seed_inputs(sut, seed, rep.cfg_scale > 1.0)
    null, k, in_ch = model.null_class, model.cfg_channels, int(model.config["in_channels"])
    for t in DENOISER_TIMESTEPS:
        feeds = example_feeds("dit", **shape, null_class=null, x=x, labels=labels, t=t)
        got, want = pair.graph("dit", feeds)
        pair.add("dit", "rel_l2", got, want, f"t={t} out")
        if rep.cfg_scale > 1.0:
            g, w = (guided_eps(o, sut.batch, k, in_ch, rep.cfg_scale) for o in (got, want))
            pair.add("guided_eps", "rel_l2", g, w, f"t={t} cfg={rep.cfg_scale:g}")


def _check_loop(pair: _Pair, seed: int, progress: bool) -> None:
    """The `step`, `latents` and `images` stages of one seed."""
    sut, rep = pair.sut, pair.report
    labels, noise, x, shape = _seed_inputs(sut, seed, rep.cfg_scale > 1.0)
    timesteps, coefs = sut.schedule(rep.steps, rep.sampler)
    feeds = example_feeds(
        "dit_step",
        **shape,
        x=x,
        labels=labels,
        noise=noise.step(0),
        t=int(timesteps[0]),
        guidance=rep.cfg_scale,
        coef=coefs[0],
        state=True,
    )
    pair.add("step", "rel_l2", *pair.graph("dit_step", feeds), f"t={int(timesteps[0])} {rep.sampler}")
    if rep.cache_interval > 1:
        _check_cached_steps(pair, seed, shape, labels, timesteps, coefs)
    req = SampleRequest(
        tuple(int(v) for v in labels),
        seed,
        rep.cfg_scale,
        rep.steps,
        rep.sampler,
        cache_interval=rep.cache_interval,
        cache_order=rep.cache_order,
    )
    got_r = sut.generate(req, decode=True, progress=progress)
    exp_r = pair.ref.generate(req, decode=True, progress=progress)
    pair.add("latents", "rel_l2", got_r.latents, exp_r.latents, f"{len(timesteps)} {rep.sampler} steps")
    if got_r.images is not None and exp_r.images is not None:
        a, b = to_uint8(got_r.images), to_uint8(exp_r.images)
        pair.add("images", "psnr_db", a, b, "uint8")
        pair.add("images", "max_abs", a, b, "uint8 max |Δ|")


def _check_cached_steps(pair: _Pair, seed: int, shape: dict, labels, timesteps, coefs) -> None:
    """One `dit_step_full` and one `dit_step_forecast` call (the latest of each in the plan) on a
    seeded N(0, 1) cache, x_next compared (the full step's refreshed cache is checked by export)."""
    rep, m = pair.report, pair.manifest
    assert m.cache is not None  # check_cache_request ran
    plan = cache_plan(len(timesteps), rep.cache_interval, rep.cache_order, m.cache.slots)
    for graph in CACHE_GRAPHS:
        ks = [k for k in range(plan.steps) if plan.graph(k) == graph]
        if not ks:
            continue
        k = ks[-1]
        feeds = example_feeds(
            graph,
            **shape,
            seed=[seed, 21],
            labels=labels,
            t=int(timesteps[k]),
            guidance=rep.cfg_scale,
            coef=coefs[k],
            cache_shape=m.cache.shape,
            cache_coef=plan.coefs[k],
        )
        case = f"{graph} k={k} t={int(timesteps[k])} N={rep.cache_interval} O={rep.cache_order}"
        pair.add("step", "rel_l2", *pair.graph(graph, feeds), case)


def verify(
    folder: str | Path | ExportFolder,
    backend: str = "ort",
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    sampler: str = "ddpm",
    cfg_scale: float = 4.0,
    providers: Sequence[str] | None = None,
    *,
    cache_interval: int = 1,
    cache_order: int = DEFAULT_ORDER,
    thorough: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    **options,
) -> Report:
    """Run every stage for every seed; the report says what passed (nothing raised for a failure).

    `seeds`/`steps` default to the quick check (seed 0, 10 steps), or with `thorough` to
    seeds 0 1 2 × 50 steps. `cache_interval`/`cache_order`: the forecast cache, the same on both
    sides. `options` go to the backend (trt `cuda_graph`, torch `mode`, ...).
    """
    t_start = time.perf_counter()
    plan = THOROUGH if thorough else QUICK
    seeds = list(plan["seeds"] if seeds is None else seeds)
    steps = int(plan["steps"] if steps is None else steps)
    export = ExportFolder.of(folder)  # one read of the manifest for both samplers of every phase
    folder, manifest = export.path, export.manifest
    backend = canonical_backend(backend)
    cache = {"cache_interval": cache_interval, "cache_order": cache_order}
    # one line before anything loads: bad settings, no forecast graphs, an order above the export's
    check_cache_request(manifest, SampleRequest((0,), steps=steps, **cache).validate())
    phases, skipped = _phases(export, backend, cached=cache_interval > 1)
    # The reference modules are built once, after the first graphs under test have loaded (a
    # folder with a bad hash or graph fails in one line before torch and the weights load); the
    # backend under test loads one phase's graphs at a time (dit, then dit_step + VAE): XL/2 fp16
    # on CPU peaked at 10.2 GB RSS with both loaded.
    say = log or (lambda line: None)
    modules = None
    report: Report | None = None
    for graphs in phases:
        denoiser = "dit" in graphs
        sut = Sampler.load(export, backend, providers, graphs=graphs, **options)
        ref = None
        try:
            if modules is None:
                from dit_export.runtime.torch_backend import load_reference  # torch: the reference needs it

                say("verify: loading the PyTorch fp32 reference ...")
                modules = load_reference(manifest, folder, want_vae=bool(manifest.graphs.get("vae_decoder")))
            ref = Sampler.load(export, "torch", graphs=graphs, check_hashes=False, modules=modules)
            if report is None:
                report = Report(str(folder), sut.backend.describe(), ref.backend.describe(), sut.precision,
                                seeds, steps, sampler, float(cfg_scale), skipped=skipped, **cache)  # fmt: skip
            what = "dit at t = 999, 500, 0" if denoiser else f"{steps} {sampler} steps and the decode"
            say(f"verify: {what} on {backend} and torch, seed(s) {' '.join(map(str, seeds))} ...")
            for seed in seeds:
                pair = _Pair(sut, ref, manifest, report, int(seed))
                if denoiser:
                    _check_denoiser(pair, int(seed))
                else:
                    _check_loop(pair, int(seed), progress)
            if not denoiser and not sut.has_vae:
                report.skipped.append("images: the export has no VAE decoder")
        finally:
            sut.close()
            if ref is not None:
                ref.close()
    assert report is not None  # every export has dit_step
    report.rows.sort(key=lambda r: seeds.index(r.seed))  # per seed: denoiser rows, then the loop's
    if log:
        for seed in seeds:
            mine = [r for r in report.rows if r.seed == seed]
            log(f"seed {seed}: {sum(map(bool, mine))}/{len(mine)} checks pass")
    report.seconds = time.perf_counter() - t_start
    return report
