"""benchmarks/gpu_check.sh's Python half: exports within a budget, TensorRT plans, phase records.

    python benchmarks/gpu_check_prep.py exports --root W --budget 240 --json F \\
        --folder S/2:fp32:1,8,32 --folder XL/2:fp32:8,1,32 [--jobs 3] \\
        --random-weights --vae none --image-size 256
    python benchmarks/gpu_check_prep.py exports ... --folder tiny-digits:fp32:1 --vae none  # --dry-run
    python benchmarks/gpu_check_prep.py plans --root W --json F --folder S/2:fp16:1,8 ...
    python benchmarks/gpu_check_prep.py ready --json F --model S/2 --precision fp32  # "1 8" or ""
    python benchmarks/gpu_check_prep.py phase --stem STEM --name NAME --result R --seconds S [--file P]
    python benchmarks/gpu_check_prep.py summary --stem STEM --command CMD

exports: one folder per (model, precision, batch), named and made exactly as `bench` makes and
reuses them given the same model flags (`--random-weights --vae V --image-size S`: the script
passes bench's own) (`dit_export.bench.exports.folder_name` / `prepare_folder`, the ONNX Runtime check
skipped), in the order given. A folder is started only while the time left in the budget is at
least its estimate (the longest export of that model measured so far in this run, or the
`--estimate MODEL=SECONDS` prior: one XL/2 fp32 export took 182 s on the device's CPU, issue 25),
so S/2 comes first and XL/2 only when there is time for it. The JSON is rewritten (temp file,
rename) after every folder: a killed run keeps every finished one.

plans: `dit_export.engine.plans.build_plans` on each ready folder, seconds per graph.

phase / summary: `<stem>.phases.json` gets one entry per finished phase (rewritten atomically
as each phase ends), and `<stem>.md` / `<stem>.json` are re-rendered from it and from the phase
result files, so whatever was finished is on disk when the run is killed.

Needs only torch, numpy and this package (with the export's onnx / onnxscript / safetensors);
the VAE is `none` by default, so no diffusers.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.fileio import write_json  # noqa: E402

PRIOR_ESTIMATE_S = {"XL/2": 190.0}  # one XL/2 fp32 export: 182 s on the H100 machine's CPU (issue 25)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def parse_folder(text: str) -> tuple[str, str, list[int]]:
    """'S/2:fp32:1,8,32' → ('S/2', 'fp32', [1, 8, 32])."""
    try:
        model, precision, batches = text.split(":")
        return model, precision, [int(b) for b in batches.split(",") if b]
    except ValueError:
        raise SystemExit(f"error: --folder takes MODEL:PRECISION:B1,B2,..., got {text!r}") from None


def _spec(model: str, random_weights: bool, vae: str, image_size: int | None):
    from dit_export.models.spec import ModelSpec

    return ModelSpec(model=model, random_weights=random_weights, vae=vae, image_size=image_size).validate()


def _export_one(task: dict) -> dict:
    """One export in a worker process (bench's own function: the folder is the one bench reuses)."""
    from dit_export.bench.exports import prepare_folder

    return prepare_folder(task)


def cmd_exports(a: argparse.Namespace) -> int:
    from dit_export.bench.exports import folder_name

    t0 = time.monotonic()
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    prior = dict(PRIOR_ESTIMATE_S)
    for e in a.estimate:
        k, _, v = e.partition("=")
        prior[k] = float(v)
    measured: dict[str, float] = {}  # the longest export of each model so far in this run
    todo = []
    for text in a.folder:
        model, precision, batches = parse_folder(text)
        spec = _spec(model, a.random_weights, a.vae, a.image_size)
        for b in batches:
            out = root / folder_name(spec, precision, b)
            todo.append((model, precision, b, out, spec.to_dict()))
    doc = {"budget_s": a.budget, "started_utc": _now(), "root": str(root), "folders": []}
    write_json(a.json, doc)

    def record(entry: dict) -> None:
        doc["folders"].append(entry)
        doc["elapsed_s"] = round(time.monotonic() - t0, 1)
        write_json(a.json, doc)
        print(f"  {entry['model']} {entry['precision']} b{entry['batch']}: {entry['status']}"
              + (f" in {entry['seconds']:.0f} s" if entry.get("seconds") is not None else "")
              + (f" ({entry['reason']})" if entry.get("reason") else ""), flush=True)  # fmt: skip

    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=max(1, a.jobs), mp_context=ctx) as pool:
        running: dict[cf.Future, tuple] = {}
        queue = list(todo)
        while queue or running:
            while queue and len(running) < a.jobs:
                model, precision, b, out, spec = queue[0]
                left = a.budget - (time.monotonic() - t0)
                need = measured.get(model, prior.get(model, 0.0))
                if left < need:
                    queue.pop(0)
                    record({"model": model, "precision": precision, "batch": b, "folder": str(out),
                            "status": "skipped", "seconds": None,
                            "reason": f"{left:.0f} s left of the {a.budget:.0f} s exports budget; "
                                      f"a {model} export takes about {need:.0f} s"})  # fmt: skip
                    continue
                queue.pop(0)
                task = {"model": spec, "out": str(out), "precision": precision, "batch": b,
                        "families": ["torch"], "quick": True, "verbose": False}  # fmt: skip
                print(f"exporting {model} {precision} batch {b} → {out.name} ({left:.0f} s left)", flush=True)
                running[pool.submit(_export_one, task)] = (model, precision, b, out)
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                model, precision, b, out = running.pop(fut)
                try:
                    res = fut.result()
                    why = next((w for w in res["families"].values() if w), None)
                    secs = res["seconds"]
                except Exception as e:  # the worker died (out of memory, killed)
                    why, secs = f"export worker died: {type(e).__name__}: {e}", None
                if secs is not None and not why:
                    measured[model] = max(measured.get(model, 0.0), secs)
                record({"model": model, "precision": precision, "batch": b, "folder": str(out),
                        "status": "failed" if why else "ready",
                        "seconds": None if secs is None else round(secs, 1), "reason": why})  # fmt: skip
    doc["finished_utc"] = _now()
    write_json(a.json, doc)
    return 0


def ready_folders(path: Path, model: str | None = None, precision: str | None = None) -> list[dict]:
    doc = _read(path, {"folders": []})
    return [
        f for f in doc.get("folders", [])
        if f["status"] == "ready" and model in (None, f["model"]) and precision in (None, f["precision"])
    ]  # fmt: skip


def cmd_ready(a: argparse.Namespace) -> int:
    rows = ready_folders(Path(a.json), a.model, a.precision)
    if a.batch is not None:
        rows = [r for r in rows if r["batch"] == a.batch]
        print(rows[0]["folder"] if rows else "")
    else:
        print(" ".join(str(b) for b in sorted({r["batch"] for r in rows})))
    return 0


def cmd_plans(a: argparse.Namespace) -> int:
    """TensorRT plans for every ready folder asked for, timed per graph."""
    from dit_export.engine import trt_api
    from dit_export.engine.plans import Target, build_plans

    doc = {"started_utc": _now(), "folders": []}
    ok, why = trt_api.probe()
    if not ok:
        doc["skipped"] = why
        write_json(a.json, doc)
        print(f"plans: skipped: {why}")
        return 0
    target = Target.current()
    doc["target"] = target.describe()
    for text in a.folder:
        model, precision, batches = parse_folder(text)
        for b in batches:
            rows = [r for r in ready_folders(Path(a.exports), model, precision) if r["batch"] == b]
            entry: dict = {"model": model, "precision": precision, "batch": b}
            if not rows:
                entry.update(status="skipped", reason="no export (out of the exports budget or failed)")
            else:
                entry["folder"] = rows[0]["folder"]
                t0 = time.perf_counter()
                try:
                    built = build_plans(Path(rows[0]["folder"]), target, trt_api.BuildOptions(), log=print)
                    entry.update(status="built", seconds=round(time.perf_counter() - t0, 1),
                                 graphs={r.graph: {"result": r.result, "seconds": round(r.seconds, 1),
                                                   "bytes": r.bytes} for r in built})  # fmt: skip
                except Exception as e:
                    entry.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0]}")
            doc["folders"].append(entry)
            write_json(a.json, doc)
            print(f"  plans {model} {precision} b{b}: {entry['status']} "
                  f"{entry.get('seconds', '')} {entry.get('reason', '')}", flush=True)  # fmt: skip
    return 0 if all(f["status"] != "failed" for f in doc["folders"]) else 1


def cmd_phase(a: argparse.Namespace) -> int:
    path = Path(f"{a.stem}.phases.json")
    doc = _read(path, {"phases": []})
    doc["phases"] = [p for p in doc["phases"] if p["name"] != a.name]
    doc["phases"].append({"name": a.name, "result": a.result, "seconds": a.seconds,
                          "files": [os.path.basename(f) for f in a.file if Path(f).is_file()],
                          "ended_utc": _now()})  # fmt: skip
    write_json(path, doc)
    return 0


def _bench_lines(path: Path) -> list[str]:
    """One line per measured bench row: backend, batch, step ms, images/s, % of peak."""
    doc = _read(path, None)
    if not doc:
        return []
    out = []
    for r in doc.get("results", []):
        if r.get("status") != "measured":
            out.append(f"- {r.get('backend')} b{r.get('batch')}: {r.get('status')} ({r.get('reason')})")
            continue
        step, sample = r.get("step") or {}, r.get("sample") or {}
        pct = step.get("pct_of_peak")
        out.append(
            f"- {r['backend']} b{r['batch']}: step {step.get('median_ms', float('nan')):.2f} ms, "
            f"{sample.get('images_per_s', float('nan')):.3g} images/s"
            + (f", {step.get('tflops', 0):.1f} TFLOP/s = {pct:.1f} % of the {r.get('peak_class')} dense peak"
               if pct else "")
        )  # fmt: skip
    return out


def cmd_summary(a: argparse.Namespace) -> int:
    stem = Path(a.stem)
    phases = _read(Path(f"{stem}.phases.json"), {"phases": []})["phases"]
    lines = [f"# GPU check: {a.gpu} ({_now()})", "", f"Command: `{a.command}`; log: `{stem.name}.log`.", "",
             "| phase | result | seconds | files |", "|---|---|---|---|"]  # fmt: skip
    for p in phases:
        lines.append(f"| {p['name']} | {p['result']} | {p['seconds']} | {' '.join(p['files'])} |")
    exports = _read(Path(f"{stem}.exports.json"), None)
    if exports:
        lines += ["", "## Exports", ""]
        lines += [f"- {f['model']} {f['precision']} b{f['batch']}: {f['status']}"
                  + (f" in {f['seconds']} s" if f.get("seconds") is not None else "")
                  + (f" ({f['reason']})" if f.get("reason") else "") for f in exports["folders"]]  # fmt: skip
    for bench in sorted(stem.parent.glob(f"{stem.name}.bench*.json")):
        lines += ["", f"## {bench.name}", "", *_bench_lines(bench)]
    plans = _read(Path(f"{stem}.trt-plans.json"), None)
    if plans:
        lines += ["", "## TensorRT plans", ""]
        if plans.get("skipped"):
            lines.append(f"skipped: {plans['skipped']}")
        lines += [f"- {f['model']} {f['precision']} b{f['batch']}: {f['status']}"
                  + (f" in {f['seconds']} s" if f.get("seconds") is not None else "")
                  + (f" ({f['reason']})" if f.get("reason") else "") for f in plans["folders"]]  # fmt: skip
    verifies = sorted(stem.parent.glob(f"{stem.name}.verify-*.json"))
    if verifies:
        lines += ["", "## verify", ""]
    for verify in verifies:
        v = _read(verify, {})
        lines.append(f"- {verify.name}: {'passed' if v.get('passed') else 'FAILED'}")
    aoti = _read(Path(f"{stem}.aoti.json"), None)
    if aoti:
        lines += ["", "## AOTInductor", "", "```", json.dumps(aoti, indent=1), "```"]
    from dit_export.fileio import write_bytes

    write_bytes(f"{stem}.md", ("\n".join(lines) + "\n").encode())
    write_json(f"{stem}.json", {"gpu": a.gpu, "command": a.command,
                                "phases": {p["name"]: p["result"] for p in phases}})  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exports", help="export folders in order within a time budget")
    e.add_argument("--root", required=True)
    e.add_argument("--json", required=True)
    e.add_argument("--budget", type=float, required=True, help="seconds for all exports")
    e.add_argument("--folder", action="append", default=[], help="MODEL:PRECISION:B1,B2 (in order)")
    e.add_argument("--estimate", action="append", default=[], help="MODEL=SECONDS prior export time")
    e.add_argument("--jobs", type=int, default=1, help="exports at once (worker processes)")
    e.add_argument("--random-weights", action="store_true", help="seeded random weights (as bench's flag)")
    e.add_argument("--vae", default="none")
    e.add_argument("--image-size", type=int, default=None, help="default: the model's (256; tiny-digits: 32)")
    r = sub.add_parser("ready", help="the ready batches of a model and precision (or one folder)")
    r.add_argument("--json", required=True)
    r.add_argument("--model")
    r.add_argument("--precision")
    r.add_argument("--batch", type=int)
    pl = sub.add_parser("plans", help="TensorRT plans for ready folders")
    pl.add_argument("--exports", required=True, help="the exports JSON")
    pl.add_argument("--json", required=True)
    pl.add_argument("--folder", action="append", default=[], help="MODEL:PRECISION:B1,B2")
    ph = sub.add_parser("phase", help="record a finished phase")
    ph.add_argument("--stem", required=True)
    ph.add_argument("--name", required=True)
    ph.add_argument("--result", required=True)
    ph.add_argument("--seconds", type=int, required=True)
    ph.add_argument("--file", action="append", default=[])
    s = sub.add_parser("summary", help="render STEM.md and STEM.json from the phase records")
    s.add_argument("--stem", required=True)
    s.add_argument("--gpu", required=True)
    s.add_argument("--command", required=True)
    a = p.parse_args(argv)
    return {"exports": cmd_exports, "ready": cmd_ready, "plans": cmd_plans, "phase": cmd_phase,
            "summary": cmd_summary}[a.cmd](a)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
