"""A DiT config read off the weights' shapes, cross-checked against what the user asked for.

Depth, width, patch, channels, classes, learn_sigma and the latent size are in the tensors; the
attention heads are not (a published width implies them; a custom width needs a config.json, a
meta.json beside the weights, or ``num_heads``). Every disagreement is a one-line error.
"""

from __future__ import annotations

import math
import re

import torch

from dit_export.errors import UserError
from dit_export.models.configs import (
    DiTConfig,
    canonical_name,
    heads_of,
    heads_of_width,
    model_config,
    name_of,
)
from dit_export.models.dit import DiT, sincos_pos_embed
from dit_export.models.embedded import is_embedded
from dit_export.models.formats import RawWeights

Tensors = dict[str, torch.Tensor]
VAE_FACTOR = 8


def settle_config(
    raw: RawWeights,
    model: str | None,
    image_size: int | None,
    flavor: str | None,
    num_classes: int | None,
    num_heads: int | None,
) -> DiTConfig:
    """Infer the config from the weights; check it against every given (or implied) expectation.

    A diffusers checkpoint's missing pos_embed is added to ``raw.state`` for the settled latent size.
    """
    state = raw.state
    latent = raw.input_size
    if latent is None and "pos_embed" not in state and image_size:
        latent = image_size // VAE_FACTOR
    model = model or raw.model_hint
    if model is not None:
        model = canonical_name(model)
    heads = num_heads or raw.num_heads or (heads_of(model) if model else None)
    inferred = infer_config(state, heads=heads, input_size=latent, flavor=flavor or raw.flavor)
    image_size = image_size or raw.image_hint
    if image_size is not None and image_size != inferred.input_size * VAE_FACTOR:
        raise UserError(
            f"weights are for image {inferred.input_size * VAE_FACTOR} (latent {inferred.input_size}), "
            f"not image size {image_size}"
        )
    if num_classes is not None and num_classes != inferred.num_classes:
        raise UserError(f"weights have {inferred.num_classes} classes, not {num_classes}")
    cfg, label = inferred, inferred.name or "the inferred config"
    if model is not None:
        if is_embedded(model):  # a shipped architecture: its recorded config is the expectation
            expected = model_config(model, flavor=inferred.flavor)
        else:
            expected = model_config(
                model,
                inferred.input_size * VAE_FACTOR,
                num_classes=inferred.num_classes,
                learn_sigma=inferred.learn_sigma,
                flavor=inferred.flavor,
            )
        if raw.num_heads is not None and raw.num_heads != expected.num_heads:
            raise UserError(
                f"weights are not {model}: they record {raw.num_heads} heads, expected {expected.num_heads}"
            )
        cfg, label = expected, model
    if "pos_embed" not in state:  # diffusers: recompute the fixed table for this latent size
        state["pos_embed"] = torch.from_numpy(sincos_pos_embed(cfg.hidden_size, cfg.grid_size))[None]
        raw.notes.append(f"pos_embed recomputed for latent {cfg.input_size} (diffusers does not store it)")
    check_shapes(state, cfg, label=label)
    return cfg


def infer_config(state: Tensors, *, heads: int | None, input_size: int | None, flavor: str) -> DiTConfig:
    """Depth, width, patch, channels, classes, learn_sigma and latent size read off tensor shapes."""
    patch_w = _need(state, "x_embedder.proj.weight")
    if patch_w.ndim != 4 or patch_w.shape[2] != patch_w.shape[3]:
        raise UserError(f"x_embedder.proj.weight has shape {_shape(patch_w)}, not a square patch conv")
    hidden, in_ch, p = int(patch_w.shape[0]), int(patch_w.shape[1]), int(patch_w.shape[2])
    depth = count_blocks(state, "blocks.")
    out_rows = int(_need(state, "final_layer.linear.weight").shape[0])
    if out_rows % (p * p) or out_rows // (p * p) not in (in_ch, 2 * in_ch):
        raise UserError(
            f"final_layer.linear.weight has {out_rows} rows: not {p}·{p}·{in_ch} or {p}·{p}·{2 * in_ch}"
        )
    classes = int(_need(state, "y_embedder.embedding_table.weight").shape[0]) - 1
    mlp_rows = int(_need(state, "blocks.0.mlp.fc1.weight").shape[0]) if depth else 4 * hidden
    if input_size is None:
        if "pos_embed" not in state:
            raise UserError(
                "the weights carry no pos_embed and no config.json sample_size: pass the image size"
            )
        tokens = int(state["pos_embed"].shape[-2])
        grid = math.isqrt(tokens)
        if grid * grid != tokens:
            raise UserError(f"pos_embed has {tokens} tokens, not a square grid")
        input_size = grid * p
    heads = heads or heads_of_width(hidden)
    if heads is None:
        raise UserError(
            f"cannot tell the attention heads of a custom width {hidden}: record them as num_heads in a "
            "meta.json 'dit' config beside the weights, use a diffusers folder (config.json has them), "
            "or pass num_heads (Python API)"
        )
    return DiTConfig(
        depth=depth,
        hidden_size=hidden,
        num_heads=heads,
        patch_size=p,
        input_size=input_size,
        in_channels=in_ch,
        num_classes=classes,
        learn_sigma=out_rows // (p * p) == 2 * in_ch,
        mlp_ratio=mlp_rows / hidden,
        flavor=flavor,
        name=name_of(depth, hidden, p) if mlp_rows == 4 * hidden else "",
    )


def check_shapes(state: Tensors, cfg: DiTConfig, *, label: str) -> None:
    """Every key of `cfg`'s model present with its shape, nothing extra; one line otherwise."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DiT(cfg).state_dict().items()}
    for key in sorted(expected, key=lambda k: k == "pos_embed"):  # layer shapes say more than positions
        if key in state and tuple(state[key].shape) != expected[key]:
            raise UserError(
                f"weights are not {label}: {key} is {_shape(state[key])}, expected {expected[key]}"
            )
    depth = count_blocks(state, "blocks.")
    if depth != cfg.depth:
        raise UserError(f"weights are not {label}: they have {depth} blocks, expected {cfg.depth}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [
            f"{what} {_few(keys)}"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise UserError(f"weights do not fit {label}: {'; '.join(parts)}")


def count_blocks(state: Tensors, prefix: str) -> int:
    """Number of blocks = 1 + the highest index under `prefix` (gaps then show as missing keys)."""
    ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _need(state: Tensors, key: str) -> torch.Tensor:
    if key not in state:
        raise UserError(f"not DiT weights: no {key} (keys: {_few(list(state))})")
    return state[key]


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _few(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
