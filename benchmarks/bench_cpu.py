"""The standard CPU table: denoiser forward of S/2 and B/2, torch eager fp32 vs ONNX Runtime fp32/fp16.

Not a test. For each model it runs `python -m dit_export bench` twice: once with the backends
(torch-fp32 with SDPA attention, ort, ort-fp16) and once more for torch-fp32 with explicit
attention (what the export traces), so both torch baselines are on record. Only the denoiser
forward is timed (2N rows, guided), on random weights (timing does not depend on the values)
without a VAE. Run it on an idle machine: the result files note the load average.

    python benchmarks/bench_cpu.py [--models S/2 B/2] [--batch 1 4] [--warmup 5] [--repeat 30]

Writes benchmarks/results/bench_cpu_<date>.{json,md} (each naming the machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.bench.report import fmt_ms, fmt_num, fmt_ratio, header_lines  # noqa: E402
from dit_export.fileio import atomic_path, write_json  # noqa: E402


def bench_command() -> list[str]:
    return [sys.executable, "-m", "dit_export", "bench"]


def run_one(args: argparse.Namespace, model: str, extra: list[str], out: Path) -> dict:
    cmd = [
        *bench_command(),
        "--model",
        model,
        "--random-weights",
        "--vae",
        "none",
        "--stages",
        "denoiser",
        "--batch",
        *map(str, args.batch),
        "--warmup",
        str(args.warmup),
        "--repeat",
        str(args.repeat),
        "--work-dir",
        str(args.engines),
        "--json",
        str(out),
        "--threads",
        str(args.threads),
        *extra,
    ]
    print("$ python", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL if args.quiet else None)
    return json.loads(out.read_text())


def table(runs: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows (model, batch, figures) and their markdown lines."""
    rows = []
    for pair in runs:
        main, explicit = pair["main"], pair["explicit"]
        by = {(r["backend"], r["batch"]): r for r in main["results"] if r["status"] == "measured"}
        ex = {r["batch"]: r for r in explicit["results"] if r["status"] == "measured"}
        for batch in main["config"]["batches"]:
            t = by.get(("torch-fp32", batch))
            o32, o16, te = by.get(("ort", batch)), by.get(("ort-fp16", batch)), ex.get(batch)

            def med(r: dict | None) -> float | None:
                return r["denoiser"]["median_ms"] if r else None

            def gflops(r: dict | None) -> float | None:
                return r["denoiser"]["tflops"] * 1e3 if r else None

            def speed(r: dict | None, t: dict | None = t) -> float | None:
                return med(t) / med(r) if r and t else None

            rows.append(
                {
                    "model": main["model"]["name"],
                    "batch": batch,
                    "rows": 2 * batch,
                    "torch_fp32_sdpa_ms": med(t),
                    "torch_fp32_explicit_ms": med(te),
                    "ort_fp32_ms": med(o32),
                    "ort_fp16_ms": med(o16),
                    "ort_fp32_vs_torch": speed(o32),
                    "ort_fp16_vs_torch": speed(o16),
                    "ort_fp32_vs_torch_explicit": med(te) / med(o32) if te and o32 else None,
                    "gflops": {"torch": gflops(t), "ort": gflops(o32), "ort-fp16": gflops(o16)},
                    "p90_ms": {
                        "torch": t and t["denoiser"]["p90_ms"],
                        "ort": o32 and o32["denoiser"]["p90_ms"],
                    },
                }
            )
    head = [
        "model",
        "batch (rows)",
        "torch fp32 SDPA ms",
        "torch fp32 explicit ms",
        "ORT fp32 ms",
        "ORT fp16 ms",
        "ORT fp32 × torch",
        "ORT fp16 × torch",
        "ORT fp32 GFLOP/s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [
            r["model"],
            f"{r['batch']} ({r['rows']})",
            fmt_ms(r["torch_fp32_sdpa_ms"]),
            fmt_ms(r["torch_fp32_explicit_ms"]),
            fmt_ms(r["ort_fp32_ms"]),
            fmt_ms(r["ort_fp16_ms"]),
            fmt_ratio(r["ort_fp32_vs_torch"]),
            fmt_ratio(r["ort_fp16_vs_torch"]),
            fmt_num(r["gflops"]["ort"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return rows, lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["S/2", "B/2"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ORT (0: their defaults)")
    p.add_argument("--engines", default=None, help="keep the exports here (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--date", default=dt.date.today().isoformat())
    p.add_argument("--quiet", action="store_true", help="only the final table")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_cpu_") as tmp:
        tmp_path = Path(tmp)
        args.engines = Path(args.engines) if args.engines else tmp_path / "engines"
        runs = []
        for model in args.models:
            slug = model.replace("/", "")
            main_run = run_one(
                args,
                model,
                ["--backends", "torch-fp32", "ort", "ort-fp16", "--export-jobs", "2"],
                tmp_path / f"{slug}.json",
            )
            explicit = run_one(
                args,
                model,
                ["--backends", "torch-fp32", "--torch-attention", "explicit"],
                tmp_path / f"{slug}-explicit.json",
            )
            runs.append({"model": model, "main": main_run, "explicit": explicit})
    rows, lines = table(runs)
    first = runs[0]["main"]
    doc = {
        "schema": "dit_export.bench_cpu/1",
        "date": args.date,
        "machine": first["machine"],
        "versions": first["versions"],
        "targets": "ORT fp32 ≥ 1.0× torch eager fp32 per denoiser forward (reported, not asserted)",
        "table": rows,
        "runs": runs,
    }
    out = Path(args.out)
    base = (
        out / f"bench_cpu_{args.date}" if not args.threads else out / f"bench_cpu_{args.date}_t{args.threads}"
    )
    write_json(base.with_suffix(".json"), doc)
    md = [
        f"# CPU denoiser forward: {first['machine']['label']} ({args.date})",
        "",
        "Median latency of one guided denoiser forward (2N rows), random weights, no VAE; "
        f"warm-up {args.warmup}, {args.repeat} timed calls. `× torch` = torch fp32 (SDPA) median / "
        "this median (> 1: faster than PyTorch eager). Explicit attention is what the ONNX export traces.",
        "",
        *lines,
        "",
    ]
    for pair in runs:
        md += [
            "",
            *(
                line.replace("# ", "## ", 1) if line.startswith("# ") else line
                for line in header_lines(pair["main"])
            ),
        ]
        md += [f"- explicit-attention torch run: `{pair['explicit']['command']}`"]
    with atomic_path(base.with_suffix(".md")) as tmp_md:
        tmp_md.write_text("\n".join(md) + "\n")
    print("\n".join(lines))
    print(f"wrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
