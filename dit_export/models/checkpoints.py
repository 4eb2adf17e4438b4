"""Load a DiT from any checkpoint a user is likely to have, and infer its config from the weights.

Formats: the released flat state dict (``DiT-XL-2-256x256.pt``), ``train.py`` checkpoints
(``{"model", "ema", "opt", "args"}``, EMA preferred), safetensors with official keys, and diffusers
(``DiTTransformer2DModel`` folder, pipeline root with ``transformer/``, or its weights file).
Every reader returns official key names; one path then infers the config, cross-checks it
against what the user asked for, and loads with every key accounted for.

Pickles are opened with ``torch.load(weights_only=True)`` only, with exactly one extra allowed
class (``argparse.Namespace``, the ``args`` of a training checkpoint): a file that wants to run
code is refused before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dit_export.errors import UserError
from dit_export.models import hub
from dit_export.models.configs import SIZES, DiTConfig, canonical_name, model_config, name_of
from dit_export.models.dit import DiT, sincos_pos_embed

Tensors = dict[str, torch.Tensor]

VAE_FACTOR = 8  # latent side = image side / 8 for the SD VAE every DiT uses
PERTURB_STD = 0.02  # random-weight noise for the adaLN-Zero layers (outputs O(0.1–1), see tests)

# diffusers name -> ours, for the parts that are a plain rename (".weight"/".bias" follow).
_TOP_RENAMES = {
    "pos_embed.proj": "x_embedder.proj",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
}
_BLOCK_RENAMES = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
# diffusers keeps a copy of the timestep/class embedders in every block; DiT has one.
_SHARED_RENAMES = {
    "norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table",
}
_DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


@dataclass
class RawWeights:
    """A checkpoint read into official key names, plus what its container says about the model."""

    state: Tensors
    fmt: str  # human-readable format, for `describe`
    flavor: str = "official"  # numerics the weights were trained/converted for
    num_heads: int | None = None  # from a diffusers config.json
    input_size: int | None = None  # latent side from a diffusers config.json (no pos_embed stored)
    model_hint: str | None = None  # from a released file name or a training checkpoint's args
    image_hint: int | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# public API


def load_dit(
    source: str | os.PathLike | None,
    *,
    model: str | None = None,
    image_size: int | None = None,
    flavor: str | None = None,
    random_weights: bool = False,
    weights_seed: int = 0,
    num_classes: int | None = None,
    num_heads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[DiT, DiTConfig]:
    """An eval-mode fp32 DiT and its config from a path, a released name, a Hub id, or seeded noise.

    `model`, `image_size`, `num_classes` are cross-checked against the weights (one-line error on
    a mismatch); `flavor` overrides the format's numerics ("diffusers" for diffusers checkpoints).
    `num_heads` is only needed for a custom width stored without a config.json.
    """
    if random_weights:
        if source is not None:
            raise UserError("give either a checkpoint or random_weights, not both")
        if not model:
            raise UserError("random weights need a model name (e.g. S/8)")
        return random_dit(
            model,
            image_size or 256,
            num_classes=num_classes or 1000,
            flavor=flavor or "official",
            seed=weights_seed,
        )
    raw, cfg = _prepare(source, model, image_size, flavor, num_classes, num_heads, cache_dir)
    return _build(cfg, raw.state), cfg


def describe(
    source: str | os.PathLike | None,
    *,
    model: str | None = None,
    image_size: int | None = None,
    flavor: str | None = None,
    random_weights: bool = False,
    weights_seed: int = 0,
    num_classes: int | None = None,
    num_heads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """A few lines for `info`: detected format, config, flavor and parameter count (no model built)."""
    if random_weights:
        if not model:
            raise UserError("random weights need a model name (e.g. S/8)")
        cfg = model_config(
            model, image_size or 256, num_classes=num_classes or 1000, flavor=flavor or "official"
        )
        fmt, notes = f"random weights (seed {weights_seed}, adaLN-Zero layers perturbed)", []
    else:
        raw, cfg = _prepare(source, model, image_size, flavor, num_classes, num_heads, cache_dir)
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in raw.state.values()})
        fmt, notes = f"{raw.fmt}, stored {'/'.join(dtypes)}", raw.notes
    with torch.device("meta"):
        n_params = sum(p.numel() for p in DiT(cfg).parameters())
    flavor_text = (
        "diffusers (timestep sinusoid /127, pre-MLP LayerNorm eps 1e-5, CFG on all 4 ε channels)"
        if cfg.flavor == "diffusers"
        else "official (timestep sinusoid /128, LayerNorm eps 1e-6, CFG on ε channels 0–2)"
    )
    lines = [
        f"format:     {fmt}",
        f"model:      {cfg.name or 'custom DiT'} (depth {cfg.depth}, hidden {cfg.hidden_size}, "
        f"heads {cfg.num_heads}, patch {cfg.patch_size}, mlp ratio {cfg.mlp_ratio:g})",
        f"input:      latent {cfg.in_channels}×{cfg.input_size}×{cfg.input_size} "
        f"(image {cfg.input_size * VAE_FACTOR}×{cfg.input_size * VAE_FACTOR}), {cfg.num_tokens} tokens",
        f"classes:    {cfg.num_classes} (+ null class {cfg.null_class}), learn_sigma {cfg.learn_sigma} "
        f"({cfg.out_channels} output channels)",
        f"flavor:     {flavor_text}",
        f"parameters: {n_params:,} (incl. pos_embed), {cfg.macs_per_forward() / 1e9:.2f} GMACs per image",
    ]
    return "\n".join(lines + [f"note:       {n}" for n in notes])


def random_dit(
    model: str,
    image_size: int = 256,
    *,
    num_classes: int = 1000,
    flavor: str = "official",
    seed: int = 0,
    std: float = PERTURB_STD,
) -> tuple[DiT, DiTConfig]:
    """A published config with seeded random weights; the global RNG is left untouched.

    The paper's init zeroes the adaLN-Zero layers (the model then outputs exactly 0), so those
    get small seeded noise too: every path through the network carries signal.
    """
    cfg = model_config(model, image_size, num_classes=num_classes, flavor=flavor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DiT(cfg)
    perturb_zero_initialised(net, seed=seed, std=std)
    return net.eval(), cfg


def perturb_zero_initialised(net: DiT, *, seed: int = 0, std: float = PERTURB_STD) -> None:
    """Fill the adaLN-Zero layers (weights and biases) with N(0, std²) noise from a private generator."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for lin in net.zero_initialised():
            for p in (lin.weight, lin.bias):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def to_diffusers_state_dict(net: DiT) -> Tensors:
    """Our weights under diffusers' `DiTTransformer2DModel` names (qkv split, embedders per block).

    Tensors are fresh copies, so the result can be saved with safetensors (no shared storage).
    """
    sd = {k: v.detach() for k, v in net.state_dict().items()}
    out: Tensors = {}
    for theirs, ours in _TOP_RENAMES.items():
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = sd[f"{ours}.{p}"]
    for n in range(net.config.depth):
        src, dst = f"blocks.{n}.", f"transformer_blocks.{n}."
        for theirs, ours in _BLOCK_RENAMES.items():
            for p in ("weight", "bias"):
                out[f"{dst}{theirs}.{p}"] = sd[f"{src}{ours}.{p}"]
        for p in ("weight", "bias"):
            for name, part in zip("qkv", sd[f"{src}attn.qkv.{p}"].chunk(3, dim=0)):
                out[f"{dst}attn1.to_{name}.{p}"] = part
        for theirs, ours in _SHARED_RENAMES.items():
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


def from_diffusers_state_dict(state: Tensors) -> Tensors:
    """diffusers names → ours: fuse q|k|v, fold the per-block embedder copies (which must be
    identical), drop the recomputable pos_embed buffer. Unknown keys pass through unchanged so the
    strict load names them."""
    src = dict(state)
    src.pop("pos_embed.pos_embed", None)
    out: Tensors = {}

    def move(old: str, new: str) -> None:
        for key in [k for k in src if k.startswith(old + ".")]:
            out[new + key[len(old) :]] = src.pop(key)

    for theirs, ours in _TOP_RENAMES.items():
        move(theirs, ours)
    for n in range(_count_blocks(src, "transformer_blocks.")):
        pre = f"transformer_blocks.{n}."
        for theirs, ours in _BLOCK_RENAMES.items():
            move(pre + theirs, f"blocks.{n}.{ours}")
        for p in ("weight", "bias"):
            parts = [f"{pre}attn1.to_{c}.{p}" for c in "qkv"]
            if all(k in src for k in parts):
                out[f"blocks.{n}.attn.qkv.{p}"] = torch.cat([src.pop(k) for k in parts], dim=0)
        for theirs, ours in _SHARED_RENAMES.items():
            for key in [k for k in src if k.startswith(pre + theirs + ".")]:
                target = ours + key[len(pre + theirs) :]
                tensor = src.pop(key)
                if target not in out:
                    out[target] = tensor
                elif not (tensor.shape == out[target].shape and torch.equal(tensor, out[target])):
                    raise UserError(
                        f"diffusers weights do not fit DiT: {key} differs from the first block's copy "
                        "(DiT shares one timestep/class embedder across blocks)"
                    )
    out.update(src)
    return out


# --------------------------------------------------------------------------------------------
# resolving a source and reading each format


def _prepare(
    source: str | os.PathLike | None,
    model: str | None,
    image_size: int | None,
    flavor: str | None,
    num_classes: int | None,
    num_heads: int | None,
    cache_dir: str | os.PathLike | None,
) -> tuple[RawWeights, DiTConfig]:
    """Read the weights (downloading if needed) and settle the config they must be loaded with."""
    from dit_export.models.embedded import is_embedded, resolve_embedded

    if source is None and is_embedded(model):  # a shipped model: its file, through the same path
        ckpt, _, size, heads = resolve_embedded(str(model))
        source, model = str(ckpt), None
        image_size, num_heads = image_size or size, num_heads or heads
    if source is None:
        if not model:
            raise UserError("give a checkpoint (path, released name or hub id), or a model name")
        canon, size = canonical_name(model), image_size or 256
        source = hub.official_file_for(canon, size)
        if source is None:
            released = ", ".join(f"{m} at {s}" for m, s in hub.OFFICIAL_CHECKPOINTS.values())
            raise UserError(
                f"no released weights for {canon} at image {size} (released: {released}); "
                "pass a checkpoint or use random weights"
            )
    path = _resolve(str(source), cache_dir)
    raw = _read(path)
    if path.name in hub.OFFICIAL_CHECKPOINTS:
        raw.model_hint, raw.image_hint = hub.OFFICIAL_CHECKPOINTS[path.name]
    cfg = _settle_config(raw, model, image_size, flavor, num_classes, num_heads)
    return raw, cfg


def _resolve(source: str, cache_dir: str | os.PathLike | None) -> Path:
    """A local path as is; a released file name or a Hub id through the download cache."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source in hub.OFFICIAL_CHECKPOINTS:
        return hub.fetch_official(source, cache_dir)
    if hub.looks_like_hub_id(source):
        return hub.fetch_hub(source, cache_dir)
    raise UserError(
        f"no such checkpoint: {source} (not a file or folder, a released name "
        f"({', '.join(hub.OFFICIAL_CHECKPOINTS)}), or a Hub id like {next(iter(hub.HUB_CHECKPOINTS))})"
    )


def _read(path: Path) -> RawWeights:
    """Dispatch on the container: folder → diffusers; .safetensors; anything else → torch pickle."""
    if path.is_dir():
        return _read_diffusers_folder(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path)
    return _read_torch(path)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte header length and a JSON object (torch files start 'PK')."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size


def _read_torch(path: Path) -> RawWeights:
    """A .pt/.pth/.bin: flat state dict, training checkpoint (EMA preferred), or diffusers .bin."""
    obj = _safe_torch_load(path)
    if isinstance(obj, dict) and _is_tensor_dict(obj):
        return _classify(path, obj, f"state dict ({path.suffix or 'pickle'})")
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict"):
            if isinstance(obj.get(key), dict) and _is_tensor_dict(obj[key]):
                raw = _classify(path, obj[key], f"training checkpoint ({key} weights)")
                args = obj.get("args")
                if isinstance(args, argparse.Namespace):
                    _apply_training_args(raw, args)
                return raw
        keys = ", ".join(map(str, list(obj)[:5]))
        raise UserError(f"{path} is not a DiT checkpoint: a dict with keys {keys} but no weights")
    raise UserError(f"{path} is not a DiT checkpoint: it holds a {type(obj).__name__}, not a dict of tensors")


def _read_safetensors(path: Path) -> RawWeights:
    state = _load_safetensors(path)
    raw = _classify(path, state, "safetensors")
    if raw.flavor == "diffusers" and (path.parent / "config.json").is_file():
        _apply_diffusers_config(raw, path.parent / "config.json")
    return raw


def _read_diffusers_folder(path: Path) -> RawWeights:
    """A `DiTTransformer2DModel.save_pretrained` folder, or a pipeline root holding one in transformer/."""
    folder = path
    if not (folder / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        folder = path / "transformer"
    if not (folder / "config.json").is_file():
        raise UserError(f"{path} is not a diffusers DiT folder: no config.json or transformer/config.json")
    state = _load_diffusers_weights(folder)
    raw = _classify(folder, state, "folder")
    _apply_diffusers_config(raw, folder / "config.json")
    return raw


def _load_diffusers_weights(folder: Path) -> Tensors:
    """diffusion_pytorch_model.safetensors, its sharded form, or the older .bin."""
    stem = folder / "diffusion_pytorch_model"
    single = stem.with_name(stem.name + ".safetensors")
    index = stem.with_name(stem.name + ".safetensors.index.json")
    legacy = stem.with_name(stem.name + ".bin")
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index} is not a safetensors index ({e})") from None
        if any(Path(shard).name != shard for shard in shards):
            raise UserError(f"{index} names shards outside its folder")
        state: Tensors = {}
        for shard in shards:
            state.update(_load_safetensors(folder / shard))
        return state
    if legacy.is_file():
        obj = _safe_torch_load(legacy)
        if not (isinstance(obj, dict) and _is_tensor_dict(obj)):
            raise UserError(f"{legacy} is not a state dict")
        return obj
    raise UserError(f"{folder} has a config.json but no diffusion_pytorch_model.safetensors (or .bin)")


def _classify(path: Path, state: Tensors, fmt: str) -> RawWeights:
    """Official or diffusers key names? Converts diffusers to ours; anything else is refused."""
    state = _strip_prefixes(state)
    if any(k.startswith(("transformer_blocks.", "pos_embed.proj.")) for k in state):
        return RawWeights(from_diffusers_state_dict(state), fmt=f"diffusers {fmt}", flavor="diffusers")
    if "x_embedder.proj.weight" in state:
        return RawWeights(state, fmt=f"official {fmt}")
    some = ", ".join(list(state)[:3]) or "none"
    raise UserError(f"{path} holds no DiT weights (keys: {some}, ...)")


def _apply_diffusers_config(raw: RawWeights, config_path: Path) -> None:
    """Take heads and latent size from a diffusers config.json (weights alone do not carry them)."""
    try:
        conf = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {config_path}: {e}") from None
    if not isinstance(conf, dict):
        raise UserError(f"{config_path} is not a diffusers config (not a JSON object)")
    cls = conf.get("_class_name")
    if cls is not None and cls not in _DIFFUSERS_CLASSES:
        raise UserError(f"{config_path} describes a {cls}, not a DiT transformer")
    if conf.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise UserError(f"{config_path}: norm_type {conf['norm_type']!r} is not DiT's ada_norm_zero")
    heads, size = conf.get("num_attention_heads"), conf.get("sample_size")
    raw.num_heads = int(heads) if isinstance(heads, int) else None
    raw.input_size = int(size) if isinstance(size, int) else None


def _apply_training_args(raw: RawWeights, args: argparse.Namespace) -> None:
    """train.py's args name the model and image size: use them as a cross-check."""
    name, size = getattr(args, "model", None), getattr(args, "image_size", None)
    try:
        raw.model_hint = canonical_name(name) if isinstance(name, str) else None
    except UserError:
        raw.model_hint = None
    raw.image_hint = size if isinstance(size, int) else None
    if raw.model_hint:
        raw.notes.append(f"training args: model {raw.model_hint}, image size {raw.image_hint}")


# --------------------------------------------------------------------------------------------
# config inference, cross-checks, building


def _settle_config(
    raw: RawWeights,
    model: str | None,
    image_size: int | None,
    flavor: str | None,
    num_classes: int | None,
    num_heads: int | None,
) -> DiTConfig:
    """Infer the config from the weights; check it against every given (or implied) expectation."""
    state = raw.state
    latent = raw.input_size
    if latent is None and "pos_embed" not in state and image_size:
        latent = image_size // VAE_FACTOR
    model = model or raw.model_hint
    if model is not None:
        model = canonical_name(model)
    heads = num_heads or raw.num_heads or (_heads_of(model) if model else None)
    inferred = _infer_config(state, heads=heads, input_size=latent, flavor=flavor or raw.flavor)
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
        expected = model_config(
            model,
            inferred.input_size * VAE_FACTOR,
            num_classes=inferred.num_classes,
            learn_sigma=inferred.learn_sigma,
            flavor=inferred.flavor,
        )
        if raw.num_heads is not None and raw.num_heads != expected.num_heads:
            raise UserError(
                f"weights are not {model}: config.json has {raw.num_heads} heads, expected {expected.num_heads}"
            )
        cfg, label = expected, model
    if "pos_embed" not in state:  # diffusers: recompute the fixed table for this latent size
        state["pos_embed"] = torch.from_numpy(sincos_pos_embed(cfg.hidden_size, cfg.grid_size))[None]
        raw.notes.append(f"pos_embed recomputed for latent {cfg.input_size} (diffusers does not store it)")
    _check_shapes(state, cfg, label=label)
    return cfg


def _infer_config(state: Tensors, *, heads: int | None, input_size: int | None, flavor: str) -> DiTConfig:
    """Depth, width, patch, channels, classes, learn_sigma and latent size read off tensor shapes."""
    patch_w = _need(state, "x_embedder.proj.weight")
    if patch_w.ndim != 4 or patch_w.shape[2] != patch_w.shape[3]:
        raise UserError(f"x_embedder.proj.weight has shape {_shape(patch_w)}, not a square patch conv")
    hidden, in_ch, p = int(patch_w.shape[0]), int(patch_w.shape[1]), int(patch_w.shape[2])
    depth = _count_blocks(state, "blocks.")
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
        pos = state["pos_embed"]
        grid = math.isqrt(int(pos.shape[-2]))
        if grid * grid != pos.shape[-2]:
            raise UserError(f"pos_embed has {pos.shape[-2]} tokens, not a square grid")
        input_size = grid * p
    if heads is None:
        heads = _heads_of_width(hidden)
    if heads is None:
        raise UserError(
            f"cannot tell the attention heads of a custom width {hidden}; pass num_heads "
            "(or use a diffusers folder, whose config.json has them)"
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


def _check_shapes(state: Tensors, cfg: DiTConfig, *, label: str) -> None:
    """Every key of `cfg`'s model present with its shape, nothing extra; one line otherwise."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DiT(cfg).state_dict().items()}
    for key in sorted(expected, key=lambda k: k == "pos_embed"):  # layer shapes say more than positions
        shape = expected[key]
        if key in state and tuple(state[key].shape) != shape:
            raise UserError(f"weights are not {label}: {key} is {_shape(state[key])}, expected {shape}")
    depth = _count_blocks(state, "blocks.")
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


def _build(cfg: DiTConfig, state: Tensors) -> DiT:
    """Allocate nothing twice: build on the meta device and adopt the (fp32) checkpoint tensors."""
    with torch.device("meta"):
        net = DiT(cfg)
    net.load_state_dict(
        {k: v.to(torch.float32).contiguous() for k, v in state.items()}, strict=True, assign=True
    )
    net.pos_embed.requires_grad_(False)
    return net.eval()


# --------------------------------------------------------------------------------------------
# small helpers


def _safe_torch_load(path: Path) -> object:
    """torch.load with weights_only=True and only argparse.Namespace allowed; every failure is one line."""
    try:
        with warnings.catch_warnings(), _allow_namespace():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        text = str(e)
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            raise UserError(
                f"refused {path}: it asks to load the Python object {refused.group(1)}, which plain weights "
                "never need (loaded with weights_only=True; re-save just its state_dict if you trust it)"
            ) from None
        raise UserError(f"{path} is not a PyTorch checkpoint (corrupt, or not a weights file)") from None
    except EOFError:
        raise UserError(f"{path} is empty or truncated") from None
    except Exception as e:  # RuntimeError from the zip reader, OSError, struct/unicode errors, ...
        first = str(e).strip().split(". ")[0].splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {first})"
        ) from None


def _allow_namespace() -> contextlib.AbstractContextManager:
    """The one extra class a training checkpoint pickles (its argparse args), allowed explicitly."""
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if scoped is not None:
        return scoped([argparse.Namespace])
    torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4: process-wide allow-list
    return contextlib.nullcontext()


def _load_safetensors(path: Path) -> Tensors:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(
            f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:200]})"
        ) from None


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_prefixes(state: Tensors) -> Tensors:
    """Drop the wrappers DDP ('module.') and torch.compile ('_orig_mod.') add to every key."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _count_blocks(state: Tensors, prefix: str) -> int:
    """Number of blocks = 1 + the highest index under `prefix` (gaps then show as missing keys)."""
    ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _need(state: Tensors, key: str) -> torch.Tensor:
    if key not in state:
        raise UserError(f"not DiT weights: no {key} (keys: {_few(list(state))})")
    return state[key]


def _heads_of(model: str) -> int:
    return SIZES[canonical_name(model)[4:].split("/")[0]][2]


def _heads_of_width(hidden: int) -> int | None:
    """Heads of the published config with this width (each published width is unique)."""
    return next((heads for _, width, heads in SIZES.values() if width == hidden), None)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _few(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
