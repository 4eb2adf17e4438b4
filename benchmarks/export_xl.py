"""Export DiT-XL/2 (random weights) in fp32 and fp16 and record wall time and peak RSS per stage.

Not a test. Target: each precision < 3 min and < 8 GB peak on 2 cores / 24 GB. Each precision
runs in its own process (peak RSS is per process); inside, a thread samples VmRSS every 50 ms
and the peak since the previous stage is recorded when each stage ends.

    python benchmarks/export_xl.py [--model XL/2] [--vae random-sd] [--no-check] [--precisions fp32 fp16]

Writes benchmarks/results/export_xl_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.bench.machine import cpu_name  # noqa: E402
from dit_export.bench.timing import PeakRss, rss_bytes  # noqa: E402


def child(args: argparse.Namespace) -> None:
    """One export in this process; prints one JSON line with the stage table."""
    peak = [0]
    whole = PeakRss()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stages: list[dict] = []

    def on_stage(name: str, seconds: float) -> None:
        peak[0] = max(peak[0], rss_bytes())
        stages.append({"stage": name, "seconds": round(seconds, 2), "peak_rss_gb": round(peak[0] / 1e9, 2)})
        peak[0] = rss_bytes()

    t0 = time.perf_counter()
    from dit_export.export.exporter import ExportOptions, export
    from dit_export.models.spec import ModelSpec

    result = export(
        ExportOptions(
            model=ModelSpec(model=args.model, random_weights=True, vae=args.vae),
            out=Path(args.out),
            batch=args.batch,
            precision=args.precision,
            check=not args.no_check,
        ),
        log=lambda s: print(s, file=sys.stderr, flush=True),
        on_stage=on_stage,
    )
    total = time.perf_counter() - t0
    stop.set()
    m = result.manifest
    graphs = {
        k: {
            "bytes": g.file.bytes,
            "external_data": ", ".join(f"{e.file} ({e.bytes:,} B)" for e in g.external_data) or "no",
        }
        for k, g in m.graphs.items()
        if g
    }
    on_disk = sum(p.stat().st_size for p in Path(args.out).iterdir() if p.is_file())
    rows = [r.to_dict() for r in result.rows]
    print(
        json.dumps(
            {
                "precision": args.precision,
                "total_seconds": round(total, 1),
                "peak_rss_gb": round(whole.peak() / 1e9, 2),
                "stages": stages,
                "graphs": graphs,
                "folder_bytes": on_disk,
                "check_rows": rows,
            }
        )
    )


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return f"{cpu_name()}, {os.cpu_count()} cores visible, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def to_markdown(result: dict) -> str:
    lines = [
        f"# Export of {result['model']} (random weights) on CPU",
        "",
        f"Machine: {result['machine']}. torch {result['torch']}, onnxruntime {result['onnxruntime']}. "
        f"VAE {result['vae']}, batch {result['batch']}, ONNX Runtime check {'on' if result['check'] else 'off'}. "
        "Peak RSS per stage = the highest resident set sampled (50 ms) during that stage. "
        f"Load average (1/5/15 min) before: {result['load_average_before']} — other jobs shared the 2 cores, so wall "
        "times are upper bounds.",
        "",
    ]
    for run in result["runs"]:
        ok = run["total_seconds"] < 180 and run["peak_rss_gb"] < 8
        lines += [
            f"## {run['precision']}: {run['total_seconds']} s total, peak RSS {run['peak_rss_gb']} GB "
            f"({'within' if ok else 'OUTSIDE'} the 3 min / 8 GB target; load average after {run['load_average_after']})",
            "",
            "| stage | seconds | peak RSS (GB) |",
            "|---|---:|---:|",
        ]
        lines += [f"| {s['stage']} | {s['seconds']} | {s['peak_rss_gb']} |" for s in run["stages"]]
        lines += ["", "| graph | .onnx bytes | external data |", "|---|---:|---|"]
        lines += [f"| {k} | {v['bytes']:,} | {v['external_data']} |" for k, v in run["graphs"].items()]
        lines += ["", f"Folder on disk: {run['folder_bytes']:,} bytes (every file, weights once)."]
        if run["check_rows"]:
            worst = {}
            for r in run["check_rows"]:
                if r["metric"] == "rel_l2":
                    worst[r["stage"]] = max(worst.get(r["stage"], 0.0), r["value"] or 0.0)
            lines += [
                "",
                "Worst rel-L2 vs PyTorch fp32: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()),
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="XL/2")
    p.add_argument("--vae", default="random-sd")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "export_xl_cpu"))
    args = p.parse_args()
    if args.child:
        child(args)
        return
    import onnxruntime
    import torch

    runs = []
    load_before = [round(v, 1) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="export_xl_", dir=ROOT / "benchmarks") as tmp:  # large: not /tmp
        for prec in args.precisions:
            cmd = [sys.executable, __file__, "--child", "--precision", prec, "--model", args.model, "--vae", args.vae,
                   "--batch", str(args.batch), "--out", str(Path(tmp) / prec)] + (["--no-check"] if args.no_check else [])  # fmt: skip
            print(f"exporting {args.model} {prec} ...", flush=True)
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT))
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"export {prec} failed (exit {proc.returncode})")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            run["load_average_after"] = [round(v, 1) for v in os.getloadavg()]
            runs.append(run)
            print(f"  {prec}: {run['total_seconds']} s, peak RSS {run['peak_rss_gb']} GB", flush=True)
    result = {
        "machine": machine(),
        "model": args.model,
        "vae": args.vae,
        "batch": args.batch,
        "check": not args.no_check,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "targets": {"seconds": 180, "peak_rss_gb": 8},
        "load_average_before": load_before,
        "runs": runs,
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
