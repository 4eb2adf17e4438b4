"""The DiT forward split for the step cache (`dit_export.sampling.cache` has the schedule and math).

`full_forward` runs the whole network and refreshes the cache from this step's branch outputs;
`forecast_forward` runs only what cannot be cached — patch and label/timestep embeddings, every
block's adaLN modulation and gated residual adds of the forecast branch outputs, the final layer.
Both call the blocks' own sub-modules (`DiTBlock.modulation`, `attn_branch`, `mlp_branch`), so the
full step computes exactly the uncached network and the mixed-fp16 policy's module scopes apply
unchanged; the cache arithmetic lies outside every block's fp16 region, in fp32.

Cache layout: (depth, 2 branches [attn, mlp], slots, rows, tokens, hidden), slot i holding the
i-th Newton divided difference; `coef` is one row of `CachePlan.coefs` (slots,). The cache is
stored in whatever dtype it comes in (float32, or float16 in mixed-fp16 exports:
`precision.cache_dtype`); each block's slice is read up to fp32, the differences and the forecast
sum are computed in fp32, and the refreshed cache is cast back once (an fp32 cache adds no Cast).
"""

from __future__ import annotations

import torch

from dit_export.models.dit import DiT


def _refresh(fresh: torch.Tensor, old: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """(slots, rows, T, D): D'_0 = fresh, D'_i = (D'_{i−1} − D_{i−1}) · a_i (a_i = 0: order not yet known)."""
    diffs = [fresh.float()]
    for i in range(1, old.shape[0]):
        diffs.append((diffs[-1] - old[i - 1]) * coef[i])
    return torch.stack(diffs)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def full_forward(
    model: DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cache: torch.Tensor, coef: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's output (as `model(x, t, y)`) and the refreshed cache."""
    h, c = model.embed(x, t, y)
    refreshed = []
    for b, block in enumerate(model.blocks):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(c)
        attn = block.attn_branch(h, shift_msa, scale_msa)
        h = h + gate_msa.unsqueeze(1) * attn
        mlp = block.mlp_branch(h, shift_mlp, scale_mlp)
        h = h + gate_mlp.unsqueeze(1) * mlp
        refreshed += [_refresh(attn, _f32(cache[b, 0]), coef), _refresh(mlp, _f32(cache[b, 1]), coef)]
    new = torch.stack(refreshed).reshape(cache.shape)
    return model.head(h, c), (new if new.dtype == cache.dtype else new.to(cache.dtype))


def forecast_forward(
    model: DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cache: torch.Tensor, coef: torch.Tensor
) -> torch.Tensor:
    """The network's output with every branch forecast as Σ_i b_i D_i (b = `coef`; [1, 0, …] reuses D_0)."""
    h, c = model.embed(x, t, y)
    w = coef.reshape(-1, 1, 1, 1)
    for b, block in enumerate(model.blocks):
        _, _, gate_msa, _, _, gate_mlp = block.modulation(c)
        h = h + gate_msa.unsqueeze(1) * (w * _f32(cache[b, 0])).sum(0)
        h = h + gate_mlp.unsqueeze(1) * (w * _f32(cache[b, 1])).sum(0)
    return model.head(h, c)
