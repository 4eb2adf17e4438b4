"""What TensorRT's ONNX parser accepts, as data: the export checks every graph against it.

The op list is TensorRT 10.15's (11.x adds Swish), restated from NVIDIA's parser docs (see
docs/ in the repository root and shared/reference/tensorrt.md). Kept in the package so `inspect`
can check a graph on a machine without TensorRT.
"""

from __future__ import annotations

# ONNX op types (default domain) that TensorRT's ONNX parser supports (10.15 list).
TRT_SUPPORTED_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv
    ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal
    Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow
    HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero
    Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
    Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

# Ops that betray a dynamic graph (shape arithmetic, data-dependent control flow or sizes), or that
# older TensorRT 10 releases handle only in part (Einsum before 10.12). A static export has none.
FORBIDDEN_OPS: frozenset[str] = frozenset(
    {"Shape", "ConstantOfShape", "Einsum", "If", "Loop", "Range", "NonZero"}
)

# Opsets every TensorRT 10.x parser reads (10.0 reads 9–20); onnx 1.23 would default to 28.
OPSET_MIN, OPSET_MAX = 17, 20
# 18: LayerNormalization (17) and Split with `num_outputs` (18) are native; the tanh-GELU stays a
# Pow/Tanh pattern (TensorRT fuses it) instead of opset-20 `Gelu`, which early 10.x parsers lack.
DEFAULT_OPSET = 18

# Where a listed op has parser restrictions that matter for DiT + VAE graphs.
RESIZE_MODES = frozenset({"nearest", "linear"})

# Inputs that TensorRT needs as build-time constants (initializers), by op type and input index.
CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "ReduceMean": (1,),
    "ReduceSum": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceL1": (1,),
    "ReduceL2": (1,),
    "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,),
    "Resize": (1, 2, 3),
    "Pad": (1, 2, 3),
}
