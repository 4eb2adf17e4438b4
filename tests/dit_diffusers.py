"""Test-only: our DiT weights written as diffusers' `DiTTransformer2DModel` (the reverse of
`dit_export.models.diffusers_keys`), so the tests can make real diffusers checkpoints."""

from __future__ import annotations

import torch

from dit_export.models.configs import DiTConfig
from dit_export.models.diffusers_keys import BLOCK_RENAMES, SHARED_RENAMES, TOP_RENAMES
from dit_export.models.dit import DiT


def to_diffusers_state_dict(net: DiT) -> dict[str, torch.Tensor]:
    """Our weights under diffusers' names (qkv split, embedders copied into every block).

    Tensors are fresh copies, so the result can be saved with safetensors (no shared storage).
    """
    sd = {k: v.detach() for k, v in net.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for theirs, ours in TOP_RENAMES.items():
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = sd[f"{ours}.{p}"]
    for n in range(net.config.depth):
        src, dst = f"blocks.{n}.", f"transformer_blocks.{n}."
        for theirs, ours in BLOCK_RENAMES.items():
            for p in ("weight", "bias"):
                out[f"{dst}{theirs}.{p}"] = sd[f"{src}{ours}.{p}"]
        for p in ("weight", "bias"):
            for name, part in zip("qkv", sd[f"{src}attn.qkv.{p}"].chunk(3, dim=0)):
                out[f"{dst}attn1.to_{name}.{p}"] = part
        for theirs, ours in SHARED_RENAMES.items():
            for key in (k for k in sd if k.startswith(ours + ".")):
                out[f"{dst}{theirs}{key[len(ours) :]}"] = sd[key]
    return {k: v.clone().contiguous() for k, v in out.items()}


def to_diffusers_config(cfg: DiTConfig) -> dict:
    """Constructor arguments (= config.json) of the matching `DiTTransformer2DModel`."""
    return {
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "num_layers": cfg.depth,
        "sample_size": cfg.input_size,
        "patch_size": cfg.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": cfg.num_classes,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": cfg.mlp_norm_eps,
    }
