"""Side script of benchmarks/modelopt_compare.py, run in a side virtual environment (not the project's).

NVIDIA ModelOpt pins onnxruntime-gpu 1.24 and onnx 1.21 (the project runs onnxruntime 1.32 CPU and
onnx 1.23), and ONNX Runtime's SmoothQuant option imports Intel neural-compressor 2.x, so each lives
in its own venv (set-up: benchmarks/modelopt_compare.py's docstring). This script only quantizes one
graph and prints one JSON line (what ran, how long); the project venv evaluates the result.

    # ModelOpt ONNX PTQ (venv /work/venv-modelopt)
    python benchmarks/modelopt_side.py modelopt --mode int8 --preset default  --src A.onnx --calib calibration.npz --out B.onnx
    python benchmarks/modelopt_side.py modelopt --mode int8 --preset matched --nodes nodes.json ...
    # onnxruntime.quantization.quantize_static with our settings + SmoothQuant (venv /work/venv-inc)
    python benchmarks/modelopt_side.py smoothquant --alpha 0.5 --nodes nodes.json --src ... --calib ... --out ...

`--calib` is the export folder's calibration.npz (dit_export's CalibSet: `step/<input>` arrays of
shape (calls, *input shape)), fed unchanged: ModelOpt takes it concatenated along axis 0 and splits
it back into the same calls (its CalibrationDataProvider), ORT through a CalibrationDataReader.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from importlib import metadata

import numpy as np


def step_calls(npz: str) -> list[dict[str, np.ndarray]]:
    with np.load(npz) as z:
        arrays = {k[5:]: z[k] for k in z.files if k.startswith("step/")}
    n = len(arrays["x"])
    return [{k: a[i] for k, a in arrays.items()} for i in range(n)]


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run_modelopt(a) -> dict:
    from modelopt.onnx.quantization import quantize

    calls = step_calls(a.calib)
    data = {k: np.concatenate([c[k] for c in calls], axis=0) for k in calls[0]}
    kwargs: dict = {
        "quantize_mode": a.mode,
        "calibration_data": data,
        "calibration_eps": ["cpu"],  # ONNX Runtime's CPU provider (no GPU here)
        "output_path": a.out,
        "log_level": "WARNING",
    }
    if a.preset.startswith("matched"):
        # dit_export's policy: only the block GEMMs (node names from its scope metadata), the rest
        # of the graph stays fp32 (ModelOpt's default converts it to fp16), max (= MinMax) or entropy.
        nodes = json.load(open(a.nodes))
        kwargs |= {
            "nodes_to_quantize": [f"^{re.escape(n)}$" for n in nodes],
            "op_types_to_quantize": ["MatMul", "Gemm"],
            "high_precision_dtype": "fp32",
            "calibration_method": "entropy" if a.preset == "matched-entropy" else "max",
        }
    t0 = time.perf_counter()
    quantize(a.src, **kwargs)
    seconds = time.perf_counter() - t0
    shown = {
        k: v for k, v in kwargs.items() if k not in ("calibration_data", "nodes_to_quantize", "output_path")
    }
    if "nodes_to_quantize" in kwargs:
        shown["nodes_to_quantize"] = f"{len(kwargs['nodes_to_quantize'])} names (^name$)"
    return {"seconds": round(seconds, 2), "calls": len(calls), "kwargs": shown}


def run_smoothquant(a) -> dict:
    """dit_export's quantize_static call (export/quantize.py, int8) plus ORT's SmoothQuant option."""
    from onnxruntime import quantization as q

    calls = step_calls(a.calib)

    class Reader(q.CalibrationDataReader):  # list-backed: ORT deep-copies it for SmoothQuant
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            self.i += 1
            return calls[self.i - 1] if self.i <= len(calls) else None

        def rewind(self) -> None:
            self.i = 0

    nodes = json.load(open(a.nodes))
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
        "SmoothQuant": True,
        "SmoothQuantAlpha": a.alpha,
        "SmoothQuantFolding": True,
    }
    t0 = time.perf_counter()
    q.quantize_static(
        a.src,
        a.out,
        Reader(),
        quant_format=q.QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=nodes,
        per_channel=True,
        activation_type=q.QuantType.QInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=q.CalibrationMethod.MinMax,
        extra_options=extra,
    )
    return {"seconds": round(time.perf_counter() - t0, 2), "calls": len(calls), "extra_options": extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tool", choices=("modelopt", "smoothquant"))
    ap.add_argument("--src", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="int8", choices=("int8", "fp8"))
    ap.add_argument("--preset", default="default", choices=("default", "matched", "matched-entropy"))
    ap.add_argument("--nodes", help="JSON list of the node names dit_export's policy quantizes")
    ap.add_argument("--alpha", type=float, default=0.5)
    a = ap.parse_args()
    rec = run_modelopt(a) if a.tool == "modelopt" else run_smoothquant(a)
    rec |= {
        "tool": a.tool,
        "versions": {
            d: version(d)
            for d in ("nvidia-modelopt", "onnxruntime", "onnxruntime-gpu", "onnx", "neural-compressor")
        },
        "python": sys.version.split()[0],
    }
    print("\nRESULT " + json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
