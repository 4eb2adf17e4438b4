"""Tensor element types: the ONE table of dtype names (the manifest's, numpy's) and what each is
called by ONNX, ONNX Runtime, TensorRT and Triton, with its size.

Everything that maps a dtype between two of these vocabularies derives its map from `TABLE`
(analysis, the ORT and TensorRT backends, the Triton model config), so a new dtype is one row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # the manifest's name (= numpy's)
    onnx: int  # onnx.TensorProto element type
    itemsize: int  # bytes per element
    ort: str | None = None  # ONNX Runtime's type string
    tensorrt: str | None = None  # tensorrt.DataType member name
    triton: str | None = None  # Triton model config data_type
    io: bool = False  # allowed for a graph input/output in manifest.json


TABLE = (
    DType("float32", 1, 4, "tensor(float)", "FLOAT", "TYPE_FP32", io=True),
    DType("uint8", 2, 1, "tensor(uint8)", "UINT8", "TYPE_UINT8", io=True),
    DType("int8", 3, 1, "tensor(int8)", "INT8", "TYPE_INT8"),
    DType("int16", 5, 2, "tensor(int16)", None, "TYPE_INT16"),
    DType("int32", 6, 4, "tensor(int32)", "INT32", "TYPE_INT32", io=True),
    DType("int64", 7, 8, "tensor(int64)", "INT64", "TYPE_INT64", io=True),
    DType("bool", 9, 1, "tensor(bool)", "BOOL", "TYPE_BOOL", io=True),
    DType("float16", 10, 2, "tensor(float16)", "HALF", "TYPE_FP16", io=True),
    DType("float64", 11, 8, "tensor(double)", None, "TYPE_FP64"),
    DType("uint32", 12, 4, "tensor(uint32)", None, "TYPE_UINT32"),
    DType("uint64", 13, 8, "tensor(uint64)", None, "TYPE_UINT64"),
    DType("bfloat16", 16, 2, "tensor(bfloat16)", "BF16", "TYPE_BF16"),
    DType("float8e4m3fn", 17, 1, "tensor(float8e4m3fn)", "FP8"),  # fp8 QDQ graphs' weights (issue 22)
)
BY_NAME = {d.name: d for d in TABLE}
# The manifest's graph I/O vocabulary (manifest.schema.json's tensor dtype enum lists the same).
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
assert set(DTYPES) == {d.name for d in TABLE if d.io}
# onnx.TensorProto element type → name (0 = undefined).
DTYPE_NAMES = {0: "undefined", **{d.onnx: d.name for d in TABLE}}
ITEMSIZE = {d.name: d.itemsize for d in TABLE}


def names_by(vocabulary: str) -> dict[str, str]:
    """{name in `vocabulary` ("ort", "tensorrt", "triton"): manifest name}, for the rows it has."""
    return {getattr(d, vocabulary): d.name for d in TABLE if getattr(d, vocabulary) is not None}


def to(vocabulary: str) -> dict[str, str]:
    """{manifest name: name in `vocabulary`}, for the rows it has."""
    return {d.name: getattr(d, vocabulary) for d in TABLE if getattr(d, vocabulary) is not None}
