"""`ModelSpec`: which DiT, which weights, which VAE — the one description every stage passes whole.

A spec is plain data (it round-trips through ``to_dict``/``from_dict``, so a manifest can store it
and the torch backend reload the same weights), and importing this module needs no torch: the
runtime can read a spec without the model code. ``validate()`` does every cheap check before
anything heavy is loaded; ``check_available()`` makes sure the weight files are here (downloading
them if allowed) before a model is built; ``load_dit()``/``load_vae()`` build the models.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dit_export.errors import UserError
from dit_export.lazy import optional_import
from dit_export.models import hub, sniff
from dit_export.models.configs import FLAVORS, DiTConfig, canonical_name, model_config
from dit_export.models.embedded import embedded_model, is_embedded

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from torch import nn

VAE_FACTOR = 8  # latent side = image side / 8 for the SD VAE every DiT uses
DEFAULT_IMAGE_SIZE = 256
DEFAULT_VAE = "mse"
RANDOM_VAES = ("random-sd", "random-small", "random-tiny")
VAE_SHORTHANDS = ("ema", "mse")
RELEASED_CLASSES = 1000  # ImageNet
MAX_SEED = 2**63 - 1  # torch generators take 64 bits; the adaLN perturbation uses seed + 1


@dataclass(frozen=True)
class ModelSpec:
    """A DiT and its weights (a checkpoint, a released name, a Hub id or seeded noise) plus a VAE.

    ``vae`` is a diffusers folder, a Hub id, ``ema``/``mse``, ``random-sd|random-small|random-tiny``
    (seeded with ``weights_seed``) or ``none``; a shipped model (``tiny-digits``) uses its own VAE
    when ``vae`` is left at the default ``mse``. ``flavor`` None means "from the checkpoint format".
    """

    model: str | None = None
    ckpt: str | None = None
    random_weights: bool = False
    weights_seed: int = 0
    vae: str = DEFAULT_VAE
    image_size: int | None = None
    num_classes: int | None = None
    flavor: str | None = None

    # --------------------------------------------------------------------------- checks
    def validate(self) -> ModelSpec:
        """Every check that needs no weights; the normalised spec (canonical model name, the image
        size filled in where the model fixes it, a local checkpoint as an absolute path, a shipped
        model's own VAE). One-line ``UserError`` on the first problem."""
        for flag, value in (("--model", self.model), ("--flavor", self.flavor)):
            if value is not None and not isinstance(value, str):
                raise UserError(f"{flag} must be a string, got {value!r}")
        for flag, value in (("--ckpt", self.ckpt), ("--vae", self.vae)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise UserError(f"{flag} must be a path or name, got {value!r}")
        if not isinstance(self.random_weights, bool):
            raise UserError(f"random_weights must be True or False, got {self.random_weights!r}")
        _check_int("--weights-seed", self.weights_seed, 0, MAX_SEED)
        if self.image_size is not None:
            _check_int("--image-size", self.image_size, 1, None)
            if self.image_size % VAE_FACTOR:
                raise UserError(
                    f"--image-size {self.image_size} is not a multiple of the VAE factor {VAE_FACTOR}"
                )
        if self.num_classes is not None:
            _check_int("--num-classes", self.num_classes, 1, None)
        if self.flavor is not None and self.flavor not in FLAVORS:
            raise UserError(f"unknown flavor {self.flavor!r}; choose one of {', '.join(FLAVORS)}")
        if self.ckpt and self.random_weights:
            raise UserError("give either --ckpt or --random-weights, not both")
        if self.random_weights and not self.model:
            raise UserError("--random-weights needs --model (e.g. --model S/8)")
        if not self.ckpt and not self.random_weights and not self.model:
            raise UserError("give --model, --ckpt or both (e.g. --model XL/2 downloads the official weights)")
        model = canonical_name(self.model) if self.model else None
        image_size, ckpt = self.image_size, (os.fspath(self.ckpt) if self.ckpt else None)
        if model and is_embedded(model):
            image_size = image_size or embedded_model(model).image_size
        elif model and not ckpt:
            image_size = image_size or DEFAULT_IMAGE_SIZE
        if model and image_size is not None:  # known name, image a multiple of 8·patch, classes
            model_config(model, image_size, num_classes=self.num_classes, flavor=self.flavor or "official")
        if model and not ckpt and not self.random_weights and not is_embedded(model):
            if hub.official_file_for(model, image_size) is None:
                released = ", ".join(f"{m} at {s}" for m, s in hub.OFFICIAL_CHECKPOINTS.values())
                raise UserError(
                    f"no released weights for {model} at image {image_size} (released: {released}); "
                    "pass --ckpt or --random-weights"
                )
            if self.num_classes not in (None, RELEASED_CLASSES):
                raise UserError(
                    f"the released {model} weights have {RELEASED_CLASSES} classes, not --num-classes "
                    f"{self.num_classes}"
                )
        if ckpt and Path(ckpt).expanduser().exists():
            ckpt = str(Path(ckpt).expanduser().resolve())
        elif ckpt and not (
            is_embedded(ckpt) or ckpt in hub.OFFICIAL_CHECKPOINTS or hub.looks_like_hub_id(ckpt)
        ):
            raise UserError(hub.no_such_checkpoint(ckpt))
        return replace(self, model=model, ckpt=ckpt, image_size=image_size, vae=self._vae_for(model))

    def _vae_for(self, model: str | None) -> str:
        vae = os.fspath(self.vae or "").strip()
        if not vae:
            raise UserError("--vae is empty: pass a diffusers folder, a Hub id, ema, mse, none or random-*")
        if vae.lower() in VAE_SHORTHANDS:
            vae = vae.lower()
        if vae == DEFAULT_VAE and model and is_embedded(model):
            return embedded_model(model).name  # a shipped model decodes with its own VAE
        if vae in ("none", *RANDOM_VAES, *VAE_SHORTHANDS) or is_embedded(vae):
            return vae
        path = Path(vae).expanduser()
        if path.exists():
            return str(path.resolve())
        if hub.looks_like_vae_hub_id(vae):
            return vae
        raise UserError(
            f"--vae {vae}: no such folder, and not a Hub id (owner/name), ema, mse, none or "
            f"{'|'.join(RANDOM_VAES)}"
        )

    def check_available(self, cache_dir: str | os.PathLike | None = None) -> ModelSpec:
        """The weight files of the DiT and the VAE are here (fetched now if allowed and needed):
        a missing file or an offline cache miss is one line before any model is built."""
        s = self.validate()
        if s.ckpt:
            hub.locate_checkpoint(s.ckpt, cache_dir)
        elif s.model and not s.random_weights and not is_embedded(s.model):
            hub.locate_checkpoint(hub.official_file_for(s.model, s.image_size), cache_dir)
        if s.vae not in ("none", *RANDOM_VAES):
            hub.locate_vae(s.vae, cache_dir)
        return s

    # --------------------------------------------------------------------------- derived
    @property
    def latent_size(self) -> int | None:
        """Latent side (image / 8), None while the image size is left to the weights."""
        return None if self.image_size is None else self.image_size // VAE_FACTOR

    @property
    def has_vae(self) -> bool:
        return self.vae != "none"

    @property
    def vae_source(self) -> str:
        """The VAE in words (what an export records): a Hub id, a folder, or 'random-sd (seed 0)'."""
        if self.vae in RANDOM_VAES:
            return f"{self.vae} (seed {self.weights_seed})"
        if is_embedded(self.vae):
            return embedded_model(self.vae).name  # the shipped model's VAE, wherever it is installed
        return hub.VAE_HUB_IDS.get(self.vae, self.vae)

    def folder_name(self, precision: str, batch: int) -> str:
        """The default export folder name, e.g. ``DiT-XL-2-256-fp16-b1``; never loads weights
        (a checkpoint without --model/--image-size is identified from its header or config)."""
        s = self.validate()
        name, size = s.model, s.image_size
        if s.ckpt and not (name and size):
            peeked = sniff.peek(s.ckpt)
            name, size = name or peeked.name, size or peeked.image_size
        if size is None:  # a pickle with a custom shape: the one case that must read the file
            cfg = _checkpoints().load_config(
                s.ckpt, model=s.model, flavor=s.flavor, num_classes=s.num_classes
            )
            name, size = name or cfg.name, cfg.input_size * VAE_FACTOR
        return f"{(name or 'DiT-custom').replace('/', '-')}-{size}-{precision}-b{batch}"

    # --------------------------------------------------------------------------- loading
    def load_dit(self, cache_dir: str | os.PathLike | None = None) -> tuple[nn.Module, DiTConfig]:
        """An eval-mode fp32 DiT and its config (downloads released weights / Hub ids when needed)."""
        s = self.validate()
        return _checkpoints().load_dit(
            s.ckpt,
            model=s.model,
            image_size=s.image_size,
            flavor=s.flavor,
            random_weights=s.random_weights,
            weights_seed=s.weights_seed,
            num_classes=s.num_classes,
            cache_dir=cache_dir,
        )

    def load_vae(self, cache_dir: str | os.PathLike | None = None) -> AutoencoderKL | None:
        """The diffusers AutoencoderKL (eval, no grad), or None for ``vae="none"``."""
        s = self.validate()
        if s.vae == "none":
            return None
        vae = optional_import("dit_export.models.vae", "the VAE decoder")  # torch + diffusers
        if s.vae in RANDOM_VAES:
            return vae.random_vae(s.vae.removeprefix("random-"), s.weights_seed)
        return vae.load_vae(s.vae, cache_dir=cache_dir)

    # --------------------------------------------------------------------------- data
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        if not isinstance(d, dict):
            raise UserError(f"a model spec must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(
                f"unknown model spec fields: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**d)


def _checkpoints():
    """The torch half of the model code, imported when a model is built (this module stays torch-free)."""
    return optional_import("dit_export.models.checkpoints", "loading a DiT")


def _check_int(flag: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f"≥ {low}"
        raise UserError(f"{flag} {value} is out of range (allowed {allowed})")
