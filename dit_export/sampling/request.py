"""`SampleRequest`: what to sample, the one request of the Python runtime (imports no numpy or torch;
`validate` asks the numpy-only sampler registry).

Field for field the C API's `dit_sample_params` (cpp/include/dit_runtime.h): `labels`, `seed`,
`cfg_scale`, `steps`, `sampler`, and `noise` (the C side takes a `noise_fn` for non-Philox noise);
`first_index` is the global index of `labels[0]` in a larger set (Philox noise is keyed by
(seed, first_index + j)), so a shard of a sample set draws exactly the images of a single run.
`cache_interval` / `cache_order` choose the forecast step cache (`dit_export.sampling.cache`:
interval 1 = every step full = no caching; order 0 = FORA reuse, 1–3 = Taylor).
`validate()` is the one place where a request is checked; every failure is a one-line `UserError`
that names the field, the value and the limit:

    req = SampleRequest(labels=(207, 360), seed=0, cfg_scale=4.0, steps=50).validate(num_classes=1000)

Samplers are the registry's (`dit_export.sampling.samplers`: `validate` asks it, once); the
noise kinds live here, so the noise generators, the runtime and the CLI name the same words.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields

from dit_export.errors import UserError
from dit_export.sampling import NUM_TRAIN_STEPS

DEFAULT_CACHE_ORDER = 2  # = sampling.cache.DEFAULT_ORDER (numpy there; tests/sampling/test_request.py checks)

NOISE_KINDS = ("philox", "torch")
MAX_SEED = 2**64 - 1  # Philox key: two 32-bit words
MAX_IMAGES = 2**32  # Philox image-index counter word: global indices 0..2**32-1


def _is_int(v: object) -> bool:
    """An integer that is not a bool (numpy integers count; numpy/Python bools and floats do not)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def _describe(v: object) -> str:
    return f"{v!r} ({type(v).__name__})"


@dataclass(frozen=True)
class SampleRequest:
    """Class labels (one image each), Philox seed, guidance, step count, sampler kind, noise kind."""

    labels: tuple[int, ...]
    seed: int = 0
    cfg_scale: float = 4.0
    steps: int = 250
    sampler: str = "ddpm"  # a registered sampler (samplers.names())
    noise: str = "philox"  # NOISE_KINDS: philox (ours, every backend) | torch (the official stream)
    first_index: int = 0  # global index of labels[0]: its Philox noise is keyed by (seed, first_index)
    cache_interval: int = 1  # forecast cache: one full step in every N (1 = no caching)
    cache_order: int = DEFAULT_CACHE_ORDER  # Taylor order of the forecast (0 = FORA reuse); unused at N = 1

    @property
    def cached(self) -> bool:
        """Whether the forecast cache runs (any interval above 1)."""
        return self.cache_interval > 1

    def __post_init__(self) -> None:
        labels = self.labels
        if not isinstance(labels, (str, bytes, dict)) and hasattr(labels, "__iter__"):
            object.__setattr__(self, "labels", tuple(labels))  # lists, ranges, numpy arrays

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs (2N rows per forward) only above 1."""
        return self.cfg_scale > 1.0

    def validate(
        self, num_classes: int | None = None, num_train_steps: int = NUM_TRAIN_STEPS
    ) -> SampleRequest:
        """The normalised request (plain ints/floats), or a one-line UserError naming the bad field."""
        labels = self.labels
        if not isinstance(labels, tuple):
            raise UserError(f"labels must be a sequence of class ids, got {_describe(labels)}")
        if not labels:
            raise UserError("no class labels given")
        for c in labels:
            if not _is_int(c):
                raise UserError(f"class labels must be integers, got {_describe(c)}")
            if c < 0 or (num_classes is not None and c >= num_classes):
                limit = f"classes 0..{num_classes - 1}" if num_classes is not None else "class ids ≥ 0"
                raise UserError(f"class id {c} is out of range: this model has {limit}")
        if not _is_int(self.seed):
            raise UserError(f"seed must be an integer, got {_describe(self.seed)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed {self.seed} is out of range: seeds are 0..2**64-1")
        cfg = self.cfg_scale
        if not isinstance(cfg, numbers.Real) or isinstance(cfg, bool) or type(cfg).__name__ == "bool_":
            raise UserError(f"cfg scale must be a number, got {_describe(cfg)}")
        if not (math.isfinite(cfg) and cfg >= 1.0):
            raise UserError(f"cfg scale must be ≥ 1 (1 = no guidance), got {cfg}")
        if not _is_int(self.steps):
            raise UserError(f"steps must be an integer, got {_describe(self.steps)}")
        if self.steps < 1:
            raise UserError(f"steps {self.steps}: at least 1")
        if self.steps > num_train_steps:
            raise UserError(f"steps {self.steps}: at most {num_train_steps} (the training steps)")
        from dit_export.sampling import samplers  # numpy: only when a request is checked
        from dit_export.sampling.cache import check_cache

        samplers.get(self.sampler).check_steps(self.steps)  # the name and its fewest steps
        if self.noise not in NOISE_KINDS:
            raise UserError(f"unknown noise kind {self.noise!r}; choose one of {', '.join(NOISE_KINDS)}")
        if not _is_int(self.first_index):
            raise UserError(f"first_index must be an integer, got {_describe(self.first_index)}")
        if self.first_index < 0 or self.first_index + len(labels) > MAX_IMAGES:
            raise UserError(
                f"images {self.first_index}..{self.first_index + len(labels) - 1} are out of range: "
                "global image indices are 0..2**32-1"
            )
        if self.first_index and self.noise != "philox":
            raise UserError("torch noise reproduces one official batch only; first_index needs philox noise")
        for name in ("cache_interval", "cache_order"):
            if not _is_int(getattr(self, name)):
                raise UserError(
                    f"{name.replace('_', ' ')} must be an integer, got {_describe(getattr(self, name))}"
                )
        check_cache(int(self.cache_interval), int(self.cache_order))
        return replace(
            self,
            labels=tuple(int(c) for c in labels),
            first_index=int(self.first_index),
            seed=int(self.seed),
            cfg_scale=float(cfg),
            steps=int(self.steps),
            cache_interval=int(self.cache_interval),
            cache_order=int(self.cache_order),
        )

    def to_dict(self) -> dict:
        """Plain JSON-able fields (labels as a list)."""
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SampleRequest:
        fields = tuple(f.name for f in dataclass_fields(cls))
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise UserError(f"unknown sample request field {unknown[0]!r}; fields: {', '.join(fields)}")
        return cls(**d)
