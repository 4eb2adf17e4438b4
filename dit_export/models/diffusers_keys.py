"""diffusers' ``DiTTransformer2DModel`` weights → the official DiT names, in one loop.

diffusers renames most layers, splits ``attn.qkv`` into ``to_q|to_k|to_v``, keeps a copy of the
timestep and class embedders in every block (DiT has one of each) and does not store the fixed
``pos_embed`` table. The mapping goes one way only: we read diffusers checkpoints, never write them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dit_export.errors import UserError
from dit_export.fileio import read_json_object

Tensors = dict[str, torch.Tensor]

# diffusers prefix -> ours; ".weight"/".bias" (and anything after the prefix) follow unchanged.
TOP_RENAMES = {
    "pos_embed.proj": "x_embedder.proj",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
}
BLOCK_RENAMES = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
# the per-block embedder copies -> DiT's single embedders (every copy must be identical)
SHARED_RENAMES = {
    "norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table",
}
DROPPED = {"pos_embed.pos_embed"}  # the fixed sin-cos table: recomputed for the latent size
DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")

_IN_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)")
_QKV = re.compile(r"attn1\.to_([qkv])\.(weight|bias)")


def is_diffusers_state_dict(state: Tensors) -> bool:
    return any(k.startswith(("transformer_blocks.", "pos_embed.proj.")) for k in state)


def from_diffusers_state_dict(state: Tensors) -> Tensors:
    """diffusers names → ours. Unknown keys pass through unchanged, so the strict load names them."""
    out: Tensors = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (block, weight|bias) -> {q, k, v}
    for key, tensor in state.items():
        if key in DROPPED:
            continue
        m = _IN_BLOCK.fullmatch(key)
        if m is None:
            out[_rename(key, TOP_RENAMES) or key] = tensor
            continue
        n, rest = m.groups()
        if part := _QKV.fullmatch(rest):
            qkv.setdefault((n, part[2]), {})[part[1]] = tensor
        elif shared := _rename(rest, SHARED_RENAMES):
            if shared not in out:
                out[shared] = tensor
            elif not (tensor.shape == out[shared].shape and torch.equal(tensor, out[shared])):
                raise UserError(
                    f"diffusers weights do not fit DiT: {key} differs from the first block's copy "
                    "(DiT shares one timestep/class embedder across blocks)"
                )
        elif ours := _rename(rest, BLOCK_RENAMES):
            out[f"blocks.{n}.{ours}"] = tensor
        else:
            out[key] = tensor
    for (n, p), parts in qkv.items():
        if parts.keys() == {"q", "k", "v"}:
            out[f"blocks.{n}.attn.qkv.{p}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        else:  # an incomplete triple: leave it for the strict load to name
            out.update({f"transformer_blocks.{n}.attn1.to_{c}.{p}": t for c, t in parts.items()})
    return out


def read_diffusers_config(path: Path) -> tuple[int | None, int | None]:
    """(attention heads, latent side) from a DiT transformer's config.json — what weights omit."""
    conf = read_json_object(path, "a diffusers config")
    cls = conf.get("_class_name")
    if cls is not None and cls not in DIFFUSERS_CLASSES:
        raise UserError(f"{path} describes a {cls}, not a DiT transformer")
    if conf.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise UserError(f"{path}: norm_type {conf['norm_type']!r} is not DiT's ada_norm_zero")
    heads, size = conf.get("num_attention_heads"), conf.get("sample_size")
    return (heads if isinstance(heads, int) else None), (size if isinstance(size, int) else None)


def _rename(key: str, table: dict[str, str]) -> str | None:
    """`key` with its table prefix replaced, or None when no prefix of the table matches."""
    for old, new in table.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    return None
