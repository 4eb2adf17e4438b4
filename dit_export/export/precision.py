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

This module is data only (no torch): `dit_export.export.mixed` applies it to the modules.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

FP32, FP16 = "fp32", "fp16"
PRECISIONS = (FP32, FP16)


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
)

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
