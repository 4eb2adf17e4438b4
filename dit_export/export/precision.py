"""The mixed-fp16 policy, declared once: `export` applies it, `inspect` and `verify` report it.

TensorRT 11 builds strongly typed networks only, so an engine's precision is whatever the ONNX
graph's tensor types say. A `--precision fp16` graph therefore carries fp16 tensors where they are
safe and fp32 "islands" where they are not, with Cast nodes between, and fp32/int64 graph I/O.

Why these islands (measured on random weights, see benchmarks/results/export_precision.md, and
following NVIDIA's FLUX experience where fp16 overflowed in the residual stream late in the stack):

- the timestep sinusoid (t·f reaches 999 rad; fp16 spacing there is 0.5) and its MLP input;
- the label embedding and c = t_emb + y_emb (per-sample vectors, no FLOPs to speak of);
- LayerNorm statistics, the adaLN modulate (x·(1+scale)+shift), the gates and the residual adds:
  the residual stream grows through the depth and carries the signal every block adds to;
- the patch embedding, positional add and the final layer (together < 0.5 % of the FLOPs, and
  the final linear writes ε and v directly);
- guidance and the sampler arithmetic in `dit_step` (√(1/ᾱ) reaches 157 at t = 999, where
  x̂0 = s1·x − s2·ε cancels).

fp16: the attention (q/k/v projection, logits, softmax, weighted sum, output projection — one
uniformly fp16 region, since mixed types inside an attention region break strongly typed builds),
the MLP (fc1, tanh-GELU, fc2), and the adaLN modulation GEMM (SiLU(c) → 6 vectors; its output is
cast back to fp32 before it touches the stream). Together these are > 99 % of the FLOPs of every
DiT size, and the adaLN weights are a third of the parameters, which a batch-1 engine streams
from memory every step.

VAE decoder: fp16 throughout except GroupNorm (statistics and affine in fp32), whose inputs
are sums of many fp16 conv outputs.

The forecast step cache (`dit_step_full` / `dit_step_forecast`) is stored in `cache_dtype`:
float16 in mixed-fp16 graphs (half the memory and bandwidth; its slot 0 holds branch outputs
that left an fp16 region, so storing them is exact), float32 otherwise. The refresh (divided
differences) and the forecast sum run in fp32 inside the graph, with one Cast at each end
(measured: benchmarks/results/fp16_cache.md).

This module is data only (no torch): `dit_export.export.mixed` applies it to the modules.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from dit_export.errors import UserError

FP32, FP16, INT8, FP8 = "fp32", "fp16", "int8", "fp8"
PRECISIONS = (FP32, FP16, INT8, FP8)
QUANTIZED = (INT8, FP8)  # precisions made by post-training quantization of the fp32 graphs


@dataclass(frozen=True)
class Region:
    """A named part of a graph, matched on the module path that produced each node."""

    pattern: str  # fnmatch pattern over "path:Class" of the module (path as `normalise_scope` makes it)
    label: str
    why: str = ""

    def matches(self, scope: str) -> bool:
        return fnmatch.fnmatchcase(scope, self.pattern)


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which DiT / VAE sub-modules run in fp16; everything else is an fp32 island."""

    name: str
    dit_fp16_modules: tuple[str, ...]  # module paths (fnmatch) computed in fp16, I/O cast at the edges
    vae_fp32_module_types: tuple[str, ...]  # class names kept fp32 inside the otherwise-fp16 decoder
    regions: tuple[Region, ...] = field(default_factory=tuple)  # reporting, first match wins
    cache_dtype: str = "float32"  # the forecast cache's graph I/O dtype (its arithmetic stays fp32)

    def dit_module_is_fp16(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in self.dit_fp16_modules)

    def region_of(self, scope: str) -> str:
        """Report label for a node's "path:Class" scope ('' for nodes no module produced)."""
        if not scope:
            return "(exporter)"
        for r in self.regions:
            if r.matches(scope):
                return r.label
        return scope.split(":")[0]

    def describe(self) -> dict:
        """JSON-ready summary for the manifest and `inspect`."""
        return {
            "name": self.name,
            "dit_fp16_modules": list(self.dit_fp16_modules),
            "vae_fp32_module_types": list(self.vae_fp32_module_types),
            "cache_dtype": self.cache_dtype,
            "fp32_islands": [
                {"region": r.label, "pattern": r.pattern, "why": r.why} for r in self.regions if r.why
            ],
        }


# Report regions, in match order. Those with a `why` are the declared fp32 islands.
_REGIONS = (
    Region("t_embedder*", "timestep sinusoid + MLP", "t·f reaches 999 rad; fp16 cannot resolve it"),
    Region("y_embedder*", "label embedding", "per-sample lookup, no FLOPs"),
    Region("x_embedder*", "patch embedding", "< 0.1 % of FLOPs; keeps the stream's input exact"),
    Region("blocks.*.norm*", "LayerNorm statistics", "mean/variance over the growing residual stream"),
    Region("blocks.*.adaLN_modulation*", "adaLN modulation GEMM"),
    Region("blocks.*.attn*", "attention"),
    Region("blocks.*.mlp*", "MLP"),
    Region("blocks.*", "modulate, gates, residual adds", "the residual stream stays fp32 end to end"),
    Region("final_layer*", "final layer", "writes ε and v directly; < 0.5 % of FLOPs"),
    Region("denoiser:*", "guidance (CFG)", "cond − uncond differences are small"),
    Region("*:GroupNorm", "GroupNorm", "statistics over sums of many fp16 conv outputs"),
    Region(":*", "model body", "pos-embed add, unpatchify, sampler step math (√(1/ᾱ) up to 157)"),
)

POLICY = PrecisionPolicy(
    name="dit-export-mixed-v1",
    dit_fp16_modules=("blocks.*.attn", "blocks.*.mlp", "blocks.*.adaLN_modulation"),
    vae_fp32_module_types=("GroupNorm",),
    regions=_REGIONS,
    cache_dtype="float16",
)
CACHE_DTYPES = ("float32", "float16")


def cache_dtype(precision: str, override: str | None = None) -> str:
    """The forecast cache's dtype in graphs of `precision`: the mixed policy's in fp16 exports,
    float32 otherwise (fp32, and int8/fp8, which quantize the fp32 graphs). `override` (an
    `ExportOptions.cache_dtype`, for comparisons) wins when given."""
    if override is not None:
        if override not in CACHE_DTYPES:
            raise UserError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}, got {override!r}")
        return override
    return POLICY.cache_dtype if precision == FP16 else "float32"


_INDEX = re.compile(r"\.\d+(?=\.|$)")
_PREFIXES = ("denoiser.model.", "denoiser.model", "inner.")


def normalise_scope(path: str) -> str:
    """Module path → policy space: drop the step/denoiser wrappers and island wrappers, index → '*'.

    'denoiser.model.blocks.11.attn.inner.qkv' → 'blocks.*.attn.qkv'.
    """
    for p in _PREFIXES:
        if path.startswith(p):
            path = path[len(p) :]
    path = path.replace(".inner.", ".").removesuffix(".inner")
    return _INDEX.sub(".*", path)


# --------------------------------------------------------------------------- int8 / fp8 (PTQ)


@dataclass(frozen=True)
class QuantPolicy:
    """What a W8A8 (int8) or E4M3 (fp8) graph quantizes, how, and which backends can run it.

    Quantized: the four GEMMs of every DiT block (attention qkv and output projection, MLP fc1 and
    fc2) — weights symmetric per output channel, activations static per tensor, symmetric (zero
    point 0, what TensorRT's explicit quantization requires). Only their inputs get Q/DQ; the
    GEMM output stays fp32 (`DQ → MatMul` is the pattern ONNX Runtime fuses into
    MatMulIntegerToFloat and TensorRT into an int8 GEMM).

    Kept fp32 (measured, benchmarks/results/int8.md): the timestep sinusoid and its MLP and the
    label embedding (per-sample vectors, no FLOPs), the adaLN modulation GEMMs (their output
    scales the whole residual stream; at batch N they are M = 2N-row GEMMs that int8 barely
    speeds up), the attention logits/softmax/weighted sum (activation × activation), LayerNorm,
    the residual stream, the final layer, guidance and the sampler arithmetic.
    """

    name: str
    quantized_scopes: tuple[str, ...]  # fnmatch over the node's "path:Class" scope (policy space)
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    runs_on: tuple[str, ...] = ()  # backends that execute these graphs
    refusals: tuple[tuple[str, str], ...] = ()  # (backend, why) — one line each
    # ONNX Runtime graph optimisers to switch off: its MatMulAddFusion (basic level) folds the
    # `DQ → MatMul → Add(bias)` of a linear layer into an fp32 Gemm before the QDQ fusions see
    # it, so the GEMM would run dequantised in fp32; without it ORT picks MatMulIntegerToFloat.
    ort_disabled_optimizers: tuple[str, ...] = ()

    def quantizes(self, scope: str, op_type: str) -> bool:
        return op_type in self.op_types and any(fnmatch.fnmatchcase(scope, p) for p in self.quantized_scopes)

    def why_not(self, backend: str) -> str | None:
        """None when `backend` runs this precision, else the one-line reason."""
        return dict(self.refusals).get(backend)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "quantized": list(self.quantized_scopes),
            "op_types": list(self.op_types),
            "weights": "symmetric per output channel",
            "activations": "static per tensor, symmetric (zero point 0)",
            "higher_precision": list(KEPT_FP32),
            "runs_on": list(self.runs_on),
        }


KEPT_FP32 = (
    "timestep sinusoid + MLP",
    "label embedding",
    "patch embedding",
    "adaLN modulation GEMM",
    "attention logits, softmax, weighted sum",
    "LayerNorm, modulate, gates, residual adds",
    "final layer",
    "guidance (CFG) and sampler arithmetic",
)
_BLOCK_GEMMS = ("blocks.*.attn.qkv:*", "blocks.*.attn.proj:*", "blocks.*.mlp.fc1:*", "blocks.*.mlp.fc2:*")
_NO_QDQ_CPP = "the C++ AOTI backend compiles the PyTorch modules and cannot run QDQ graphs"
QUANT_POLICIES: dict[str, QuantPolicy] = {
    INT8: QuantPolicy(
        name="dit-export-w8a8-v1",
        quantized_scopes=_BLOCK_GEMMS,
        runs_on=("ort", "trt"),
        ort_disabled_optimizers=("MatMulAddFusion",),
        refusals=(("cpp", f"int8: {_NO_QDQ_CPP} (use --backend ort or trt)"),),
    ),
    FP8: QuantPolicy(
        name="dit-export-e4m3-v1",
        quantized_scopes=_BLOCK_GEMMS,
        runs_on=("trt",),
        refusals=(
            (
                "ort",
                "fp8: ONNX Runtime's CPU provider has no FP8 GEMM; fp8 graphs run on TensorRT "
                "with an FP8 GPU (compute capability ≥ 8.9: Ada, Hopper and later)",
            ),
            ("cpp", f"fp8: {_NO_QDQ_CPP}"),
        ),
    ),
}
FP8_MIN_CC = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and later


def check_backend(precision: str, backend: str) -> None:
    """One-line UserError when `backend` cannot run graphs of `precision` (int8/fp8 only)."""
    policy = QUANT_POLICIES.get(precision)
    why = policy.why_not(backend) if policy is not None else None
    if why:
        raise UserError(why)


def check_fp8_device(compute_capability: tuple[int, int] | None, gpu: str = "") -> None:
    """FP8 plans need an FP8 GPU; one line naming the GPU otherwise (None: no GPU at all)."""
    if compute_capability is None or tuple(compute_capability) < FP8_MIN_CC:
        if compute_capability is None:
            have = "no CUDA GPU here"
        else:
            have = (
                f"{gpu or 'this GPU'} is compute capability {compute_capability[0]}.{compute_capability[1]}"
            )
        raise UserError(f"fp8 needs an FP8 GPU (compute capability ≥ 8.9: Ada, Hopper and later); {have}")


def ort_disabled_optimizers(precision: str) -> list[str]:
    """The ONNX Runtime optimisers a session of this precision's graphs must not run (see QuantPolicy)."""
    policy = QUANT_POLICIES.get(precision)
    return list(policy.ort_disabled_optimizers) if policy is not None else []
