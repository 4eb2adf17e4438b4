"""Static facts about one exported graph: op counts, dtypes, weights, FLOPs, fp32 islands, checks.

Reads the graph structure only (never external weights), so it runs on XL/2 in a moment. Both
`export` (to refuse a bad graph and fill the manifest) and `inspect` (to report) use it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.export import quant_checks, trt_ops
from dit_export.export.graphs import SCOPE_KEY
from dit_export.export.manifest.dtypes import DTYPE_NAMES, ITEMSIZE
from dit_export.export.precision import FP16, POLICY, QUANTIZED, PrecisionPolicy
from dit_export.sampling.cache import CACHE_INPUT, CACHE_OUTPUT

# Ops that only move or view data: not "compute" for the island report.
_MOVEMENT = frozenset(
    "Cast CastLike Reshape Transpose Unsqueeze Squeeze Split Slice Concat Gather Identity Constant "
    "Expand Flatten Tile".split()
)
_GRAPH_IO_INPUT = {"float32", "int64"}
_GRAPH_IO_OUTPUT = {"float32"}
# the forecast cache may be float16 I/O (mixed-fp16 exports: precision.cache_dtype)
_CACHE_IO = {CACHE_INPUT: "float16", CACHE_OUTPUT: "float16"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class TensorInfo:
    name: str
    shape: list[int | str | None]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)


@dataclass
class GraphReport:
    file: str
    opset: int
    num_nodes: int
    op_counts: dict[str, int]
    tensor_dtypes: dict[str, int]
    param_bytes: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    gemm_flops: dict[str, float]  # per compute dtype, MatMul/Gemm/Conv FLOPs for one call
    fp32_islands: dict[str, dict] | None  # region → {"nodes", "ops"}; None for an all-fp32 graph
    checks: list[Check] = field(default_factory=list)
    # QDQ graphs: region → {"gemms", "gflops"} of every GEMM/conv that is not quantized
    quant_islands: dict[str, dict] | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def fp16_flop_share(self) -> float:
        total = sum(self.gemm_flops.values())
        return self.gemm_flops.get("float16", 0.0) / total if total else 0.0

    @property
    def quant_flop_share(self) -> float:
        """Share of GEMM/conv FLOPs whose two inputs are int8 or fp8 (DequantizeLinear outputs)."""
        total = sum(self.gemm_flops.values())
        q = sum(v for k, v in self.gemm_flops.items() if k in quant_checks.QUANT_KEYS)
        return q / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "opset": self.opset,
            "num_nodes": self.num_nodes,
            "op_counts": dict(self.op_counts),
            "tensor_dtypes": dict(self.tensor_dtypes),
            "param_bytes": dict(self.param_bytes),
            "gemm_flops": {k: float(v) for k, v in self.gemm_flops.items()},
            "fp16_flop_share": self.fp16_flop_share,
            "fp32_islands": self.fp32_islands,
            **(
                {"quant_flop_share": self.quant_flop_share, "quant_islands": self.quant_islands}
                if self.quant_islands is not None
                else {}
            ),
            "checks": [c.to_dict() for c in self.checks],
        }


def _dtype_name(elem_type: int) -> str:
    return DTYPE_NAMES.get(int(elem_type), f"onnx-type-{int(elem_type)}")


def _tensor_info(vi) -> TensorInfo:
    t = vi.type.tensor_type
    shape: list[int | str | None] = []
    if t.HasField("shape"):
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
    else:
        shape = [None]
    return TensorInfo(vi.name, shape, _dtype_name(t.elem_type))


def load_structure(path: str | Path):
    """The ModelProto without external weights (external initializers keep their dims)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path} is not an ONNX model ({first})") from None


def analyze(path: str | Path, precision: str | None = None, policy: PrecisionPolicy = POLICY) -> GraphReport:
    """Facts and static checks for the graph at `path` (`precision` enables the fp16 checks)."""
    path = Path(path)
    model = load_structure(path)
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    infos: dict[str, TensorInfo] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        infos[vi.name] = _tensor_info(vi)
    inits = {i.name: i for i in g.initializer}
    for name, init in inits.items():
        infos.setdefault(name, TensorInfo(name, [int(d) for d in init.dims], _dtype_name(init.data_type)))

    ops = Counter(n.op_type for n in g.node)
    dtypes = Counter(infos[n].dtype for n in infos)
    pbytes: Counter[str] = Counter()
    for init in inits.values():
        dt = _dtype_name(init.data_type)
        pbytes[dt] += int(np.prod(init.dims, dtype=np.int64)) * ITEMSIZE.get(dt, 1)

    def node_dtype(n) -> str | None:
        for name in list(n.output) + list(n.input):
            t = infos.get(name)
            if t is not None and t.dtype in ("float16", "float32", "bfloat16"):
                return t.dtype
        return None

    producers = {o: n for n in g.node for o in n.output}
    quantized = any(n.op_type == "DequantizeLinear" for n in g.node)
    flops: dict[str, float] = {}
    q_islands: dict[str, dict] | None = {} if quantized else None
    for n in g.node:
        f = _gemm_flops(n, infos)
        if f:
            key = quant_checks.kind(n, producers, infos) or node_dtype(n) or "?"
            flops[key] = flops.get(key, 0.0) + f
            if q_islands is not None and key not in quant_checks.QUANT_KEYS:
                scope = next((p.value for p in n.metadata_props if p.key == SCOPE_KEY), "")
                region = policy.region_of(scope)
                entry = q_islands.setdefault(region, {"gemms": 0, "gflops": 0.0, "dtype": key})
                entry["gemms"] += 1
                entry["gflops"] = round(entry["gflops"] + f / 1e9, 6)

    has_fp16 = any(t.dtype == "float16" for t in infos.values())
    islands: dict[str, dict] | None = None
    if has_fp16:
        islands = {}
        for n in g.node:
            if n.op_type in _MOVEMENT or node_dtype(n) != "float32":
                continue
            scope = next((p.value for p in n.metadata_props if p.key == SCOPE_KEY), "")
            region = policy.region_of(scope)
            entry = islands.setdefault(region, {"nodes": 0, "ops": {}})
            entry["nodes"] += 1
            entry["ops"][n.op_type] = entry["ops"].get(n.op_type, 0) + 1

    report = GraphReport(
        file=path.name,
        opset=opset,
        num_nodes=len(g.node),
        op_counts=dict(ops.most_common()),
        tensor_dtypes=dict(dtypes.most_common()),
        param_bytes=dict(pbytes.most_common()),
        inputs=[infos[i.name] for i in g.input if i.name not in inits],
        outputs=[infos[o.name] for o in g.output],
        gemm_flops=dict(flops),
        fp32_islands=islands,
        quant_islands=q_islands,
    )
    report.checks = _static_checks(model, infos, inits, report)
    if precision == FP16:
        report.checks += _fp16_checks(model, infos, report, node_dtype)
    if precision in QUANTIZED:
        report.checks += [Check(*c) for c in quant_checks.checks(model, infos, report, precision)]
    return report


def _gemm_flops(n, infos: dict[str, TensorInfo]) -> float:
    """2·MACs of a MatMul / Gemm / Conv from the inferred shapes (0 for other ops or unknown shapes)."""
    if n.op_type not in ("MatMul", "Gemm", "Conv") or not n.output:
        return 0.0
    out = infos.get(n.output[0])
    a = infos.get(n.input[0])
    b = infos.get(n.input[1]) if len(n.input) > 1 else None
    if out is None or a is None or b is None or not (out.static and a.static and b.static):
        return 0.0
    out_elems = math.prod(out.shape)  # type: ignore[arg-type]
    if n.op_type == "MatMul":
        k = a.shape[-1]
    elif n.op_type == "Gemm":
        trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
        k = a.shape[0] if trans_a else a.shape[-1]
    else:  # Conv: weight (M, C/group, k...)
        k = math.prod(b.shape[1:])  # type: ignore[arg-type]
    return 2.0 * out_elems * float(k)  # type: ignore[arg-type]


def _fmt_list(items: list[str], limit: int = 4) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _static_checks(model, infos: dict[str, TensorInfo], inits: dict, report: GraphReport) -> list[Check]:
    g = model.graph
    checks: list[Check] = []
    lo, hi = trt_ops.OPSET_MIN, trt_ops.OPSET_MAX
    other = sorted({o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")})
    checks.append(
        Check(
            "opset",
            lo <= report.opset <= hi and not other,
            f"opset {report.opset} (TensorRT 10.x reads {lo}–{hi})"
            + (f"; extra domains {other}" if other else ""),
        )
    )
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in g.node if n.domain not in ("", "ai.onnx")})
    unsupported = sorted({n.op_type for n in g.node if n.op_type not in trt_ops.TRT_SUPPORTED_OPS}) + foreign
    checks.append(
        Check(
            "tensorrt ops",
            not unsupported,
            f"all {len(report.op_counts)} op types in TensorRT's parser list"
            if not unsupported
            else f"not in TensorRT's list: {_fmt_list(unsupported)}",
        )
    )
    dynamic = sorted({n.op_type for n in g.node if n.op_type in trt_ops.FORBIDDEN_OPS})
    checks.append(
        Check(
            "no dynamic ops",
            not dynamic,
            "no " + "/".join(sorted(trt_ops.FORBIDDEN_OPS)) if not dynamic else f"found {_fmt_list(dynamic)}",
        )
    )
    return checks + _shape_checks(model, infos, inits, report)


def _shape_checks(model, infos: dict[str, TensorInfo], inits: dict, report: GraphReport) -> list[Check]:
    """Static shapes, constant shape inputs, graph I/O types and TensorRT's op restrictions."""
    g = model.graph
    checks: list[Check] = []
    produced = [o for n in g.node for o in n.output if o] + [i.name for i in g.input]
    unknown = [
        name
        for name in produced
        if name not in infos or not infos[name].static or infos[name].dtype == "undefined"
    ]
    checks.append(
        Check(
            "static shapes",
            not unknown,
            f"all {len(produced)} tensors have known dtype and shape"
            if not unknown
            else f"{len(unknown)} tensors without a static shape: {_fmt_list(unknown)}",
        )
    )
    nonconst = []
    for n in g.node:
        for idx in trt_ops.CONSTANT_INPUTS.get(n.op_type, ()):
            if idx < len(n.input) and n.input[idx] and n.input[idx] not in inits:
                nonconst.append(f"{n.op_type} {n.name}")
    checks.append(
        Check(
            "constant shape inputs",
            not nonconst,
            "every Reshape/Slice/Split/Unsqueeze/Reduce target is an initializer"
            if not nonconst
            else f"computed at run time: {_fmt_list(nonconst)}",
        )
    )

    def io_ok(t, allowed: set[str]) -> bool:
        return t.dtype in allowed or _CACHE_IO.get(t.name) == t.dtype

    bad_io = [f"input {t.name} {t.dtype}" for t in report.inputs if not io_ok(t, _GRAPH_IO_INPUT)]
    bad_io += [f"output {t.name} {t.dtype}" for t in report.outputs if not io_ok(t, _GRAPH_IO_OUTPUT)]
    checks.append(
        Check(
            "graph I/O types",
            not bad_io,
            "inputs float32/int64, outputs float32" if not bad_io else _fmt_list(bad_io),
        )
    )
    restricted = []
    for n in g.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "LayerNormalization" and len([o for o in n.output if o]) > 1:
            restricted.append(f"LayerNormalization {n.name} uses Mean/InvStdDev outputs")
        if n.op_type == "Resize":
            mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
            if mode not in trt_ops.RESIZE_MODES or ("antialias" in attrs and attrs["antialias"].i):
                restricted.append(f"Resize {n.name} mode {mode}")
    checks.append(
        Check(
            "tensorrt restrictions",
            not restricted,
            "LayerNormalization: Y only; Resize: nearest/linear, no antialias"
            if not restricted
            else _fmt_list(restricted),
        )
    )
    return checks


def _fp16_checks(model, infos: dict[str, TensorInfo], report: GraphReport, node_dtype) -> list[Check]:
    g = model.graph
    checks: list[Check] = []
    n16 = sum(1 for t in infos.values() if t.dtype == "float16")
    share = report.fp16_flop_share
    checks.append(
        Check(
            "fp16 in graph",
            n16 > 0 and share > 0.5,
            f"{n16} fp16 tensors, {100 * share:.1f} % of GEMM/conv FLOPs fp16",
        )
    )
    sincos = [n for n in g.node if n.op_type in ("Sin", "Cos")]
    t_nodes = [
        n
        for n in g.node
        if any(p.key == SCOPE_KEY and p.value.startswith("t_embedder") for p in n.metadata_props)
        and n.op_type not in _MOVEMENT
    ]
    # The sinusoid's MLP input: the first GEMMs downstream of Sin/Cos (found structurally, so the
    # check also holds for graphs whose node metadata another tool dropped).
    consumers_of: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers_of.setdefault(i, []).append(n)
    first_gemms: list = []
    frontier = [o for n in sincos for o in n.output]
    for _ in range(4):
        nxt = []
        for name in frontier:
            for c in consumers_of.get(name, []):
                if c.op_type in ("Gemm", "MatMul"):
                    if all(c is not f for f in first_gemms):
                        first_gemms.append(c)
                else:
                    nxt += list(c.output)
        frontier = nxt
    if sincos or t_nodes:
        t_nodes += [n for n in first_gemms if all(n is not t for t in t_nodes)]
        bad = [f"{n.op_type} {n.name}" for n in sincos + t_nodes if node_dtype(n) != "float32"]
        checks.append(
            Check(
                "fp32 timestep path",
                not bad,
                f"sinusoid and its MLP ({len(sincos) + len(t_nodes)} nodes) in fp32"
                if not bad
                else f"fp16: {_fmt_list(bad)}",
            )
        )
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    mixed = []
    softmaxes = [n for n in g.node if n.op_type == "Softmax"]
    for sm in softmaxes:
        region = [sm]
        p = producers.get(sm.input[0])
        while (
            p is not None
            and p.op_type not in ("MatMul", "Gemm")
            and p.op_type in ("Add", "Mul", "Div", "Cast")
        ):
            region.append(p)
            p = producers.get(p.input[0])
        if p is not None:
            region.append(p)
        region += [c for c in consumers.get(sm.output[0], []) if c.op_type == "MatMul"]
        kinds = {node_dtype(n) for n in region if n.op_type != "Cast"}
        casts = [n for n in region if n.op_type == "Cast"]
        if kinds != {"float16"} or casts:
            mixed.append(sm.name or "Softmax")
    if softmaxes:
        checks.append(
            Check(
                "uniform fp16 attention",
                not mixed,
                f"{len(softmaxes)} attention regions (logits, softmax, weighted sum) all fp16"
                if not mixed
                else f"mixed types in {len(mixed)} attention regions: {_fmt_list(mixed)}",
            )
        )
    return checks
