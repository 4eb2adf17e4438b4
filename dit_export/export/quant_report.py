"""What `inspect` prints for int8 / fp8 folders: the policy, the calibration set, and per graph the
quantized share of GEMM FLOPs, every GEMM island left in fp32, and the kernels ONNX Runtime CPU
picked for it (read back from the optimised model ORT writes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dit_export.errors import UserError
from dit_export.export.precision import INT8


def print_policy(policy: dict | None, out: Callable[[str], None]) -> None:
    if not policy:
        out("  quantization: no policy record in the manifest")
        return
    out(
        f"  quantization {policy.get('name')}: {policy.get('library')}, {policy.get('calibration_method')} "
        f"calibration; weights {policy.get('weights')}, activations {policy.get('activations')}"
    )
    out(f"    quantized: {', '.join(policy.get('quantized', []))} ({'/'.join(policy.get('op_types', []))})")
    out(f"    kept fp32: {', '.join(policy.get('higher_precision', []))}")
    cal = policy.get("calibration") or {}
    if cal:
        s = cal.get("settings") or {}
        out(
            f"    calibration set: {cal.get('file')} {cal.get('bytes', 0) / 1e6:.1f} MB, {cal.get('calls')} step "
            f"calls ({s.get('sampler')}-{s.get('steps')}, seeds {s.get('seeds')}, cfg {s.get('cfg_scale')}), "
            f"captured in {cal.get('capture_seconds')} s"
        )
        c = cal.get("cache")
        if c:
            out(
                f"    dit_step_full calibrated with the cache {'on' if c.get('settings') else 'off'}: "
                f"{c.get('full_calls')} full-step calls ({c.get('source')})"
            )
    for name, g in (policy.get("graphs") or {}).items():
        if g.get("nodes") == 0:
            out(f"    {name}: not quantized ({g.get('why')})")


def print_graph(rep, precision: str | None, out: Callable[[str], None], path: Path | None = None) -> None:
    out(f"  quantized GEMM/conv FLOPs: {100 * rep.quant_flop_share:.2f} %")
    for region, e in (rep.quant_islands or {}).items():
        out(f"    - not quantized: {region}: {e['gemms']} GEMM/conv, {e['gflops']:.4f} GFLOP ({e['dtype']})")
    if path is not None and precision == INT8:
        from dit_export.export.quantize import KERNEL_OPS, ort_kernels

        try:
            k = ort_kernels(path, precision)
        except UserError as e:
            out(f"  ONNX Runtime CPU kernels: n/a ({e})")
            return
        picked = ", ".join(f"{op} {k[op]}" for op in KERNEL_OPS if op in k) or "no integer GEMM kernel"
        out(
            f"  ONNX Runtime CPU kernels (after its graph optimisations): {picked}; fp32 Gemm {k.get('Gemm', 0)}"
        )
