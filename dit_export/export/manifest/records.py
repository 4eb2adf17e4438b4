"""The manifest's typed records other than the schedule: tensors, files, graphs, model, VAE.

Each record is a frozen dataclass whose fields are the JSON keys of manifest.schema.json; the
plain ones convert with `to_dict`/`from_dict` of `Record` (field by field, cast by annotation);
`GraphSpec` (its file record inlined, `info` keeping the export-time analysis) says its own.
Records are made from a parsed manifest that passed the schema, so `from_dict` only types.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from dit_export.errors import UserError
from dit_export.fileio import sha256_file
from dit_export.sampling.cache import CACHE_GRAPHS, FORECAST_GRAPH, FULL_GRAPH

SCHEMA = "dit_export.manifest/2"
FILENAME = "manifest.json"
GRAPH_NAMES = ("dit", "dit_step", "vae_decoder", FULL_GRAPH, FORECAST_GRAPH)  # export order
REQUIRED_GRAPHS = ("dit", "dit_step", "vae_decoder")  # keys every manifest has (vae_decoder may be null)
OPTIONAL_GRAPHS = CACHE_GRAPHS  # keys present only when exported (the forecast cache, issue 21)
CACHE_SCHEDULE = "taylorseer-dit"  # the full-step rule of `sampling.cache.full_steps`

# annotation (as written, `from __future__ import annotations`) → (JSON → field, field → JSON)
_CASTS: dict[str, tuple[Any, Any]] = {
    "str": (str, str),
    "int": (int, int),
    "float": (float, float),
    "Mapping": (dict, dict),
    "tuple[int, ...]": (lambda v: tuple(int(x) for x in v), list),
}


@cache
def _casts(cls: type) -> tuple[tuple[str, Any, Any], ...]:
    return tuple((f.name, *_CASTS[str(f.type)]) for f in fields(cls))


class Record:
    """to/from dict for a dataclass whose fields are JSON keys of plain types (see `_CASTS`)."""

    def to_dict(self) -> dict:
        return {name: out(getattr(self, name)) for name, _, out in _casts(type(self))}

    @classmethod
    def from_dict(cls, d: Mapping):
        return cls(**{name: cast(d[name]) for name, cast, _ in _casts(cls)})


@dataclass(frozen=True)
class TensorSpec(Record):
    """One graph input or output: static shape, manifest dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize


@dataclass(frozen=True)
class FileRecord(Record):
    """A file of the folder: its path relative to the folder (`rules.inside_path`), sha256 and size."""

    file: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, folder: str | os.PathLike, name: str) -> FileRecord:
        """Hash a file that is already in `folder`."""
        p = Path(folder) / name
        return cls(name, sha256_file(p), p.stat().st_size)


@dataclass(frozen=True)
class GraphSpec:
    """One exported ONNX graph: its file, its external-data files, its static I/O.

    `info` keeps the export-time analysis (param_bytes, fp16_flop_share, fp32_islands,
    static_checks) as written; nothing in the runtime depends on it.
    """

    name: str
    file: FileRecord
    external_data: tuple[FileRecord, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str | None = None
    info: Mapping = field(default_factory=dict)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def names(self) -> tuple[str, ...]:
        return self.input_names + self.output_names

    @property
    def files(self) -> tuple[FileRecord, ...]:
        return (self.file, *self.external_data)

    def spec(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise UserError(f"graph {self.name} has no tensor {name!r} (it has {', '.join(self.names)})")

    def to_dict(self) -> dict:
        d = self.file.to_dict()
        d["external_data"] = [e.to_dict() for e in self.external_data]
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        if self.precision is not None:
            d["precision"] = self.precision
        d.update(self.info)
        return d

    @classmethod
    def from_dict(cls, name: str, d: Mapping) -> GraphSpec:
        known = {"file", "sha256", "bytes", "external_data", "inputs", "outputs", "precision"}
        return cls(
            name=name,
            file=FileRecord.from_dict(d),
            external_data=tuple(FileRecord.from_dict(e) for e in d["external_data"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            precision=d.get("precision"),
            info={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True)
class ModelInfo(Record):
    """Which DiT: its name, config (DiTConfig.to_dict()), flavor and the weights source as data.

    `spec` is the ModelSpec as data (models.spec.ModelSpec.to_dict(): model, ckpt,
    random_weights, weights_seed, vae, image_size, num_classes, flavor), enough to reload the
    same weights; `source` is the same thing for people (a path, a hub id, "random weights ...").
    """

    name: str
    config: Mapping
    flavor: str
    cfg_channels: int
    null_class: int
    source: str
    spec: Mapping

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def learn_sigma(self) -> bool:
        return bool(self.config["learn_sigma"])


@dataclass(frozen=True)
class VaeInfo(Record):
    source: str
    scaling_factor: float
    factor: int


@dataclass(frozen=True)
class CacheInfo(Record):
    """The forecast step cache of `dit_step_full` / `dit_step_forecast` (`sampling.cache`): the
    largest Taylor order the graphs hold, their cache slots (max_order + 1), the cache tensor's
    shape (depth, 2, slots, 2N, tokens, hidden) and dtype, the bytes of one cache tensor for one
    image (the runtime holds two), and the schedule the full-step mask follows."""

    max_order: int
    slots: int
    shape: tuple[int, ...]
    dtype: str
    bytes_per_image: int
    schedule: str
    first_full: int

    def bytes_for(self, batch: int) -> int:
        """Bytes of one cache tensor for `batch` images (shape[3] = 2·batch rows)."""
        return self.bytes_per_image * int(batch)
