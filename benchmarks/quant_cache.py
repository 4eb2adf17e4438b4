"""int8 with the forecast cache on ONNX Runtime CPU: calibrated with the cache on (Q&C) or off.

Not a test. Q&C (Ding et al., arXiv 2503.02508) found naive quantization plus step caching
collapsed DiT FID until the quantized network was calibrated with the cache on. This measures it
on the shipped tiny-digits model (batch 10, cfg 4, ddpm-50, `verify/score.py`: class accuracy and
Fréchet distance, through the runtime's ONNX Runtime backend):

    python benchmarks/quant_cache.py [--work /tmp/quant_cache] [--seeds 0 1] [--per-class 20]

Folders (exported once into --work, reused when present; export wall time and stages recorded):
  fp32        the fp32 export with the cache graphs (--max-cache-order 2)
  int8        int8, dit_step_full calibrated at the full steps of cached ddpm-50 N=4 O=0 loops (default)
  int8-n3o2   int8, the same calibrated on cached N=3 O=2 loops
  int8-off    int8, dit_step_full calibrated on the uncached loops (cache off: what Q&C warns about)
  int8-none   int8 with --max-cache-order none (the export before the cache graphs; time and size only)
Rows: every folder at N=4 O=0 and N=3 O=2; fp32 and int8 also uncached. Writes
benchmarks/results/quant_cache.{json,md}; `uptime` beside every row (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.export.calibrate import CalibSettings  # noqa: E402
from dit_export.export.exporter import ExportOptions, export  # noqa: E402
from dit_export.fileio import write_bytes  # noqa: E402
from dit_export.models.spec import ModelSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TINY = ModelSpec(model="tiny-digits")
FOLDERS = {  # name → (precision, calibration settings, max cache order)
    "fp32": ("fp32", None, 2),
    "int8": ("int8", CalibSettings(), 2),
    "int8-n3o2": ("int8", CalibSettings(cache=((3, 2),)), 2),
    "int8-off": ("int8", CalibSettings(cache=()), 2),
    "int8-none": ("int8", CalibSettings(), None),
}
SETTINGS = {"fp32": ((1, 2), (4, 0), (3, 2)), "int8": ((1, 2), (4, 0), (3, 2))}
CACHED = ((4, 0), (3, 2))


def uptime() -> str:
    return (
        subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average: ")[-1]
    )


def make(work: Path, name: str) -> dict:
    precision, calib, order = FOLDERS[name]
    out = work / name
    info_path = work / f"{name}.export.json"
    if (out / "manifest.json").is_file() and info_path.is_file():
        return json.loads(info_path.read_text())
    opts = ExportOptions(TINY, out, 10, precision, force=True, calibration=calib, max_cache_order=order)
    stages: list[tuple[str, float]] = []
    before = uptime()
    t0 = time.perf_counter()
    export(opts, log=lambda s: None, on_stage=lambda n, s: stages.append((n, round(s, 2))))
    info = {"folder": name, "seconds": round(time.perf_counter() - t0, 1), "stages": stages, "load": before}
    m = json.loads((out / "manifest.json").read_text())
    cal = (m.get("precision_policy") or {}).get("calibration")
    if cal:
        info["calibration"] = {k: cal.get(k) for k in ("bytes", "calls", "capture_seconds", "cache")}
    print(json.dumps(info), flush=True)
    write_bytes(info_path, json.dumps(info).encode())
    return info


def score(work: Path, name: str, seeds, per_class: int, threads: int, clf) -> list[dict]:
    from dit_export.runtime.sampler import Sampler
    from dit_export.verify.score import runtime_sample_fn, score_sampler

    rows = []
    runner = Sampler.load(work / name, "ort", threads=threads)
    try:
        for n, o in SETTINGS.get(name, CACHED):
            for seed in seeds:
                load = uptime()
                fn = runtime_sample_fn(
                    runner,
                    cfg_scale=4.0,
                    steps=50,
                    sampler="ddpm",
                    seed=seed,
                    cache_interval=n,
                    cache_order=o,
                )
                r = score_sampler(fn, per_class=per_class, classifier=clf, backend="ort", seed=seed)
                scores = {
                    k: round(v, 4) for k, v in r.to_dict().items() if k in ("accuracy", "fd", "fd_real")
                }
                cache = "none" if n == 1 else f"N={n} O={o}"
                row = {"folder": name, "cache": cache, "seed": seed, **scores, "images": r.num_images}
                row |= {"seconds": round(r.sample_seconds, 1), "load": load}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        runner.close()
    return rows


def render(res: dict) -> str:
    out = [
        "# int8 + forecast cache: calibrated with the cache on vs off (tiny-digits, ORT CPU)",
        "",
        f"Command: `{res['command']}`  ",
        f"ddpm-50, cfg 4, batch 10, {res['per_class'] * 10} images per row, seeds {res['seeds']}; "
        "FD against all real digits (FD of a real subset of the same size: the floor).",
        "",
        "| folder | cache | seed | accuracy | FD | FD floor | seconds | load (1/5/15 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        out.append(
            f"| {r['folder']} | {r['cache']} | {r['seed']} | {100 * r['accuracy']:.1f} % | {r['fd']:.2f} | "
            f"{r['fd_real']:.2f} | {r['seconds']} | {r['load']} |"
        )
    out += ["", "## Exports", "", "| folder | seconds | calibration capture s | calibration.npz MB | calls (step / full) | quantize s (dit_step / dit / full) | load |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in res["exports"]:
        st = dict(e["stages"])
        cal = e.get("calibration") or {}
        full = (cal.get("cache") or {}).get("full_calls", "-")
        q = " / ".join(str(st.get(f"quantize {g}", "-")) for g in ("dit_step", "dit", "dit_step_full"))
        mb = f"{cal['bytes'] / 1e6:.1f}" if cal else "-"
        out.append(
            f"| {e['folder']} | {e['seconds']} | {st.get('calibrate', '-')} | {mb} | {cal.get('calls', '-')} / "
            f"{full} | {q} | {e['load']} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/quant_cache"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--folders", nargs="+", default=list(FOLDERS), choices=list(FOLDERS))
    args = p.parse_args()
    from dit_export.verify.score import train_classifier

    args.work.mkdir(parents=True, exist_ok=True)
    exports = [make(args.work, f) for f in args.folders]
    clf = train_classifier(0)
    rows = []
    for f in args.folders:
        if FOLDERS[f][2] is not None:
            rows += score(args.work, f, args.seeds, args.per_class, args.threads, clf)
    res = {
        "command": "python benchmarks/quant_cache.py " + " ".join(sys.argv[1:]),
        "seeds": args.seeds,
        "per_class": args.per_class,
        "threads": args.threads,
        "exports": exports,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_bytes(RESULTS / "quant_cache.json", (json.dumps(res, indent=1) + "\n").encode())
    write_bytes(RESULTS / "quant_cache.md", render(res).encode())
    print(f"wrote {RESULTS / 'quant_cache.md'}")


if __name__ == "__main__":
    main()
