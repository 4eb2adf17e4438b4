"""The DiT network (Peebles & Xie, "Scalable Diffusion Models with Transformers").

Written from the paper and the published checkpoint layout: every parameter name matches the
official state dict, so official weights load with ``strict=True``. Each class is one concept of
the paper. The code is also the export source, so shapes come from the config (never from
tensor sizes) and attention is plain matmul + softmax unless fused SDPA is explicitly asked for.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dit_export.models.configs import DiTConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: a per-sample affine map of the normalised tokens, x·(1+scale) + shift."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, freq_shift: int = 0) -> torch.Tensor:
    """[cos(t·f), sin(t·f)] with f_k = 10000^(−k/(half−shift)), computed in fp32.

    t·f reaches 999 rad, which fp16 cannot represent: this must stay fp32 in any mixed graph.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed(hidden: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos position table (T, D), float64 math stored as float32.

    Token n = i·G + j: [sin(jω), cos(jω), sin(iω), cos(iω)], ω_k = 10000^(−k/(D/4)).
    """
    quarter = hidden // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    i, j = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    wj = j.reshape(-1)[:, None] * omega[None]
    wi = i.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(wj), np.cos(wj), np.sin(wi), np.cos(wi)], axis=1).astype(np.float32)


class PatchEmbed(nn.Module):
    """Split the latent into p×p patches and project each to a token (a strided conv)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, kernel_size=p, stride=p, bias=True)
        self.num_tokens, self.hidden = cfg.num_tokens, cfg.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (N, D, G, G)
        return x.reshape(-1, self.hidden, self.num_tokens).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoid of the (original, 0..999) timestep followed by a 2-layer SiLU MLP."""

    def __init__(self, cfg: DiTConfig, frequency_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, cfg.hidden_size), nn.SiLU(), nn.Linear(cfg.hidden_size, cfg.hidden_size)
        )
        self.frequency_dim, self.freq_shift = frequency_dim, cfg.freq_shift

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_sinusoid(t, self.frequency_dim, self.freq_shift))


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra row, the "null" class used for guidance."""

    def __init__(self, cfg: DiTConfig, dropout_prob: float = 0.1):
        super().__init__()
        self.embedding_table = nn.Embedding(cfg.num_classes + 1, cfg.hidden_size)
        self.num_classes, self.dropout_prob = cfg.num_classes, dropout_prob

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:  # label dropout trains the null class
            drop = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


class Attention(nn.Module):
    """Multi-head self-attention with a fused [q|k|v] projection."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.t, self.h, self.hd, self.d = cfg.num_tokens, cfg.num_heads, cfg.head_dim, d
        self.scale = cfg.head_dim**-0.5
        self.use_sdpa = False  # fused kernel for eager speed only; never in the export path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).reshape(-1, self.t, 3, self.h, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, head_dim)
        if self.use_sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            o = attn.softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(-1, self.t, self.d))


class Mlp(nn.Module):
    """Pointwise feed-forward: Linear → GELU(tanh) → Linear."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning: shift/scale before, gate after each branch."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=cfg.mlp_norm_eps)
        self.mlp = Mlp(cfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate) of the attention branch, then of the MLP branch: (N, D) each."""
        return self.adaLN_modulation(c).chunk(6, dim=1)

    def attn_branch(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The attention branch's output before its gate (what the step cache stores)."""
        return self.attn(modulate(self.norm1(x), shift, scale))

    def mlp_branch(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The MLP branch's output before its gate (what the step cache stores)."""
        return self.mlp(modulate(self.norm2(x), shift, scale))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa.unsqueeze(1) * self.attn_branch(x, shift_msa, scale_msa)
        x = x + gate_mlp.unsqueeze(1) * self.mlp_branch(x, shift_mlp, scale_mlp)
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens back to p·p·C patch values."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d, p = cfg.hidden_size, cfg.patch_size
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, p * p * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Latent → (ε, v): patchify, add positions, N adaLN-Zero blocks, final layer, unpatchify."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        self.x_embedder = PatchEmbed(cfg)
        self.t_embedder = TimestepEmbedder(cfg)
        self.y_embedder = LabelEmbedder(cfg)
        pos = torch.from_numpy(sincos_pos_embed(cfg.hidden_size, cfg.grid_size))[None]
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The paper's init: xavier linears, N(0, .02) embeddings, adaLN-Zero (zeroed) outputs."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in self.blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for lin in zeroed:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def zero_initialised(self) -> list[nn.Linear]:
        """The layers adaLN-Zero starts at zero (a fresh model outputs exactly 0)."""
        return [b.adaLN_modulation[-1] for b in self.blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]

    def set_fused_attention(self, enabled: bool) -> None:
        """Eager-speed switch: SDPA kernels (numerically equivalent, not exportable as plain ops)."""
        for b in self.blocks:
            b.attn.use_sdpa = enabled

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p·p·C) → (N, C, L, L) with constant Reshape/Transpose targets from the config."""
        g, p, c = self.config.grid_size, self.config.patch_size, self.config.out_channels
        x = x.reshape(-1, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(-1, c, g * p, g * p)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens with positions (N, T, D) and the conditioning vector c (N, D)."""
        return self.x_embedder(x) + self.pos_embed, self.t_embedder(t) + self.y_embedder(y)

    def head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Final layer and unpatchify: tokens → (N, out_channels, L, L)."""
        return self.unpatchify(self.final_layer(h, c))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, c = self.embed(x, t, y)
        for block in self.blocks:
            h = block(h, c)
        return self.head(h, c)
