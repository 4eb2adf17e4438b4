"""Load a DiT from any checkpoint a user is likely to have, or from seeded noise.

The pieces live by concept: ``hub`` finds or downloads the file, ``formats`` reads it into
official key names (``diffusers_keys`` maps diffusers' names), ``infer`` settles the config from
the shapes; this module puts them together and builds the network with every key accounted for.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dit_export.errors import UserError
from dit_export.models import hub, sniff
from dit_export.models.configs import DiTConfig, canonical_name, model_config
from dit_export.models.dit import DiT
from dit_export.models.embedded import embedded_model, is_embedded, resolve_embedded
from dit_export.models.formats import RawWeights, read_weights
from dit_export.models.infer import settle_config

VAE_FACTOR = 8  # latent side = image side / 8 for the SD VAE every DiT uses
PERTURB_STD = 0.02  # random-weight noise for the adaLN-Zero layers (outputs O(0.1–1), see tests)
CONFIG_KEYWORDS = ("model", "image_size", "flavor", "num_classes", "num_heads", "cache_dir")  # of load_config


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
    """An eval-mode fp32 DiT and its config from a path, a shipped or released name, a Hub id, or
    seeded noise.

    `model`, `image_size`, `num_classes` are cross-checked against the weights (one-line error on
    a mismatch); `flavor` overrides the format's numerics ("diffusers" for diffusers checkpoints).
    `num_heads` is only needed for a custom width stored without a config.json or meta.json.
    """
    if random_weights:
        if source is not None:
            raise UserError("give either a checkpoint or random_weights, not both")
        if not model:
            raise UserError("random weights need a model name (e.g. S/8)")
        return random_dit(
            model, image_size, num_classes=num_classes, flavor=flavor or "official", seed=weights_seed
        )
    raw, cfg = _prepare(source, model, image_size, flavor, num_classes, num_heads, cache_dir)
    return _build(cfg, raw.state), cfg


def load_config(
    source: str | os.PathLike | None,
    *,
    model: str | None = None,
    image_size: int | None = None,
    flavor: str | None = None,
    num_classes: int | None = None,
    num_heads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> DiTConfig:
    """The config `load_dit` would settle on, without building the network."""
    return _prepare(source, model, image_size, flavor, num_classes, num_heads, cache_dir)[1]


def describe(
    source: str | os.PathLike | None, *, random_weights: bool = False, weights_seed: int = 0, **config: object
) -> str:
    """A few lines for `info`: detected format, config, flavor and parameter count (no model built).

    `source` may be a shipped model's name (``info tiny-digits``); `config`: the keywords of
    `load_config` (model, image_size, flavor, num_classes, num_heads, cache_dir), as `load_dit` takes them.
    """
    unknown = sorted(set(config) - set(CONFIG_KEYWORDS))
    if unknown:
        raise TypeError(f"describe() got unexpected keyword arguments: {', '.join(unknown)}")
    model, image_size, flavor, num_classes, num_heads, cache_dir = (config.get(k) for k in CONFIG_KEYWORDS)
    if random_weights:
        if not model:
            raise UserError("random weights need a model name (e.g. S/8)")
        cfg = model_config(model, image_size, num_classes=num_classes, flavor=flavor or "official")
        fmt, notes = f"random weights (seed {weights_seed}, adaLN-Zero layers perturbed)", []
    else:
        raw, cfg = _prepare(source, model, image_size, flavor, num_classes, num_heads, cache_dir)
        if is_embedded(raw.model_hint):
            cfg = cfg.with_(name=embedded_model(str(raw.model_hint)).name)  # a shipped model: its name
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in raw.state.values()})
        fmt, notes = f"{raw.fmt}, stored {'/'.join(dtypes)}", raw.notes
    flavor_text = (
        "diffusers (timestep sinusoid /127, pre-MLP LayerNorm eps 1e-5, CFG on all 4 ε channels)"
        if cfg.flavor == "diffusers"
        else "official (timestep sinusoid /128, LayerNorm eps 1e-6, CFG on ε channels 0–2)"
    )
    image = cfg.input_size * VAE_FACTOR
    lines = [
        f"format:     {fmt}",
        f"model:      {cfg.name or 'custom DiT'} (depth {cfg.depth}, hidden {cfg.hidden_size}, "
        f"heads {cfg.num_heads}, patch {cfg.patch_size}, mlp ratio {cfg.mlp_ratio:g})",
        f"input:      latent {cfg.in_channels}×{cfg.input_size}×{cfg.input_size} "
        f"(image {image}×{image}), {cfg.num_tokens} tokens",
        f"classes:    {cfg.num_classes} (+ null class {cfg.null_class}), learn_sigma {cfg.learn_sigma} "
        f"({cfg.out_channels} output channels)",
        f"flavor:     {flavor_text}",
        f"parameters: {cfg.num_params():,} (incl. pos_embed), {cfg.macs_per_forward() / 1e9:.2f} GMACs per image",
    ]
    return "\n".join(lines + [f"note:       {n}" for n in notes])


def random_dit(
    model: str,
    image_size: int | None = None,
    *,
    num_classes: int | None = None,
    flavor: str = "official",
    seed: int = 0,
    std: float = PERTURB_STD,
) -> tuple[DiT, DiTConfig]:
    """A published (or shipped) config with seeded random weights; the global RNG is left untouched.

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
    if source is not None and is_embedded(str(source)) and not Path(source).exists():
        source, model = None, model or str(source)  # `info tiny-digits`: the name of a shipped model
    if source is None and is_embedded(model):  # a shipped model: its file, through the same path
        source = resolve_embedded(str(model))[0]
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
    path = hub.locate_checkpoint(str(source), cache_dir)
    raw = read_weights(path)
    if path.name in hub.OFFICIAL_CHECKPOINTS:
        raw.model_hint, raw.image_hint = hub.OFFICIAL_CHECKPOINTS[path.name]
    raw.model_hint = sniff.embedded_of_path(path) or raw.model_hint  # the shipped file: its recorded config
    cfg = settle_config(raw, model, image_size, flavor, num_classes, num_heads)
    return raw, cfg


def _build(cfg: DiTConfig, state: dict[str, torch.Tensor]) -> DiT:
    """Allocate nothing twice: build on the meta device and adopt the (fp32) checkpoint tensors."""
    with torch.device("meta"):
        net = DiT(cfg)
    net.load_state_dict(
        {k: v.to(torch.float32).contiguous() for k, v in state.items()}, strict=True, assign=True
    )
    net.pos_embed.requires_grad_(False)
    return net.eval()
