"""Client of the Triton sampler model written by `python -m dit_export triton-repo` (tritonclient.http).

Example (a server on this host, see docs/triton.md):

    python scripts/triton_client.py --url 127.0.0.1:8000 --classes 207 360 --seed 0 --steps 50 --out dogs.png

Needs only `pip install 'tritonclient[http]' pillow numpy` (no dit_export). One request carries
one row per image; the rows of a request share seed, cfg scale, steps and sampler here, so the
images equal `python -m dit_export sample --engines E --classes 207 360 --seed 0 --steps 50`.

`smoke` (used by scripts/triton_smoke.sh) waits for the server, sends two concurrent requests,
compares them with `dit_export sample --backend ort` on the same engines folder, and checks that
bad input comes back as an error response while the model keeps serving. `batching` (used by
tests/serve/test_triton.py, needs dit_export) reads the model config back, runs 12 concurrent
single-image clients and one request of 2.5 engine batches, and prints one JSON line: the
config, the engine runs by filled rows (the server's metrics) and whether every image equals the
in-process `Sampler.sample`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "dit_sampler"


def make_inputs(labels, seed: int, cfg_scale: float | None = None, steps: int | None = None, sampler=None):
    """The model's inputs for one request: one row per label (optional fields only when given)."""
    import tritonclient.http as http

    n = len(labels)
    cols = [
        ("class_label", np.asarray(labels, dtype=np.int64).reshape(n, 1), "INT64"),
        ("seed", np.full((n, 1), seed, dtype=np.uint64), "UINT64"),
    ]
    if cfg_scale is not None:
        cols.append(("cfg_scale", np.full((n, 1), cfg_scale, dtype=np.float32), "FP32"))
    if steps is not None:
        cols.append(("steps", np.full((n, 1), steps, dtype=np.int32), "INT32"))
    if sampler is not None:
        cols.append(("sampler", np.full((n, 1), sampler.encode(), dtype=object), "BYTES"))
    inputs = []
    for name, data, dtype in cols:
        i = http.InferInput(name, list(data.shape), dtype)
        i.set_data_from_numpy(data)
        inputs.append(i)
    return inputs


def request_images(client, labels, seed: int, *, model: str = DEFAULT_MODEL, **fields) -> np.ndarray:
    """uint8 images (N, H, W, 3) for N labels, or tritonclient's InferenceServerException."""
    import tritonclient.http as http

    out = [http.InferRequestedOutput("image", binary_data=True)]
    res = client.infer(model, make_inputs(labels, seed, **fields), outputs=out)
    return res.as_numpy("image")


def send_request(client, labels, seed: int, *, model: str = DEFAULT_MODEL, **fields):
    """Start one request without waiting (`.get_result().as_numpy("image")` waits); the http client
    is not thread-safe: concurrency comes from its own pool (InferenceServerClient(concurrency=K))."""
    import tritonclient.http as http

    out = [http.InferRequestedOutput("image", binary_data=True)]
    return client.async_infer(model, make_inputs(labels, seed, **fields), outputs=out)


def save_png(images: np.ndarray, path: str | os.PathLike) -> Path:
    """The images side by side in one PNG."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(np.concatenate(list(images), axis=1)).save(path)
    return path


def wait_ready(client, model: str, timeout: float, server_pid: int | None = None) -> float:
    """Seconds until server and model are ready; RuntimeError after `timeout` or if the server exits."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if server_pid is not None:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                raise RuntimeError("tritonserver exited before it was ready (see its log)") from None
        try:
            if client.is_server_ready() and client.is_model_ready(model):
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 — not listening yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s")


def reference(
    engines: str, labels, seed: int, steps: int, sampler: str, cfg: float, work: Path
) -> np.ndarray:
    """`python -m dit_export sample --backend ort` for the same request (uint8 N×H×W×3)."""
    npz = work / f"ref-{seed}.npz"
    cmd = [sys.executable, "-m", "dit_export", "sample", "--engines", engines, "--backend", "ort"]
    cmd += ["--classes", *map(str, labels), "--seed", str(seed), "--steps", str(steps)]
    cmd += ["--sampler", sampler, "--cfg-scale", str(cfg), "--no-progress"]
    cmd += ["--out", str(work / f"ref-{seed}.png"), "--save-images", str(npz)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"dit_export sample failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return np.load(npz)["arr_0"]


def expect_error(client, model: str, needle: str, labels, seed: int, **fields) -> str:
    from tritonclient.utils import InferenceServerException

    try:
        request_images(client, labels, seed, model=model, **fields)
    except InferenceServerException as e:
        text = str(e)
        if needle not in text:
            raise RuntimeError(f"error response without {needle!r}: {text}") from None
        return text
    raise RuntimeError(f"bad input {labels} {fields} was served instead of refused")


def smoke(args: argparse.Namespace) -> int:
    import tritonclient.http as http

    client = http.InferenceServerClient(args.url, concurrency=2, network_timeout=600.0)
    ready = wait_ready(client, args.model, args.ready_timeout, args.server_pid)
    print(f"server ready after {ready:.1f} s")
    cases = [((1, 2, 3), 7), ((4,), 11)]  # two requests of different sizes, different seeds
    steps, sampler, cfg = args.steps, "ddpm", 4.0
    t0 = time.monotonic()
    fields = {"cfg_scale": cfg, "steps": steps, "sampler": sampler}
    pending = [send_request(client, list(lab), seed, model=args.model, **fields) for lab, seed in cases]
    got = [p.get_result().as_numpy("image") for p in pending]
    stats = client.get_inference_statistics(args.model)["model_stats"][0]
    print(
        f"server statistics: {stats.get('inference_count', 0)} rows in {stats.get('execution_count', 0)} "
        f"execute() call(s) for {len(cases)} requests (execute() queues rows; the model's workers fill the engine runs)"
    )
    print(
        f"2 concurrent requests ({sum(len(lab) for lab, _ in cases)} images, {steps} steps) in "
        f"{time.monotonic() - t0:.2f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for (lab, seed), images in zip(cases, got):
            ref = reference(args.engines, lab, seed, steps, sampler, cfg, Path(tmp))
            if images.shape != ref.shape or images.dtype != np.uint8 or not np.array_equal(images, ref):
                diff = (
                    np.abs(images.astype(int) - ref.astype(int)).max() if images.shape == ref.shape else "-"
                )
                raise RuntimeError(
                    f"labels {lab} seed {seed}: server images {images.shape} {images.dtype} differ from "
                    f"dit_export sample {ref.shape} (max |diff| {diff})"
                )
    print("server images equal dit_export sample --backend ort")
    e1 = expect_error(client, args.model, "class id 99", [1, 99], 0, steps=steps)
    e2 = expect_error(client, args.model, "steps 0", [1], 0, steps=0)
    print(f"bad input refused: {e1.splitlines()[0][:100]} | {e2.splitlines()[0][:100]}")
    again = request_images(client, [5], 3, model=args.model, steps=2)
    if again.shape[0] != 1:
        raise RuntimeError(f"after the bad requests the model answered {again.shape}")
    print("model still serving after the bad requests")
    return 0


def batching(args: argparse.Namespace) -> int:
    import json
    import threading
    import urllib.request

    import tritonclient.http as http

    from dit_export.runtime import Sampler
    from dit_export.serve.launch import engine_runs

    def runs() -> dict[int, int]:
        with urllib.request.urlopen(f"http://{args.metrics}/metrics", timeout=10) as r:
            return engine_runs(r.read().decode(), args.model)

    cfg = http.InferenceServerClient(args.url).get_model_config(args.model)
    params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
    runs0, got, errors = runs(), {}, []
    barrier = threading.Barrier(args.clients)

    def client(i: int) -> None:
        c = http.InferenceServerClient(args.url, network_timeout=600.0)
        c.is_model_ready(args.model)  # connected before the barrier: the requests leave together
        barrier.wait()
        for k in range(args.rounds):
            key = (i % 10, 100 * k + i)
            try:
                got[key] = request_images(c, [key[0]], key[1], model=args.model, steps=args.steps)
            except Exception as e:  # noqa: BLE001 — reported
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    after = runs()
    delta = {r: n - runs0.get(r, 0) for r, n in sorted(after.items()) if n - runs0.get(r, 0)}
    big = [(3 * i) % 10 for i in range(args.large)]
    large = request_images(http.InferenceServerClient(args.url, network_timeout=600.0), big, 42, model=args.model, steps=args.steps)  # fmt: skip
    threads_cfg = int(params.get("threads", "0") or 0)
    with Sampler.load(args.engines, "ort", providers=["CPUExecutionProvider"], threads=threads_cfg) as s:
        equal = all(
            np.array_equal(img, s.sample([c], seed=seed, steps=args.steps)) for (c, seed), img in got.items()
        )
        want = s.sample(big, seed=42, steps=args.steps)
    out = {
        "config": {
            "max_batch_size": cfg.get("max_batch_size"),
            "instance_group": cfg.get("instance_group"),
            "dynamic_batching": cfg.get("dynamic_batching"),
            "parameters": params,
        },
        "engine_runs": {str(r): n for r, n in delta.items()},
        "responses": len(got),
        "errors": errors[:3],
        "equal_to_sample": bool(got) and equal,
        "large_shape": list(large.shape),
        "large_equal_to_sample": bool(large.shape == want.shape and np.array_equal(large, want)),
    }
    print(json.dumps(out))
    return 0


def example(args: argparse.Namespace) -> int:
    import tritonclient.http as http

    client = http.InferenceServerClient(args.url, network_timeout=600.0)
    fields = {"cfg_scale": args.cfg_scale, "steps": args.steps, "sampler": args.sampler}
    t0 = time.monotonic()
    images = request_images(client, args.classes, args.seed, model=args.model, **fields)
    path = save_png(images, args.out)
    print(
        f"{len(images)} images {images.shape[1]}×{images.shape[2]} in {time.monotonic() - t0:.2f} s → {path}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="127.0.0.1:8000", help="HTTP endpoint host:port (default 127.0.0.1:8000)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    sub = p.add_subparsers(dest="cmd")
    p.add_argument("--classes", type=int, nargs="+", default=[0], help="class ids, one image each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the model's (4)")
    p.add_argument("--steps", type=int, default=None, help="default: the model's (250)")
    p.add_argument("--sampler", default=None, help="ddpm | ddim | dpm++2m | unipc (default: the model's)")
    p.add_argument("--out", default="triton_sample.png", help="PNG to write (images side by side)")
    s = sub.add_parser("smoke", help="the checks of scripts/triton_smoke.sh")
    s.add_argument("--engines", required=True, help="the folder the server serves (for dit_export sample)")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--ready-timeout", type=float, default=180.0)
    s.add_argument("--server-pid", type=int, default=None)
    b = sub.add_parser("batching", help="the batching checks of tests/serve/test_triton.py (one JSON line)")
    b.add_argument("--engines", required=True, help="the folder the server serves (for Sampler.sample)")
    b.add_argument("--metrics", required=True, help="the server's metrics endpoint host:port")
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--clients", type=int, default=12, help="concurrent single-image clients")
    b.add_argument("--rounds", type=int, default=3, help="requests per client, one after another")
    b.add_argument("--large", type=int, default=25, help="images in the one large request")
    args = p.parse_args(argv)
    try:
        return {"smoke": smoke, "batching": batching}.get(args.cmd, example)(args)
    except Exception as e:  # noqa: BLE001 — one line for the smoke script's last line
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
