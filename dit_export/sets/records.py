"""What a set is and what each shard records: the request, its labels, the identity every shard shares."""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dit_export.errors import UserError
from dit_export.fileio import sha256_file
from dit_export.sampling.request import DEFAULT_CACHE_ORDER, NUM_TRAIN_STEPS, SampleRequest
from dit_export.sets.launcher import Shard

if TYPE_CHECKING:
    from dit_export.runtime.sampler import Sampler

SCHEMA = "dit_export.sample_set/1"
DEFAULT_CHUNK_IMAGES = 64  # images per file, rounded up to a multiple of the engine batch

# The record's fields that say which engines made the set, in the order a difference is named: a set
# resumed with another folder reports the model or its manifest, not a consequence such as the batch.
ENGINE_FIELDS = ("model", "manifest_sha256", "image_size", "num_classes", "precision", "batch", "backend")
# The fields a set request shares with every `SampleRequest` it runs (same names, same checks).
REQUEST_FIELDS = ("seed", "cfg_scale", "steps", "sampler", "cache_interval", "cache_order")


@dataclass(frozen=True)
class SetRequest:
    """What the whole set is (the same in every shard).

    `num_images` N, or `per_class` K (N = K × the classes), or both when they agree;
    `classes=None`: all classes of the model, in order.
    """

    num_images: int | None = None
    classes: tuple[int, ...] | None = None
    seed: int = 0
    cfg_scale: float = 4.0
    steps: int = 250
    sampler: str = "ddpm"
    chunk: int | None = None  # images per file, a multiple of the engine batch (None: ~64)
    per_class: int | None = None
    cache_interval: int = 1  # the forecast step cache (SampleRequest's fields of the same names)
    cache_order: int = DEFAULT_CACHE_ORDER

    def validate(self, num_classes: int, num_train_steps: int = NUM_TRAIN_STEPS) -> SetRequest:
        """The normalised request with N resolved; one-line UserError for a bad field."""
        classes = tuple(range(num_classes)) if self.classes is None else tuple(self.classes)
        if not classes:
            raise UserError("no class labels given")
        n = self.num_images
        if self.per_class is not None:
            if not _is_count(self.per_class):
                raise UserError(f"per-class count must be an integer ≥ 1, got {self.per_class!r}")
            k = self.per_class * len(classes)
            if n is not None and n != k:
                per = f"--per-class {self.per_class} × {len(classes)} classes = {k}"
                raise UserError(f"--num-images {n} disagrees with {per}")
            n = k
        if n is None:
            raise UserError("give the number of images (--num-images N) or --per-class K")
        if not _is_count(n):
            raise UserError(f"the set needs an integer number of images ≥ 1, got {n!r}")
        if n > 2**32:
            raise UserError(f"{n} images: at most 2**32 (the Philox image index)")
        if self.chunk is not None and not _is_count(self.chunk):
            raise UserError(f"chunk must be an integer ≥ 1 image, got {self.chunk!r}")
        req = self.sample_request(classes).validate(num_classes, num_train_steps)
        return replace(
            self,
            **{k: getattr(req, k) for k in REQUEST_FIELDS},
            num_images=int(n),
            classes=None if self.classes is None else req.labels,
            chunk=None if self.chunk is None else int(self.chunk),
            per_class=None,
        )

    def sample_request(self, labels: Sequence[int], first_index: int = 0) -> SampleRequest:
        """The runtime's request for `labels` (global images first_index, …) with this set's fields."""
        fields = {k: getattr(self, k) for k in REQUEST_FIELDS}
        return SampleRequest(labels=tuple(labels), noise="philox", first_index=first_index, **fields)

    def labels(self, num_classes: int) -> np.ndarray:
        """All N labels of a validated request (see set_labels)."""
        assert self.num_images is not None
        return set_labels(self.num_images, self.classes if self.classes is not None else range(num_classes))


def _is_count(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def set_labels(num_images: int, classes: Sequence[int]) -> np.ndarray:
    """Label of global image i: classes[i % len(classes)] (int64, N)."""
    c = np.asarray(classes, dtype=np.int64)
    return c[np.arange(num_images) % len(c)]


def chunk_size(requested: int | None, batch: int) -> int:
    """Images per file: a multiple of the engine batch, so image i always runs at batch row i mod B."""
    if requested is None:
        return batch * max(1, -(-DEFAULT_CHUNK_IMAGES // batch))
    if requested % batch:
        raise UserError(
            f"--chunk {requested} is not a multiple of the engine batch {batch} "
            f"(e.g. {batch * max(1, round(requested / batch))}): images must keep their batch row"
        )
    return requested


def chunk_plan(record: dict, shard: Shard) -> list[tuple[int, int, int]]:
    """(chunk c, first index, end index) of every chunk the shard owns, in order."""
    n, chunk = record["num_images"], record["chunk"]
    return [(c, c * chunk, min(n, (c + 1) * chunk)) for c in shard.chunks(-(-n // chunk))]


# ----------------------------------------------------------------------------------------- records


def set_record(req: SetRequest, sampler: Sampler, backend: str) -> dict:
    """The identity every shard of a set must share (recorded in each shard's request.json)."""
    folder = Path(sampler.folder)
    manifest_path = folder / "manifest.json"
    labels = req.labels(sampler.num_classes)
    # only a cached set records the cache: an uncached set's record is what it was before caching
    cache = (
        {"cache_interval": req.cache_interval, "cache_order": req.cache_order}
        if req.cache_interval > 1
        else {}
    )
    return {
        "model": sampler.model_name,
        "manifest_sha256": sha256_file(manifest_path),
        "image_size": sampler.image_size,
        "num_classes": sampler.num_classes,
        "precision": sampler.precision,
        "batch": sampler.batch,
        "backend": backend,
        "num_images": req.num_images,
        "classes": "all" if req.classes is None else list(req.classes),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        "seed": req.seed,
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "sampler": req.sampler,
        "noise": "philox",
        "chunk": chunk_size(req.chunk, sampler.batch),
        **cache,
    }


def set_key(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def first_difference(old: dict, new: dict) -> str:
    """The one difference worth naming: which engines first (model, then manifest, …), then the rest."""
    rank = {k: i for i, k in enumerate(ENGINE_FIELDS)}
    for k in sorted(set(old) | set(new), key=lambda k: (rank.get(k, len(rank)), k)):
        if old.get(k) != new.get(k):
            if k == "manifest_sha256" and old.get("model") == new.get("model"):
                a, b = (str(d.get(k))[:12] for d in (old, new))
                return f"the engines' manifest.json was sha256 {a}…, now {b}…"
            a, b = (json.dumps(d.get(k))[:60] for d in (old, new))
            return f"{k} was {a}, now {b}"
    return "nothing"


def shard_dirs(out: Path) -> list[Path]:
    root = out / "shards"
    return (
        sorted(p for p in root.iterdir() if p.is_dir() and (p / "request.json").is_file())
        if root.is_dir()
        else []
    )


def read_request(shard_dir: Path) -> dict:
    try:
        data = json.loads((shard_dir / "request.json").read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}")
        if not isinstance(data.get("set"), dict) or not all(
            isinstance(data["shard"].get(k), int) for k in ("index", "count")
        ):
            raise ValueError("no set or shard fields")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{shard_dir / 'request.json'} is not a sample-set shard record ({e})") from None
    return data


def check_same_set(out: Path, record: dict, shard: Shard) -> None:
    """Refuse to add a shard to a SETDIR whose other shards record another set or shard count."""
    for d in shard_dirs(out):
        other = read_request(d)
        label = f"shard {other['shard']['index']}/{other['shard']['count']}"
        if other["set"] != record:
            raise UserError(
                f"{out} holds {label} of another set ({first_difference(other['set'], record)}): "
                "use another --out, or the same settings and engines"
            )
        if other["shard"]["count"] != shard.count:
            raise UserError(
                f"{out} was started with {other['shard']['count']} shards ({label}); this process is "
                f"shard {shard} ({shard.source}): use the same shard count or another --out"
            )
