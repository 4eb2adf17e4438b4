"""int8 (W8A8) and fp8 (E4M3) graphs: post-training quantization of the exported fp32 DiT graphs.

The library is ONNX Runtime's `quantize_static` in QDQ format, the format both ONNX Runtime CPU
(which fuses `DQ → MatMul` into MatMulIntegerToFloat / QLinearMatMul kernels) and TensorRT
(explicit quantization) execute. NVIDIA ModelOpt's ONNX PTQ was the other candidate; on this
project's CPU machines `pip install nvidia-modelopt[onnx]` replaces onnxruntime 1.32 by
onnxruntime-gpu 1.24 and onnx 1.23 by 1.21 (checked with `pip install --dry-run`), so it is not
a dependency here (see benchmarks/results/int8.md).

What is quantized and what stays fp32 is `precision.QUANT_POLICIES` (one place); calibration data
is `calibrate` (real trajectories, every step; the forecast cache's full-step graph on cached
trajectories, cache on). The VAE decoder stays fp32, and so does `dit_step_forecast`: it runs no
attention or MLP, so none of its GEMMs (patch embedding, timestep MLP, adaLN modulation, final
layer) is one the policy quantizes — it reads the int8 full step's cache. Flow inside the
exporter's staging folder: fp32 graphs saved and statically checked → calibration set (reused
when unchanged) → each DiT graph quantized into a temporary file, shape-inferred and checked,
then renamed over the fp32 one; the shared fp32 weights file goes once no graph references it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dit_export.errors import UserError
from dit_export.export import analysis
from dit_export.export.graphs import SCOPE_KEY, SavedGraph
from dit_export.export.precision import FP8, FP32, INT8, QUANT_POLICIES, QUANTIZED, QuantPolicy
from dit_export.fileio import sha256_file
from dit_export.lazy import optional_import
from dit_export.sampling.cache import CACHE_INPUT, FORECAST_GRAPH, FULL_GRAPH

if TYPE_CHECKING:  # calibrate imports torch (the capture); `inspect` needs only graph_precision
    from dit_export.export.calibrate import CalibSet

QUANTIZED_GRAPHS = ("dit_step", "dit", FULL_GRAPH)  # the VAE decoder and the forecast graph stay fp32
FLOAT_DIT_GRAPHS = (FORECAST_GRAPH,)  # DiT graphs without a GEMM the policy quantizes (checked in `apply`)
MIN_FP8_OPSET = 19  # QuantizeLinear/DequantizeLinear take float8 types from opset 19


def is_quantized(precision: str) -> bool:
    return precision in QUANTIZED


def graph_precision(graph: str, precision: str) -> str:
    """The precision of one graph of a folder: int8/fp8 folders quantize the DiT graphs only."""
    return precision if graph in QUANTIZED_GRAPHS or not is_quantized(precision) else FP32


def export_options(o):
    """The options an int8/fp8 export really runs with: opset ≥ 19 for fp8. Others unchanged (the
    forecast-cache graphs are written as for fp32, `--max-cache-order none` leaves them out)."""
    if is_quantized(o.precision) and o.precision == FP8 and o.opset < MIN_FP8_OPSET:
        return dataclasses.replace(o, opset=MIN_FP8_OPSET)
    return o


def traced(o):
    """The options the fp32 graphs are traced and statically checked with (quantization follows)."""
    return dataclasses.replace(o, precision=FP32) if is_quantized(o.precision) else o


def prepare(model, o, spec, stages) -> CalibSet | None:
    """The calibration set (None for fp32/fp16): the folder's stored one when unchanged, else captured
    (`spec`: the validated ModelSpec; `stages`: the exporter's stage timer and log)."""
    if not is_quantized(o.precision):
        return None
    from dit_export.export.calibrate import CALIB_FILE, CalibSettings, load_or_capture  # torch

    settings = getattr(o, "calibration", None) or CalibSettings()
    slots = getattr(o, "cache_slots", 0)
    cached = f"; cache graphs: (N, O) {[list(p) for p in settings.cache] or 'cache off'}" if slots else ""
    stages.begin(
        f"calibration set ({settings.sampler}-{settings.steps}, seeds {list(settings.seeds)}{cached})"
    )
    calib, _ = load_or_capture(
        Path(o.out) / CALIB_FILE, model, o.batch, settings, spec.to_dict(), stages.log, cache_slots=slots
    )
    stages.end("calibrate")
    return calib


def node_names(path: Path, policy: QuantPolicy) -> list[str]:
    """The MatMul/Gemm nodes the policy quantizes, found by their `dit_export.scope` metadata."""
    model = analysis.load_structure(path)
    names = []
    for n in model.graph.node:
        scope = next((p.value for p in n.metadata_props if p.key == SCOPE_KEY), "")
        if policy.quantizes(scope, n.op_type):
            names.append(n.name)
    return names


CACHE_NOT_STORED = (
    "reaches no quantized GEMM of dit_step_full (checked on the graph): fed as zeros, same ranges"
)


def quantized_nodes_reached(path: Path, input_name: str, policy: QuantPolicy) -> list[str]:
    """The policy's GEMM nodes that graph input `input_name` reaches (forward through every node)."""
    model = analysis.load_structure(path)
    live, reached = {input_name}, []
    quantized = set(node_names(path, policy))
    for n in model.graph.node:  # ONNX nodes are topologically sorted
        if live.intersection(n.input):
            live.update(n.output)
            if n.name in quantized:
                reached.append(n.name)
    return reached


def quantize_graph(src: Path, dst: Path, calib: CalibSet, graph: str, precision: str) -> dict:
    """Write the QDQ graph of `src` to `dst`; what was done, as a record."""
    q = optional_import("onnxruntime.quantization", "pip install onnxruntime")
    onnx = optional_import("onnx")
    policy = QUANT_POLICIES[precision]
    nodes = node_names(src, policy)
    if not nodes:
        raise UserError(f"{src.name}: no node carries a quantizable scope ({SCOPE_KEY} metadata missing?)")

    onnx_types = {i.name: i.type.tensor_type.elem_type for i in analysis.load_structure(src).graph.input}
    np_types = {k: onnx.helper.tensor_dtype_to_np_dtype(v) for k, v in onnx_types.items()}

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = calib.feeds(graph)

        def get_next(self):  # fed as the graph declares (a float16 cache I/O, say)
            feed = next(self.it, None)
            return None if feed is None else {k: v.astype(np_types[k], copy=False) for k, v in feed.items()}

    int8 = precision == INT8
    qtype = q.QuantType.QInt8 if int8 else q.QuantType.QFLOAT8E4M3FN
    t0 = time.perf_counter()
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing": shapes are already inferred
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress lines
            q.quantize_static(
                str(src),
                str(dst),
                Reader(),
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(policy.op_types),
                nodes_to_quantize=nodes,
                per_channel=int8,  # int8: per output channel; fp8: per tensor (E4M3's range needs no more)
                activation_type=qtype,
                weight_type=qtype,
                # int8: min/max over every step of every trajectory; fp8 calibrates by distribution only
                calibrate_method=q.CalibrationMethod.MinMax if int8 else q.CalibrationMethod.Distribution,
                extra_options={
                    "ActivationSymmetric": True,  # zero point 0: TensorRT's explicit quantization
                    "WeightSymmetric": True,
                    "OpTypesToExcludeOutputQuantization": list(policy.op_types),  # GEMM outputs stay fp32
                },
            )
    except Exception as e:  # the library's errors: one line naming the graph
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"quantizing {src.name} to {precision} failed: {first}") from None
    finally:
        logging.getLogger().setLevel(quiet)
    model = onnx.load(str(dst))
    model.producer_name = "dit_export"
    _restore_scopes(model, analysis.load_structure(src))
    onnx.save(model, str(dst))
    del model
    onnx.shape_inference.infer_shapes_path(
        str(dst), str(dst), check_type=True, strict_mode=True, data_prop=True
    )
    onnx.checker.check_model(str(dst), full_check=False)
    return {"nodes": len(nodes), "seconds": round(time.perf_counter() - t0, 3)}


def _restore_scopes(model, source) -> None:
    """Copy each node's `dit_export.scope` from the fp32 graph (by node name): the opset upgrade
    of the fp8 path drops node metadata, and `inspect` names the fp32 islands by it."""
    scopes = {n.name: p.value for n in source.graph.node for p in n.metadata_props if p.key == SCOPE_KEY}
    for n in model.graph.node:
        if n.name in scopes and not any(p.key == SCOPE_KEY for p in n.metadata_props):
            entry = n.metadata_props.add()
            entry.key, entry.value = SCOPE_KEY, scopes[n.name]


def apply(
    saved: dict[str, SavedGraph],
    reports: dict[str, analysis.GraphReport],
    calib: CalibSet | None,
    o,
    tmp: Path,
    stages,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, SavedGraph], dict[str, analysis.GraphReport]]:
    """Quantize the DiT graphs in `tmp` in place (no-op for fp32/fp16); re-analysed reports."""
    if calib is None or not is_quantized(o.precision):
        return saved, reports
    from dit_export.export.calibrate import CALIB_FILE

    tmp = Path(tmp)
    policy = QUANT_POLICIES[o.precision]
    if FULL_GRAPH in saved and calib.full:
        reached = quantized_nodes_reached(saved[FULL_GRAPH].path, CACHE_INPUT, policy)
        if not reached:  # then no calibrated range depends on the cache: store none of it
            calib = calib.without_cache(CACHE_NOT_STORED)
        elif calib.full[CACHE_INPUT].shape[3] == 0:
            raise UserError(
                f"{FULL_GRAPH}.onnx: the cache reaches quantized GEMMs ({reached[0]}, …) but the stored "
                f"calibration set has no cache: re-export with --force to recapture it"
            )
    calib.save(tmp / CALIB_FILE)
    float_graphs: dict[str, dict] = {}
    done: dict[str, dict] = {}
    for name in FLOAT_DIT_GRAPHS:  # nothing there to quantize: say so in the record, prove it here
        if name in saved:
            if node_names(saved[name].path, policy):
                raise UserError(
                    f"{name}.onnx has GEMMs the {policy.name} policy quantizes: it is not calibrated"
                )
            float_graphs[name] = {"nodes": 0, "precision": FP32, "why": FLOAT_WHY}
    for name in QUANTIZED_GRAPHS:
        if name not in saved:
            continue
        src = saved[name].path
        dst = src.with_name(f".{src.stem}.{o.precision}.onnx")
        calls = calib.full_calls if name == FULL_GRAPH else calib.calls
        stages.begin(f"quantizing {src.name} to {o.precision} ({calls} calibration calls)")
        done[name] = quantize_graph(src, dst, calib, name, o.precision)
        done[name]["calibration_calls"] = calls
        stages.end(f"quantize {name}")
    old_data = {f for name in done for f in saved[name].external_data}
    for name in done:
        src = saved[name].path
        os.replace(src.with_name(f".{src.stem}.{o.precision}.onnx"), src)
        saved[name] = SavedGraph(path=src, external_data=[], param_bytes=os.path.getsize(src))
    still = {f for s in saved.values() for f in s.external_data}
    for f in old_data - still:
        (tmp / f).unlink(missing_ok=True)
    for name in done:
        reports[name] = analysis.analyze(saved[name].path, o.precision)
        failed = [ch for ch in reports[name].checks if not ch.ok]
        if failed:
            raise UserError(
                f"{name}.onnx ({o.precision}) fails the static check '{failed[0].name}': {failed[0].detail}"
            )
    _RECORDS[str(tmp)] = {"graphs": done | float_graphs, "calibration": calibration_record(tmp, calib)}
    return saved, reports


FLOAT_WHY = (
    "forecast step: no attention or MLP runs, so no block qkv/proj/fc1/fc2 GEMM; its patch "
    "embedding, timestep MLP, adaLN modulation and final layer stay fp32 by policy"
)
_RECORDS: dict[str, dict] = {}  # staging folder → what `apply` did (read once by `policy_record`)


def calibration_record(tmp: Path, calib: CalibSet) -> dict:
    from dit_export.export.calibrate import CALIB_FILE

    path = Path(tmp) / CALIB_FILE
    return {
        "file": CALIB_FILE,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "calls": calib.calls,
        "capture_seconds": calib.meta.get("seconds"),
        "settings": calib.meta.get("key", {}).get("settings"),
        "labels": calib.meta.get("labels"),
        "source": calib.meta.get("source"),
        # dit_step_full's calibration (exports with the cache graphs): the cache setting(s) it ran
        "cache": calib.meta.get("cache"),
    }


def policy_record(precision: str, tmp: Path) -> dict | None:
    """The manifest's `precision_policy` for an int8/fp8 export: policy, library, calibration."""
    if not is_quantized(precision):
        return None
    ort = optional_import("onnxruntime")
    record = QUANT_POLICIES[precision].describe()
    record["library"] = f"onnxruntime.quantization.quantize_static {ort.__version__} (QDQ)"
    record["calibration_method"] = "MinMax" if precision == INT8 else "Distribution"
    record.update(_RECORDS.pop(str(tmp), {}))
    return record


KERNEL_OPS = ("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul")


def ort_kernels(path: Path, precision: str) -> dict[str, int]:
    """Op types ONNX Runtime CPU runs after its graph optimisations, as the runtime configures the
    session (ORT_ENABLE_ALL, the precision's disabled optimisers): read back from the optimised
    model ORT writes (`optimized_model_filepath`). Integer GEMM kernels first, then the rest."""
    import tempfile

    from dit_export.export.precision import ort_disabled_optimizers

    ort = optional_import("onnxruntime")
    onnx = optional_import("onnx")
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable file
        so.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        ort.InferenceSession(
            str(path),
            so,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=ort_disabled_optimizers(precision),
        )
        model = onnx.load(so.optimized_model_filepath, load_external_data=False)
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    first = {k: counts.pop(k) for k in KERNEL_OPS if k in counts}
    return first | dict(sorted(counts.items(), key=lambda kv: -kv[1]))
