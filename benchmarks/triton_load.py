"""Triton load benchmark: closed-loop tritonclient clients against a real tritonserver on 127.0.0.1.

Not a test. Writes a `triton-repo` repository for the engines folder (its defaults unless
--instances/--threads/--max-batch/--queue-delay-us are given), starts the `tritonserver` of the
nvidia-pytriton wheel from .venv-triton (`bash scripts/triton_smoke.sh --setup`) on 127.0.0.1 like
the smoke test, and runs each load: C clients, each one thread with its own
`tritonclient.http` client sending its next request as soon as the last one returns (closed
loop), for --duration seconds (and at most --max-requests each). Per load: images/s, request
latency p50/p95, errors, the server's rows per execution (`get_inference_statistics`: inference
and execution counts, and the batch sizes it executed), and the CPU the server's processes used.
Next to it, the in-process `Sampler` on the same folder at a full engine batch with every core
(`threads` = cores), measured in the same run before and after the loads. One request of more
images than the engine batch is checked bit-equal to the in-process sampler.

    python benchmarks/triton_load.py [--engines DIR] [--loads 16x1 12x1 4x4 8x1-7] [--duration 20]

A load `CxS`: C clients of S images per request; `CxA-B`: request sizes cycle through A..B.
Default engines: tiny-digits fp32 batch 10 for ONNX Runtime (built into --work). Writes
benchmarks/results/triton_load_<date>.{json,md}, with the machine and its load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.bench.machine import machine_info  # noqa: E402
from dit_export.fileio import atomic_path, write_json  # noqa: E402
from dit_export.host import usable_cpus  # noqa: E402
from dit_export.serve.launch import LOOPBACK, LocalTriton, engine_runs  # noqa: E402
from dit_export.serve.triton import DEFAULT_NAME, write_repository  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from triton_client import request_images, send_request  # noqa: E402  (scripts/triton_client.py)

MODEL = DEFAULT_NAME


def ensure_engines(path: Path | None, work: Path, batch: int) -> Path:
    """--engines, else tiny-digits built once into `work` (the export needs torch: this interpreter's
    when it has it, else the checkout's .venv)."""
    if path is not None:
        return path
    out = work / f"tiny-digits-fp32-b{batch}"
    if not (out / "manifest.json").exists():
        py = sys.executable if importlib.util.find_spec("torch") else str(ROOT / ".venv" / "bin" / "python")
        cmd = [py, "-m", "dit_export", "build", "--model", "tiny-digits", "--batch", str(batch)]
        cmd += ["--precision", "fp32", "--backend", "ort", "--no-verify", "--out", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def parse_load(text: str) -> tuple[int, tuple[int, ...]]:
    """'16x1' → (16, (1,)); '8x1-7' → (8, (1, 2, …, 7))."""
    try:
        c, s = text.lower().split("x")
        lo, _, hi = s.partition("-")
        sizes = tuple(range(int(lo), int(hi or lo) + 1))
        if int(c) < 1 or not sizes or sizes[0] < 1:
            raise ValueError
        return int(c), sizes
    except ValueError:
        raise argparse.ArgumentTypeError(f"load {text!r}: use CxS or CxA-B (e.g. 16x1, 8x1-7)") from None


def infer(client, labels, seed: int, a: argparse.Namespace) -> np.ndarray:
    return request_images(
        client, labels, seed, model=MODEL, cfg_scale=a.cfg_scale, steps=a.steps, sampler=a.sampler
    )


def server_stats(client) -> dict:
    s = client.get_inference_statistics(MODEL)["model_stats"][0]
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in s.get("batch_stats", [])}
    return {
        "rows": int(s.get("inference_count", 0)),
        "executions": int(s.get("execution_count", 0)),
        "batches": batches,
    }


def tree_cpu_seconds(pid: int) -> float:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_load(server: LocalTriton, clients: int, sizes: tuple[int, ...], a, num_classes: int) -> dict:
    """Closed loop: each client sends its next request when the last returns, until the deadline."""
    import tritonclient.http as http

    url, pid = server.http_url, server.proc.pid
    stats_client = http.InferenceServerClient(url)
    before, runs0 = server_stats(stats_client), engine_runs(server.read_metrics())
    lat: list[float] = []
    done: list[tuple[float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    t0_box = [0.0]

    def client_loop(i: int) -> None:
        c = http.InferenceServerClient(url, network_timeout=600.0, connection_timeout=600.0)
        start.wait()
        deadline = t0_box[0] + a.duration
        for k in range(a.max_requests):
            if time.monotonic() >= deadline:
                break
            n = sizes[(i + k) % len(sizes)]
            labels = [(i + k + j) % num_classes for j in range(n)]
            t = time.monotonic()
            try:
                img = infer(c, labels, seed=1000 * i + k, a=a)
                ok = img.shape[0] == n
                err = None if ok else f"{img.shape[0]} images for {n} rows"
            except Exception as e:  # noqa: BLE001 — counted, reported
                err = f"{type(e).__name__}: {str(e)[:120]}"
            t1 = time.monotonic()
            with lock:
                if err:
                    errors.append(err)
                else:
                    lat.append(t1 - t)
                    done.append((t1, n))
        c.close()

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    cpu0, box0 = tree_cpu_seconds(pid), psutil.cpu_times()
    t0_box[0] = t0 = time.monotonic()
    start.wait()
    for t in threads:
        t.join(timeout=a.duration + 600)
    wall = (max(t for t, _ in done) if done else time.monotonic()) - t0
    cpu1, box1 = tree_cpu_seconds(pid), psutil.cpu_times()
    after, runs1 = server_stats(stats_client), engine_runs(server.read_metrics())
    stats_client.close()
    runs = {k: n - runs0.get(k, 0) for k, n in sorted(runs1.items()) if n - runs0.get(k, 0)}
    engine_rows = sum(k * n for k, n in runs.items())
    rows = after["rows"] - before["rows"]
    execs = after["executions"] - before["executions"]
    batches = {b: n - before["batches"].get(b, 0) for b, n in after["batches"].items()}
    busy = lambda c: c.user + c.system + c.nice + getattr(c, "irq", 0) + getattr(c, "softirq", 0)  # noqa: E731
    images = sum(n for _, n in done)
    return {
        "load": f"{clients}x{sizes[0]}" + (f"-{sizes[-1]}" if len(sizes) > 1 else ""),
        "clients": clients,
        "sizes": list(sizes),
        "requests": len(done),
        "images": images,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": wall,
        "images_per_s": images / wall if wall > 0 else 0.0,
        "p50_ms": 1e3 * statistics.median(lat) if lat else None,
        "p95_ms": 1e3 * float(np.percentile(lat, 95)) if lat else None,
        "engine_runs": sum(runs.values()),
        "rows_per_engine_run": engine_rows / sum(runs.values()) if runs else None,
        "engine_run_rows": {str(k): n for k, n in runs.items()},
        "executions": execs,  # Triton's execute() calls: batches of requests handed to the model
        "rows_per_execution": rows / execs if execs else None,
        "batch_sizes": {str(b): n for b, n in sorted(batches.items()) if n},
        "server_cores_used": (cpu1 - cpu0) / wall if wall > 0 else None,
        "server_cpu_s_per_image": (cpu1 - cpu0) / images if images else None,
        "box_cores_busy": (busy(box1) - busy(box0)) / wall if wall > 0 else None,
    }


def in_process(engines: Path, workers: int, threads: int, a: argparse.Namespace) -> dict:
    """`workers` Samplers of `threads` threads each, in threads of this process, each running --repeat
    full engine batches at the same time: 1 × all cores is the plain in-process rate, the server's
    workers × threads its compute layout without Triton. images/s = workers × batch / the median run."""
    from dit_export.runtime import Sampler

    samplers = [
        Sampler.load(engines, "ort", providers=["CPUExecutionProvider"], threads=threads)
        for _ in range(workers)
    ]
    try:
        labels = [i % samplers[0].num_classes for i in range(samplers[0].batch)]
        fields = {"steps": a.steps, "cfg_scale": a.cfg_scale, "sampler": a.sampler, "seed": 0}
        for s in samplers:
            s.sample(labels, **{**fields, "steps": 2})  # warm-up: first-call costs out of the timing
        times: list[float] = []

        def run(s) -> None:
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                s.sample(labels, **fields)
                times.append(time.perf_counter() - t0)

        ts = [threading.Thread(target=run, args=(s,)) for s in samplers]
        cpu0 = tree_cpu_seconds(os.getpid())
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        cpu = tree_cpu_seconds(os.getpid()) - cpu0
    finally:
        for s in samplers:
            s.close()
    return {
        "workers": workers,
        "threads": threads,
        "batch": len(labels),
        "seconds": times,
        "images_per_s": workers * len(labels) / statistics.median(times),
        "cpu_s_per_image": cpu / (workers * a.repeat * len(labels)),
    }


def check_large_request(url: str, engines: Path, threads: int, a) -> dict:
    """One request of 2.5 engine batches: the server's images equal the in-process sampler's."""
    import tritonclient.http as http

    from dit_export.runtime import Sampler

    with Sampler.load(engines, "ort", providers=["CPUExecutionProvider"], threads=threads) as s:
        n = s.batch * 5 // 2
        labels = [(3 * i) % s.num_classes for i in range(n)]
        want = s.sample(labels, seed=42, steps=a.steps, cfg_scale=a.cfg_scale, sampler=a.sampler)
    c = http.InferenceServerClient(url, network_timeout=600.0)
    got = infer(c, labels, 42, a)
    c.close()
    return {"rows": n, "equal": bool(got.shape == want.shape and np.array_equal(got, want))}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_list(runs: list[dict]) -> str:
    return " / ".join(f"{b['cpu_s_per_image']:.3f}" for b in runs)


def markdown(r: dict) -> str:
    m, base = r["machine"], r["in_process_mean"]
    lines = [
        f"# Triton load: {r['engines_name']} on {m['cpu']}, {m['cpus']} CPUs ({r['date'][:10]})",
        "",
        f"- measured {r['date']}; 1/5/15-min load average {r['load_before']} before, {r['load_after']} after "
        "(the box is shared: other jobs' load lowers every rate and weighs on the ratios)",
        f"- model: {r['engines_name']}, engine batch {r['engine_batch']}, {r['sampler']} {r['steps']} steps, "
        f"cfg {r['cfg_scale']}; ONNX Runtime CPU",
        f"- repository (`triton-repo` {'defaults' if not r['overrides'] else ' '.join(r['overrides'])}): "
        f"{r['repo']['instances']} instance(s) × {r['repo']['workers']} worker(s) × {r['repo']['threads']} "
        f"thread(s), max batch "
        f"{r['repo']['max_batch']}, preferred {r['repo']['preferred']}, fill delay {r['repo']['fill_delay_us']} µs",
        f"- in-process Sampler, full batch of {r['engine_batch']}, {r['in_process'][0]['threads']} threads "
        f"(all cores): {r['in_process'][0]['images_per_s']:.2f} images/s before the loads, "
        f"{r['in_process'][1]['images_per_s']:.2f} after (mean {base:.2f}: the ratios' base)",
        f"- in-process, the server's layout without Triton ({r['repo']['workers']} Sampler(s) × "
        f"{r['repo']['threads']} thread(s) in threads of one process, full batches at once): "
        f"{r['in_process_workers'][0]['images_per_s']:.2f} before, {r['in_process_workers'][1]['images_per_s']:.2f} "
        f"after (mean {r['in_process_workers_mean']:.2f}: the base of `× in-process, same layout`)",
        "- CPU s / image (user + system, a measure of work that the box's load changes little): in-process "
        f"{cpu_list(r['in_process'])} ({r['in_process'][0]['threads']} threads), "
        f"{cpu_list(r['in_process_workers'])} (server layout); the server's processes: last column",
        f"- a request of {r['large_request']['rows']} images (engine batch {r['engine_batch']}) equal to the "
        f"in-process sampler: **{r['large_request']['equal']}**",
        f"- command: `{r['command']}`",
        "",
        "| load (clients × images) | images/s | × in-process | p50 ms | p95 ms | requests | errors | "
        "rows / engine run | engine runs by rows (rows×runs) | Triton rows / execution | server cores used | "
        "× in-process, same layout | server CPU s / image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for x in r["loads"]:
        runs = ", ".join(f"{b}×{n}" for b, n in x["engine_run_rows"].items())
        lines.append(
            f"| {x['load']} | {x['images_per_s']:.2f} | {x['images_per_s'] / base:.2f} | "
            f"{x['p50_ms'] or 0:.0f} | {x['p95_ms'] or 0:.0f} | {x['requests']} | {x['errors']} | "
            f"{x['rows_per_engine_run'] or 0:.1f} | {runs} | {x['rows_per_execution'] or 0:.1f} | "
            f"{x['server_cores_used'] or 0:.2f} | {x['images_per_s'] / r['in_process_workers_mean']:.2f} | "
            f"{x['server_cpu_s_per_image'] or 0:.3f} |"
        )
    lines += [
        "",
        "Engine runs: the model's row scheduler runs the sampler loop over one engine batch per run "
        "(Triton custom metric `dit_sampler_engine_runs{rows}`); Triton rows / execution: the requests "
        "Triton's dynamic batcher handed to one `execute()` (`get_inference_statistics`), which only queues them.",
    ]
    lines += ["", "Chosen by `triton-repo`:", "", *[f"- {s}" for s in r["repo"]["lines"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", type=Path, help="engines folder (default: tiny-digits built here)")
    p.add_argument("--batch", type=int, default=10, help="engine batch of the default tiny-digits build")
    p.add_argument(
        "--loads",
        type=parse_load,
        nargs="+",
        default=[parse_load(s) for s in ("16x1", "12x1", "4x4", "8x1-7")],
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds each load sends requests")
    p.add_argument("--max-requests", type=int, default=10_000, help="most requests per client and load")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--repeat", type=int, default=3, help="in-process full-batch runs (median), before, after")
    for flag in ("--instances", "--workers", "--threads", "--max-batch", "--queue-delay-us"):
        p.add_argument(flag, type=int, default=None, help="triton-repo's flag (default: its default)")
    p.add_argument("--venv", type=Path, default=Path(os.environ.get("TRITON_VENV", ROOT / ".venv-triton")))
    p.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dit_export_triton_load",
        help="folder for the default engines (built once, reused)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    p.add_argument("--tag", default=None, help="results file name part (default: the date)")
    a = p.parse_args(argv)
    overrides = [f"{f} {getattr(a, f[2:].replace('-', '_'))}" for f in ("--instances", "--workers", "--threads", "--max-batch", "--queue-delay-us") if getattr(a, f[2:].replace("-", "_")) is not None]  # fmt: skip

    engines = ensure_engines(a.engines, a.work, a.batch)
    if importlib.util.find_spec("geventhttpclient") is None:  # no tritonclient.http here: the server's env
        py = a.venv / "bin" / "python"
        if not py.exists():
            raise SystemExit(
                f"error: no tritonclient[http] here and no {py}: bash scripts/triton_smoke.sh --setup"
            )
        args = list(sys.argv[1:] if argv is None else argv)
        os.environ["DIT_EXPORT_TRITON_LOAD_ARGS"] = " ".join(args)  # the command as typed, for the results
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), *args, "--engines", str(engines)])
    with tempfile.TemporaryDirectory(prefix="triton_load_") as tmp:
        work = Path(tmp)
        load_before = loadavg()
        res = write_repository(
            engines, work / "repo", instances=a.instances, workers=a.workers, threads=a.threads, max_batch=a.max_batch,
            queue_delay_us=a.queue_delay_us, force=True,
        )  # fmt: skip
        print(res.summary(), flush=True)
        cfg = res.config
        threads = int(cfg.parameters["threads"].string_value)
        from dit_export.export.manifest import Manifest

        manifest = Manifest.read(engines, check_graphs=False)
        limit = int(60 + len(a.loads) * (a.duration + 120) + 300)
        server = LocalTriton(work / "repo", a.venv, limit_s=limit, metrics=True)
        ready = server.start()
        print(f"tritonserver on {server.http_url} ready after {ready:.1f} s", flush=True)
        assert server.http_url.startswith(LOOPBACK + ":")
        try:
            import tritonclient.http as http

            warm = http.InferenceServerClient(server.http_url, concurrency=cfg.instance_group[0].count)
            pend = [send_request(warm, [0] * manifest.batch, 0, model=MODEL, steps=2)
                    for _ in range(cfg.instance_group[0].count)]  # fmt: skip
            for q in pend:
                q.get_result()
            warm.close()
            cores = usable_cpus()
            workers = int(cfg.parameters["workers"].string_value)
            base = [in_process(engines, 1, cores, a)]
            layout = [in_process(engines, workers, threads, a)]
            print(
                f"in-process full batch: {base[0]['images_per_s']:.2f} images/s ({cores} threads); "
                f"{workers} × {threads}-thread Samplers: {layout[0]['images_per_s']:.2f}",
                flush=True,
            )
            loads = []
            for clients, sizes in a.loads:
                r = run_load(server, clients, sizes, a, manifest.num_classes)
                loads.append(r)
                print(
                    f"{r['load']}: {r['images_per_s']:.2f} images/s, p50 {r['p50_ms'] or 0:.0f} ms, "
                    f"{r['errors']} errors, {r['rows_per_engine_run'] or 0:.1f} rows/engine run "
                    f"{r['engine_run_rows']}, server {r['server_cores_used'] or 0:.2f} cores",
                    flush=True,
                )
            base.append(in_process(engines, 1, cores, a))
            layout.append(in_process(engines, workers, threads, a))
            large = check_large_request(server.http_url, engines, threads, a)
        finally:
            server.stop()
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "cpus": psutil.cpu_count(), "usable_cores": cores},
        "load_before": load_before,
        "load_after": loadavg(),
        "command": "python benchmarks/triton_load.py "
        + os.environ.get("DIT_EXPORT_TRITON_LOAD_ARGS", " ".join(sys.argv[1:] if argv is None else argv)),
        "engines_name": engines.name,
        "engine_batch": manifest.batch,
        "steps": a.steps,
        "sampler": a.sampler,
        "cfg_scale": a.cfg_scale,
        "overrides": overrides,
        "repo": {
            "instances": cfg.instance_group[0].count,
            "threads": threads,
            "workers": int(cfg.parameters["workers"].string_value),
            "max_batch": cfg.max_batch_size,
            "preferred": list(cfg.dynamic_batching.preferred_batch_size),
            "fill_delay_us": int(cfg.parameters["fill_delay_us"].string_value),
            "lines": [
                x.strip() for x in res.lines[1:] if not x.strip().startswith(("engines placed", "inputs "))
            ],
        },
        "in_process": base,
        "in_process_mean": statistics.mean(b["images_per_s"] for b in base),
        "in_process_workers": layout,
        "in_process_workers_mean": statistics.mean(b["images_per_s"] for b in layout),
        "loads": loads,
        "large_request": large,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"triton_load_{a.tag or result['date'][:10]}"
    write_json(stem.with_suffix(".json"), result)
    with atomic_path(stem.with_suffix(".md")) as tmp_md:
        tmp_md.write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
