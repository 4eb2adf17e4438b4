"""The gate for storing the forecast step cache in float16 inside mixed-fp16 exports (issue 21).

    python benchmarks/fp16_cache_gate.py export   [--work-dir /tmp/fp16-cache]   # the folders below
    python benchmarks/fp16_cache_gate.py magnitude                                 # torch fp32 reference
    python benchmarks/fp16_cache_gate.py latents  [--models tiny-digits S/8 S/2]
    python benchmarks/fp16_cache_gate.py quality  [--per-class 20] [--seeds 0 1]
    python benchmarks/fp16_cache_gate.py speed    [--models S/2] [--repeat 10]     # the cached graphs
    python benchmarks/fp16_cache_gate.py arith                                     # fp16 vs fp32 math
    python benchmarks/fp16_cache_gate.py report   [--out benchmarks/results/fp16_cache.md]

Each model is exported three times (ONNX Runtime CPU, the cache graphs at --max-cache-order 3):
fp32; mixed fp16 with the policy's float16 cache (`precision.cache_dtype`); mixed fp16 with an
fp32 cache (`ExportOptions(cache_dtype="float32")`, the comparison). The gate:

1. latents: cached sampling of the fp16 export with the fp16 cache vs the fp32 cache (rel-L2 of
   the final latents, same noise), beside the fp16-vs-fp32 graph difference (the fp16 export vs
   the fp32 export, uncached and cached) and the cache's own effect (cached vs uncached, fp32);
2. quality: tiny-digits through ONNX Runtime, the fp16 export, ddpm-50 N=4 O=0 and ddim-50 N=3
   O=2, two seeds: class accuracy and Fréchet distance (dit_export.verify.score) of the fp16
   cache, the fp32 cache and the uncached sampler;
3. magnitude: the largest |branch output| and |divided difference| of every slot over whole
   cached trajectories of the torch fp32 reference (fp16's largest finite value is 65504).

Every result is kept in --json as it finishes (a rerun skips what is there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from dit_export.fileio import write_json  # noqa: E402

JSON = ROOT / "benchmarks/results/fp16_cache.json"
MD = ROOT / "benchmarks/results/fp16_cache.md"
# (name, ModelSpec fields, batch): tiny-digits with its own VAE (images to score); random S/8 and
# S/2 at 256 px (32×32 latents) without one (latents only)
MODELS = {
    "tiny-digits": (dict(model="tiny-digits"), 20),
    "S/8": (dict(model="S/8", random_weights=True, vae="none", image_size=256), 2),
    "S/2": (dict(model="S/2", random_weights=True, vae="none", image_size=256), 2),
}
KINDS = {"fp32": ("fp32", None), "fp16": ("fp16", None), "fp16-c32": ("fp16", "float32")}
# the cached settings: the quality gate's two, and every order at N = 3 on ddim-50
GATE = (("ddpm", 50, 4, 0), ("ddim", 50, 3, 2))
ORDERS = tuple(("ddim", 50, 3, o) for o in (0, 1, 3))
CFG = 4.0


def folder(work: Path, model: str, kind: str) -> Path:
    return work / f"{model.replace('/', '')}-{kind}"


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def put(self, section: str, key: str, value) -> None:
        if self.path.is_file():  # another step may have written since (merge, do not clobber)
            self.data = json.loads(self.path.read_text())
        self.data.setdefault(section, {})[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.data)

    def get(self, section: str, key: str):
        return self.data.get(section, {}).get(key)


def cmd_export(args, store: Store) -> None:
    from dit_export.export.exporter import ExportOptions, export
    from dit_export.models.spec import ModelSpec

    for model in args.models:
        fields, batch = MODELS[model]
        for kind, (precision, cache_dtype) in KINDS.items():
            out = folder(args.work_dir, model, kind)
            if (out / "manifest.json").is_file():
                continue
            t0 = time.perf_counter()
            res = export(
                ExportOptions(
                    model=ModelSpec(**fields),
                    out=out,
                    batch=batch,
                    precision=precision,
                    max_cache_order=3,
                    cache_dtype=cache_dtype,
                    check=args.check or kind == "fp16",  # the fp16 cache's export check always runs
                ),
                log=lambda s: None,
            )
            c = res.manifest.cache
            rows = {r.case: r.value for r in res.rows if "k=" in r.case}
            store.put(
                "exports",
                f"{model} {kind}",
                {"seconds": time.perf_counter() - t0, "load": load(), "cache_dtype": c.dtype,
                 "bytes_per_image": c.bytes_per_image, "cached_check_rows": rows},
            )  # fmt: skip
            print(
                f"{model} {kind}: {time.perf_counter() - t0:.0f} s, cache {c.dtype} {c.bytes_per_image} B/image"
            )


def _latents(runner, sampler: str, steps: int, n: int, o: int, images: int, seed: int) -> np.ndarray:
    from dit_export.sampling.request import SampleRequest

    labels = tuple(i % 10 for i in range(images))
    req = SampleRequest(labels, seed, CFG, steps, sampler, cache_interval=n, cache_order=o)
    return runner.generate(req, decode=False).latents


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def cmd_latents(args, store: Store) -> None:
    from dit_export.runtime import Sampler

    for model in args.models:
        images = 20 if model == "tiny-digits" else 2
        runners = {k: Sampler.load(folder(args.work_dir, model, k), backend="ort") for k in KINDS}
        for sampler, steps, n, o in GATE + ORDERS:
            for seed in args.seeds:
                key = f"{model} {sampler}-{steps} N={n} O={o} seed {seed}"
                if store.get("latents", key) is not None:
                    continue
                t0 = time.perf_counter()
                z = {k: _latents(r, sampler, steps, n, o, images, seed) for k, r in runners.items()}
                u = {k: _latents(runners[k], sampler, steps, 1, o, images, seed) for k in ("fp32", "fp16")}
                row = {
                    "fp16 cache vs fp32 cache (fp16 export, cached)": rel(z["fp16"], z["fp16-c32"]),
                    "fp16 vs fp32 export (uncached)": rel(u["fp16"], u["fp32"]),
                    "fp16 vs fp32 export (cached, fp32 cache)": rel(z["fp16-c32"], z["fp32"]),
                    "fp16 export fp16 cache vs fp32 export": rel(z["fp16"], z["fp32"]),
                    "cached vs uncached (fp32 export)": rel(z["fp32"], u["fp32"]),
                    "finite": bool(all(np.isfinite(v).all() for v in z.values())),
                    "images": images,
                    "seconds": time.perf_counter() - t0,
                    "load": load(),
                }
                store.put("latents", key, row)
                print(key, {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()})
        for r in runners.values():
            r.close()


def cmd_quality(args, store: Store) -> None:
    from dit_export.runtime import Sampler
    from dit_export.verify.score import runtime_sample_fn, score_sampler, train_classifier

    clf = train_classifier(seed=0)
    runners = {
        k: Sampler.load(folder(args.work_dir, "tiny-digits", k), backend="ort") for k in ("fp16", "fp16-c32")
    }
    for sampler, steps, n, o in GATE + (ORDERS[-1:] if args.order3 else ()):
        for seed in args.seeds:
            for label, kind, interval in (("fp16 cache", "fp16", n), ("fp32 cache", "fp16-c32", n),
                                          ("uncached", "fp16", 1)):  # fmt: skip
                key = f"{sampler}-{steps} N={n} O={o} seed {seed} {label}"
                if store.get("quality", key) is not None:
                    continue
                fn = runtime_sample_fn(runners[kind], cfg_scale=CFG, steps=steps, sampler=sampler, seed=seed,
                                       cache_interval=interval, cache_order=o)  # fmt: skip
                r = score_sampler(fn, per_class=args.per_class, classifier=clf, backend="ort", precision="fp16",
                                  cfg_scale=CFG, steps=steps, sampler=sampler, seed=seed,
                                  cache_interval=interval, cache_order=o)  # fmt: skip
                row = {"accuracy": r.accuracy, "fd": r.fd, "fd_real": r.fd_real, "images": r.num_images,
                       "seconds": r.sample_seconds, "load": load()}  # fmt: skip
                store.put("quality", key, row)
                print(
                    f"{key}: acc {r.accuracy:.4f} FD {r.fd:.3f} ({r.sample_seconds:.0f} s, load {row['load']})"
                )


def cmd_magnitude(args, store: Store) -> None:
    """Largest |D_i| per slot over whole cached trajectories (torch fp32 reference loop)."""
    import torch

    from dit_export.models import cached
    from dit_export.models.checkpoints import random_dit
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents
    from dit_export.verify.score import load_embedded_reference

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seen: list[torch.Tensor] = []
    refresh = cached._refresh

    def spy(fresh, old, coef):
        out = refresh(fresh, old, coef)
        seen.append(out.abs().amax(dim=(1, 2, 3)))
        return out

    cached._refresh = spy
    try:
        for model in args.models:
            if model == "tiny-digits":
                dit = load_embedded_reference("tiny-digits")[0]
            else:
                dit = random_dit(model, 256, seed=0)[0].eval()
            for sampler, steps, n, o in GATE + (("ddim", 50, 3, 3), ("ddpm", 50, 5, 3)):
                key = f"{model} {sampler}-{steps} N={n} O={o}"
                if store.get("magnitude", key) is not None:
                    continue
                seen.clear()
                cfg = dit.config
                shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
                noise = make_noise("philox", 0, 4, shape, guided=True)
                z = sample_latents(dit, list(range(4)), noise, cfg_scale=CFG, steps=steps, sampler=sampler,
                                   progress=False, cache_interval=n, cache_order=o).numpy()  # fmt: skip
                m = torch.stack(seen).amax(0).tolist()  # per slot
                row = {
                    "max_abs_per_slot": m,
                    "slots_used": o + 1,
                    "latents_finite": bool(np.isfinite(z).all()),
                }
                store.put("magnitude", key, row)
                print(key, [f"{v:.4g}" for v in m])
    finally:
        cached._refresh = refresh


def cmd_speed(args, store: Store) -> None:
    """The two cached graphs of the fp16 export, fp16 cache vs fp32 cache, interleaved (ORT CPU)."""
    from dit_export.export.check import ort_session
    from dit_export.export.feeds import example_feeds, for_inputs
    from dit_export.export.manifest import Manifest

    for model in args.models:
        sessions, feeds = {}, {}
        for kind in ("fp16", "fp16-c32"):
            m = Manifest.read(folder(args.work_dir, model, kind))
            cfg = m.model.config
            for graph in ("dit_step_full", "dit_step_forecast"):
                sess = ort_session(m.path(m.graph(graph).file))
                sessions[kind, graph] = sess
                f = example_feeds(graph, batch=m.batch, channels=m.latent_channels, size=m.latent_size,
                                  num_classes=cfg["num_classes"], seed=0, t=500, guidance=CFG, sampler="ddim",
                                  steps=50, cache_shape=m.cache.shape)  # fmt: skip
                feeds[kind, graph] = for_inputs(f, sess.get_inputs())
        times: dict = {k: [] for k in sessions}
        for _ in range(args.repeat):
            for k, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, feeds[k])
                times[k].append(time.perf_counter() - t0)
        row = {f"{kind} {graph} ms": 1e3 * float(np.median(v)) for (kind, graph), v in times.items()}
        row.update(repeat=args.repeat, load=load(), threads=os.environ.get("OMP_NUM_THREADS"))
        store.put("speed", model, row)
        print(model, row)


def cmd_arith(args, store: Store) -> None:
    """fp16 storage with fp32 arithmetic (what the graphs do) vs fp16 storage with fp16 arithmetic
    (the refresh's differences and the forecast sum in fp16), both against the fp32 cache: the torch
    fp32 reference loop on tiny-digits, the cache rounded to fp16 where it is stored."""
    import torch

    from dit_export.models import cached
    from dit_export.sampling import step as step_mod
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents
    from dit_export.verify.score import load_embedded_reference

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    refresh, forecast = cached._refresh, step_mod.forecast_forward

    def refresh_store16(fresh, old, coef):  # fp32 math, the result stored in fp16
        return refresh(fresh, old, coef).half().float()

    def refresh_math16(fresh, old, coef):  # fp16 math and storage
        h, c = old.half(), coef.half()
        diffs = [fresh.half()]
        for i in range(1, old.shape[0]):
            diffs.append((diffs[-1] - h[i - 1]) * c[i])
        return torch.stack(diffs).float()

    def forecast_math16(model, x, t, y, cache, coef):
        h, c = model.embed(x, t, y)
        w = coef.half().reshape(-1, 1, 1, 1)
        for b, block in enumerate(model.blocks):
            _, _, gate_msa, _, _, gate_mlp = block.modulation(c)
            h = h + gate_msa.unsqueeze(1) * (w * cache[b, 0].half()).sum(0).float()
            h = h + gate_mlp.unsqueeze(1) * (w * cache[b, 1].half()).sum(0).float()
        return model.head(h, c)

    dit = load_embedded_reference("tiny-digits")[0]
    cfg = dit.config
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    labels = [i % 10 for i in range(20)]
    variants = {"fp32": (refresh, forecast), "fp16 storage, fp32 math": (refresh_store16, forecast),
                "fp16 storage, fp16 math": (refresh_math16, forecast_math16)}  # fmt: skip
    try:
        for sampler, steps, n, o in GATE + ORDERS:
            for seed in args.seeds:
                key = f"tiny-digits {sampler}-{steps} N={n} O={o} seed {seed}"
                if store.get("arith", key) is not None:
                    continue
                z = {}
                for name, (r, f) in variants.items():
                    cached._refresh, step_mod.forecast_forward = r, f
                    noise = make_noise("philox", seed, len(labels), shape, guided=True)
                    z[name] = sample_latents(dit, labels, noise, cfg_scale=CFG, steps=steps, sampler=sampler,
                                             progress=False, cache_interval=n, cache_order=o).numpy()  # fmt: skip
                row = {k: rel(v, z["fp32"]) for k, v in z.items() if k != "fp32"}
                row.update(images=len(labels), load=load())
                store.put("arith", key, row)
                print(key, row)
    finally:
        cached._refresh, step_mod.forecast_forward = refresh, forecast


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("export", "latents", "quality", "magnitude", "speed", "arith", "report"))
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--order3", action="store_true", help="quality: also ddim-50 N=3 O=3")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/fp16-cache"))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--check", action="store_true", help="run the export check on every folder")
    p.add_argument("--json", type=Path, default=JSON)
    p.add_argument("--out", type=Path, default=MD)
    args = p.parse_args(argv)
    store = Store(args.json)
    {"export": cmd_export, "latents": cmd_latents, "quality": cmd_quality, "magnitude": cmd_magnitude,
     "speed": cmd_speed, "arith": cmd_arith, "report": cmd_report}[args.what](args, store)  # fmt: skip
    return 0


def _g(v) -> str:
    return f"{v:.2g}" if isinstance(v, float) and v else str(v)


def cmd_report(args, store: Store) -> None:
    d = store.data
    lines = ["# The fp16 forecast cache in mixed-fp16 exports: the gate", "",
             "`python benchmarks/fp16_cache_gate.py export|quality|latents|magnitude|speed|report` on ONNX Runtime "
             "CPU (a 2-core machine shared with other jobs: every row gives its 1/5/15-min load averages).", "",
             "fp16 cache = the mixed-fp16 export as written (`precision.cache_dtype`); fp32 cache = the same "
             "export with `ExportOptions(cache_dtype=\"float32\")`; uncached = the fp16 export at "
             "--cache-interval 1.", "",
             "In the recorded run S/2's fp32-cache folder was the fp16 folder with its cache I/O retyped to "
             "float32 (tests/runtime/test_cache_runtime.py `fp16_fp32_cache`: the read Casts become identities, "
             "the write Cast float32), which sampled bit-identical latents to the real `cache_dtype=\"float32\"` "
             "export on tiny-digits and S/8 (ddim-20, N = 3, O = 2 and 3); `export` makes it for real.", ""]  # fmt: skip
    if d.get("quality"):
        lines += ["## Quality (tiny-digits, fp16 export, ONNX Runtime)", "",
                  "| setting | seed | cache | images | accuracy | FD | sample s | load |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, r in d["quality"].items():
            setting, rest = key.split(" seed ")
            seed, label = rest.split(" ", 1)
            lines.append(f"| {setting} | {seed} | {label} | {r['images']} | {r['accuracy']:.4f} | {r['fd']:.3f} | "
                         f"{r['seconds']:.0f} | {r['load']} |")  # fmt: skip
        lines.append("")
    if d.get("latents"):
        cols = [
            k for k in next(iter(d["latents"].values())) if k not in ("finite", "images", "seconds", "load")
        ]
        lines += ["## Final latents, rel-L2 (ONNX Runtime, same noise)", "",
                  "| model, setting | " + " | ".join(cols) + " | finite | images | load |",
                  "|---" * (len(cols) + 4) + "|"]  # fmt: skip
        for key, r in d["latents"].items():
            lines.append(
                f"| {key} | "
                + " | ".join(_g(r[c]) for c in cols)
                + f" | {r['finite']} | {r['images']} | {r['load']} |"
            )
        lines.append("")
    if d.get("arith"):
        lines += ["## fp16 storage: fp32 vs fp16 arithmetic (torch fp32 reference loop, tiny-digits)", "",
                  "rel-L2 of the final latents against the fp32 cache; the graphs do the first.", "",
                  "| setting | fp16 storage, fp32 math | fp16 storage, fp16 math | images | load |", "|---|---|---|---|---|"]  # fmt: skip
        for key, r in d["arith"].items():
            lines.append(f"| {key} | {_g(r['fp16 storage, fp32 math'])} | {_g(r['fp16 storage, fp16 math'])} | "
                         f"{r['images']} | {r['load']} |")  # fmt: skip
        lines.append("")
    if d.get("magnitude"):
        lines += ["## Largest |D_i| per cache slot over whole trajectories (torch fp32 reference, 4 images, seed 0)", "",
                  "fp16's largest finite value is 65504.", "", "| model, setting | max abs per slot (D_0, D_1, ...) |",
                  "|---|---|"]  # fmt: skip
        for key, r in d["magnitude"].items():
            lines.append(f"| {key} | {', '.join(f'{v:.3g}' for v in r['max_abs_per_slot'])} |")
        lines.append("")
    if d.get("speed"):
        lines += ["## The cached graphs' time, fp16 vs fp32 cache (ORT CPU, median)", ""]
        for model, r in d["speed"].items():
            lines.append(
                f"- {model}: "
                + ", ".join(f"{k} {_g(v) if not isinstance(v, float) else f'{v:.1f}'}" for k, v in r.items())
            )
        lines.append("")
    if d.get("exports"):
        lines += ["## Exports", ""]
        for key, r in d["exports"].items():
            lines.append(f"- {key}: {r['seconds']:.0f} s (load {r['load']}), cache {r['cache_dtype']}, "
                         f"{r['bytes_per_image']} B per image")  # fmt: skip
        lines.append("")
    args.out.write_text("\n".join(lines))
    print(args.out)


if __name__ == "__main__":
    raise SystemExit(main())
