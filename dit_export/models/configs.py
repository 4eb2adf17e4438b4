"""DiT model configurations: the 12 published shapes and the numerics "flavors".

A config is everything needed to build the network and nothing about its weights. The flavor
captures where diffusers' port computes differently from the official code, so the same
weights can be run either way on purpose, never by accident.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

from dit_export.errors import UserError
from dit_export.models.embedded import EMBEDDED, embedded_model, is_embedded

# name -> (depth, hidden size, heads), from the paper's Table 1.
SIZES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
}
PATCHES = (2, 4, 8)

FLAVORS = ("official", "diffusers")
DEFAULT_IMAGE_SIZE = 256


@dataclass(frozen=True)
class DiTConfig:
    """Shape and numerics of one DiT network."""

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    input_size: int = 32  # latent side L (image side / VAE factor)
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    mlp_ratio: float = 4.0
    flavor: str = "official"
    name: str = ""

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise UserError(f"unknown flavor {self.flavor!r}; choose one of {', '.join(FLAVORS)}")
        if self.input_size % self.patch_size:
            raise UserError(
                f"latent size {self.input_size} is not a multiple of patch size {self.patch_size}"
            )
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise UserError(f"hidden size {self.hidden_size} must divide by heads and by 4")

    # --- derived shapes -------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def null_class(self) -> int:
        return self.num_classes

    # --- flavor numerics ------------------------------------------------------------------
    @property
    def freq_shift(self) -> int:
        """diffusers divides the sinusoid exponent by half−1 (127), the official code by half."""
        return 1 if self.flavor == "diffusers" else 0

    @property
    def mlp_norm_eps(self) -> float:
        """diffusers' pre-MLP LayerNorm uses eps 1e-5; the official one 1e-6."""
        return 1e-5 if self.flavor == "diffusers" else 1e-6

    @property
    def cfg_channels(self) -> int:
        """Official CFG guides ε channels 0–2 only (a kept quirk); diffusers guides all of ε."""
        return self.in_channels if self.flavor == "diffusers" else 3

    # --- cost -----------------------------------------------------------------------------
    def macs_per_forward(self) -> int:
        """Multiply-accumulates for one image through the network (the paper's "Gflops")."""
        d, t, p = self.hidden_size, self.num_tokens, self.patch_size
        per_block = t * (3 * d * d + d * d + 2 * d * self.mlp_hidden) + 2 * t * t * d + 6 * d * d
        embed = t * self.in_channels * p * p * d + 256 * d + d * d
        final = t * d * p * p * self.out_channels + 2 * d * d
        return self.depth * per_block + embed + final

    def num_params(self) -> int:
        """Parameters of the network, pos_embed included (XL/2: 675,129,632), from the shapes alone."""
        d, p, c = self.hidden_size, self.patch_size, self.in_channels
        linear = lambda i, o: i * o + o  # noqa: E731
        per_block = linear(d, 3 * d) + linear(d, d) + linear(d, self.mlp_hidden) + linear(self.mlp_hidden, d)
        per_block += linear(d, 6 * d)
        embed = c * p * p * d + d + self.num_tokens * d + linear(256, d) + linear(d, d)
        embed += (self.num_classes + 1) * d
        final = linear(d, 2 * d) + linear(d, p * p * self.out_channels)
        return self.depth * per_block + embed + final

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"unknown DiT config fields: {', '.join(unknown)}")
        return cls(**d)

    def with_(self, **changes) -> DiTConfig:
        return replace(self, **changes)


_NAME = re.compile(r"^(?:DiT-)?(XL|L|B|S)[/-](2|4|8)$", re.IGNORECASE)


def canonical_name(name: str) -> str:
    """'XL/2', 'dit-xl/2', 'DiT-XL-2' → 'DiT-XL/2'; a shipped model's own name; else a user error."""
    if is_embedded(name):
        return embedded_model(name).name
    m = _NAME.match(name.strip())
    if not m:
        known = ", ".join(f"{s}/{p}" for s in SIZES for p in PATCHES)
        shipped = ", ".join(EMBEDDED)
        raise UserError(f"unknown model {name!r}; known: {known} (optionally prefixed 'DiT-'), {shipped}")
    return f"DiT-{m.group(1).upper()}/{m.group(2)}"


def model_config(
    name: str,
    image_size: int | None = None,
    *,
    vae_factor: int = 8,
    num_classes: int | None = None,
    learn_sigma: bool = True,
    flavor: str = "official",
) -> DiTConfig:
    """The config of a published (or shipped) model name at an image size (latent = image / VAE factor;
    default 256 for a published model, its own for a shipped one)."""
    if is_embedded(name):
        return embedded_config(name, image_size, num_classes=num_classes, flavor=flavor)
    canon = canonical_name(name)
    size, patch = canon[4:].split("/")
    depth, hidden, heads = SIZES[size]
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if image_size <= 0 or image_size % vae_factor:
        raise UserError(f"image size {image_size} is not a multiple of the VAE factor {vae_factor}")
    latent = image_size // vae_factor
    if latent % int(patch):
        raise UserError(
            f"image size {image_size} must be a multiple of {vae_factor * int(patch)} for {canon}"
        )
    return DiTConfig(
        depth=depth,
        hidden_size=hidden,
        num_heads=heads,
        patch_size=int(patch),
        input_size=latent,
        num_classes=1000 if num_classes is None else num_classes,
        learn_sigma=learn_sigma,
        flavor=flavor,
        name=canon,
    )


def name_of(depth: int, hidden: int, patch: int) -> str:
    """The published name matching a shape, or '' for a custom one."""
    for size, (d, h, _) in SIZES.items():
        if (d, h) == (depth, hidden):
            return f"DiT-{size}/{patch}"
    return ""


def embedded_config(
    name: str, image_size: int | None = None, *, num_classes: int | None = None, flavor: str = "official"
) -> DiTConfig:
    """The config a shipped model was trained with (its meta.json), checked against what was asked."""
    m = embedded_model(name)
    if image_size is not None and image_size != m.image_size:
        raise UserError(f"{m.name} is trained at image size {m.image_size}, not {image_size}")
    if num_classes is not None and num_classes != m.num_classes:
        raise UserError(f"{m.name} has {m.num_classes} classes, not {num_classes}")
    dit = m.meta().get("dit")
    if not isinstance(dit, dict):
        raise UserError(f"{m.meta_path} has no 'dit' config (reinstall dit_export)")
    return DiTConfig.from_dict(dit).with_(flavor=flavor, name=m.name)  # printed, recorded: its own name


def heads_of(model: str) -> int:
    """Attention heads of a published or shipped model name."""
    if is_embedded(model):
        return embedded_model(model).num_heads
    return SIZES[canonical_name(model)[4:].split("/")[0]][2]


def heads_of_width(hidden: int) -> int | None:
    """Heads of the published config with this width (each published width is unique)."""
    return next((heads for _, width, heads in SIZES.values() if width == hidden), None)
