"""The DiT forward through AOTInductor on CUDA against eager PyTorch (benchmarks/gpu_check.sh, phase 3).

    python benchmarks/aoti_cuda.py --model XL/2 --batch 8 --device cuda --json out.json
    python benchmarks/aoti_cuda.py --model tiny-digits --batch 1 --device cpu --no-compile  # plumbing only

Random weights (seeded) at 256 px, or a shipped model's own weights and size (tiny-digits: 32 px);
one guided forward (2N rows: conditional + null labels); the package is compiled from
`torch.export` of the same module the ONNX export traces. Reports eager and AOTI
latency (median of --repeat calls after --warmup), the speed-up, and max |Δ| between the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dit_export.models.embedded import is_embedded
from dit_export.models.spec import ModelSpec


def timed(fn, inputs, warmup: int, repeat: int, device: str) -> tuple[float, torch.Tensor]:
    """(median ms, last output) of `fn(*inputs)`."""
    out = None
    times = []
    for i in range(warmup + repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fn(*inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    assert out is not None
    return statistics.median(times), out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="XL/2")
    p.add_argument("--batch", type=int, default=8, help="images N (the forward runs 2N rows)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="stop after torch.export (plumbing check)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("aoti: no CUDA device; nothing to measure")
        return 1

    spec = ModelSpec(model=args.model, random_weights=not is_embedded(args.model), vae="none").validate()
    model, cfg = spec.load_dit()
    model = model.to(args.device).eval()
    rows = 2 * args.batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g).to(args.device)
    t = torch.full((rows,), 500, dtype=torch.int64, device=args.device)
    y = torch.arange(rows, dtype=torch.int64, device=args.device) % cfg.num_classes
    y[args.batch :] = cfg.num_classes  # the null class for the unconditional half
    result: dict = {"model": cfg.name, "batch": args.batch, "rows": rows, "device": args.device}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    eager_ms, ref = timed(model, (x, t, y), args.warmup, args.repeat, args.device)
    result["eager_fp32_ms"] = round(eager_ms, 3)
    t0 = time.perf_counter()
    program = torch.export.export(model, (x, t, y), strict=False)
    result["export_s"] = round(time.perf_counter() - t0, 1)
    if args.no_compile:
        result["aoti"] = "not compiled (--no-compile)"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(tmp) / "dit.pt2"))
            result["compile_s"] = round(time.perf_counter() - t0, 1)
            runner = torch._inductor.aoti_load_package(path)
            aoti_ms, out = timed(runner, (x, t, y), args.warmup, args.repeat, args.device)
        result["aoti_fp32_ms"] = round(aoti_ms, 3)
        result["speedup_vs_eager"] = round(eager_ms / aoti_ms, 3)
        result["max_abs_diff"] = float((out - ref).abs().max())
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
