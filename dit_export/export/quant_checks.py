"""Static checks of int8 / fp8 QDQ graphs (used by `analysis.analyze`; numpy + onnx only).

A GEMM counts as quantized when both its inputs are DequantizeLinear outputs of int8 (fp8)
tensors: that is the pattern ONNX Runtime fuses into integer kernels and TensorRT into int8/fp8
GEMMs. The checks: the quantized share of GEMM FLOPs, constant positive scales and zero points 0
(TensorRT's explicit quantization is symmetric), per-channel int8 weights, opset ≥ 19 for fp8,
and no Q/DQ in the embeddings or the final layer (the fp32 islands of `precision.QUANT_POLICIES`).
"""

from __future__ import annotations

import numpy as np

from dit_export.export import trt_ops
from dit_export.export.graphs import SCOPE_KEY
from dit_export.export.precision import INT8


def _fmt_list(items: list[str], limit: int = 4) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


_KEPT_SCOPES = ("t_embedder", "y_embedder", "final_layer")  # must stay fp32 (precision.QUANT_POLICIES)
QUANT_KEYS = frozenset({"int8", "float8e4m3fn"})  # GEMM FLOP keys of QDQ GEMMs (analysis.gemm_flops)


def kind(n, producers: dict, infos: dict) -> str | None:
    """'int8' / 'float8e4m3fn' for a GEMM whose two inputs are DequantizeLinear outputs, else None."""
    if n.op_type not in ("MatMul", "Gemm", "Conv") or len(n.input) < 2:
        return None
    kinds = set()
    for i in n.input[:2]:
        p = producers.get(i)
        if p is None or p.op_type != "DequantizeLinear":
            return None
        t = infos.get(p.input[0])
        kinds.add(t.dtype if t is not None else "?")
    return kinds.pop() if len(kinds) == 1 and next(iter(kinds)) in QUANT_KEYS else None


def checks(model, infos: dict, report, precision: str) -> list[tuple[str, bool, str]]:
    """int8 / fp8 QDQ graphs: quantized share, symmetric scales, per-channel weights, opset, fp32 paths."""
    from onnx import numpy_helper

    g = model.graph
    want = "int8" if precision == INT8 else "float8e4m3fn"
    share = report.quant_flop_share
    out = [
        (
            f"{precision} in graph",
            report.gemm_flops.get(want, 0.0) > 0 and share > 0.5,
            f"{100 * share:.1f} % of GEMM/conv FLOPs {want}",
        )
    ]
    inits = {i.name: i for i in g.initializer}
    bad, per_channel, weights = [], 0, 0
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(n.input[1]) if len(n.input) > 1 else None
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        if scale is None:
            bad.append(f"{n.name}: scale computed at run time")
            continue
        s = numpy_helper.to_array(scale).astype(np.float64)
        if not (np.isfinite(s).all() and (s > 0).all()):
            bad.append(f"{n.name}: scale not positive and finite")
        if zp is not None and zp.data_type == 3 and np.any(numpy_helper.to_array(zp) != 0):
            bad.append(f"{n.name}: zero point ≠ 0 (TensorRT needs symmetric int8)")
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            weights += 1
            per_channel += int(s.size > 1)
    out.append(
        (
            "symmetric scales",
            not bad,
            "every Q/DQ scale a positive finite constant, int8 zero points 0" if not bad else _fmt_list(bad),
        )
    )
    if precision == INT8:
        out.append(
            (
                "per-channel weights",
                weights > 0 and per_channel == weights,
                f"{per_channel} of {weights} int8 weights with one scale per output channel",
            )
        )
    else:
        out.append(
            (
                "fp8 opset",
                report.opset >= 19,
                f"opset {report.opset} (float8 Q/DQ needs ≥ 19; TensorRT 10 reads up to {trt_ops.OPSET_MAX})",
            )
        )
    producers = {o: n for n in g.node for o in n.output}
    scoped = [n for n in g.node if any(p.key == SCOPE_KEY for p in n.metadata_props)]
    leaked = [
        f"{n.op_type} {n.name}"
        for n in scoped
        if kind(n, producers, infos) is not None
        and any(p.key == SCOPE_KEY and p.value.startswith(_KEPT_SCOPES) for p in n.metadata_props)
    ]
    islands = ", ".join(report.quant_islands or {}) or "none"
    out.append(
        (
            "fp32 embeddings and final layer",
            bool(scoped) and not leaked,
            (f"fp32 GEMM islands: {islands}" if not leaked else f"quantized: {_fmt_list(leaked)}")
            if scoped
            else f"no {SCOPE_KEY} node metadata to check against",
        )
    )
    return out
