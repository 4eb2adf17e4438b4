"""The `Manifest` record: typed from a parsed manifest.json (schema, then the contract rules),
back to JSON, and what the runtimes ask of it. Reading and writing the file, and checking the
folder's files against it, are in `disk.py` (`Manifest.read`/`write`/`verify_hashes` call it)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.export.manifest import disk, rules
from dit_export.export.manifest.records import (
    FILENAME,
    GRAPH_NAMES,
    OPTIONAL_GRAPHS,
    SCHEMA,
    CacheInfo,
    FileRecord,
    GraphSpec,
    ModelInfo,
    VaeInfo,
)
from dit_export.export.manifest.schedules import ScheduleTables, _check_table_sizes, _schedule_problems
from dit_export.export.manifest.validation import validate_schema


@dataclass(frozen=True)
class Manifest:
    """An exported folder's manifest. `Manifest.read(folder)` is the one way in; `write` is once."""

    versions: Mapping[str, str]
    model: ModelInfo
    image_size: int
    latent_size: int
    latent_channels: int
    batch: int
    precision: str
    opset: int
    vae: VaeInfo | None
    graphs: Mapping[str, GraphSpec | None]
    schedule: ScheduleTables
    noise_default: str = "philox"
    noise_doc: str = "docs/noise.md"
    precision_policy: Mapping | None = None
    checks: Mapping = field(default_factory=dict)
    cache: CacheInfo | None = None  # the forecast step cache (with dit_step_full / dit_step_forecast)
    schema: str = SCHEMA
    folder: Path | None = field(default=None, compare=False)

    # --- JSON ------------------------------------------------------------------------------
    @classmethod
    def read(cls, folder: str | os.PathLike, *, check_graphs: bool = True) -> Manifest:
        """The validated manifest of an exported folder; a one-line UserError naming the bad field.

        `check_graphs` also checks the files are there and compares the manifest's I/O with the
        ONNX files (when onnx imports). The file is read and parsed once.
        """
        folder = Path(folder)
        m = cls.from_dict(disk.read_json(folder), folder)
        if check_graphs:
            disk.check_graph_files(m)
        return m

    @classmethod
    def from_dict(cls, raw: object, folder: str | os.PathLike | None = None) -> Manifest:
        """Validate a parsed manifest (schema version, JSON schema, contract rules) and type it."""
        where = str(Path(folder) / FILENAME) if folder is not None else FILENAME
        rules.check_schema_version(raw, where)
        validate_schema(raw, where)
        assert isinstance(raw, dict)
        _check_table_sizes(raw["schedule"], where)
        graphs = {
            n: None if raw["graphs"].get(n) is None else GraphSpec.from_dict(n, raw["graphs"][n])
            for n in GRAPH_NAMES
        }
        m = cls(
            schema=raw["schema"],
            versions=dict(raw["versions"]),
            model=ModelInfo.from_dict(raw["model"]),
            image_size=int(raw["image_size"]),
            latent_size=int(raw["latent_size"]),
            latent_channels=int(raw["latent_channels"]),
            batch=int(raw["batch"]),
            precision=raw["precision"],
            opset=int(raw["opset"]),
            vae=None if raw["vae"] is None else VaeInfo.from_dict(raw["vae"]),
            graphs=graphs,
            schedule=ScheduleTables.from_dict(raw["schedule"]),
            noise_default=raw["noise"]["default"],
            noise_doc=raw["noise"].get("doc", ""),
            precision_policy=raw.get("precision_policy"),
            checks=raw["checks"],
            cache=CacheInfo.from_dict(raw["cache"]) if raw.get("cache") is not None else None,
            folder=None if folder is None else Path(folder),
        )
        m.check_consistency(where)
        return m

    def to_dict(self) -> dict:
        d = {
            "schema": self.schema,
            "versions": dict(self.versions),
            "model": self.model.to_dict(),
            "image_size": self.image_size,
            "latent_size": self.latent_size,
            "latent_channels": self.latent_channels,
            "vae": None if self.vae is None else self.vae.to_dict(),
            "batch": self.batch,
            "precision": self.precision,
            "precision_policy": self.precision_policy,
            "opset": self.opset,
            "graphs": {
                n: None if g is None else g.to_dict()
                for n, g in self.graphs.items()
                if g is not None or n not in OPTIONAL_GRAPHS  # optional graphs: absent, never null
            },
            "schedule": self.schedule.to_dict(),
            "noise": {"default": self.noise_default, "doc": self.noise_doc},
            "checks": self.checks,
        }
        if self.cache is not None:
            d["cache"] = self.cache.to_dict()
        return d

    def write(self, folder: str | os.PathLike) -> Path:
        """Write manifest.json into a folder being built (export's staging folder); never over one."""
        return disk.write(self, Path(folder))

    # --- access -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def has_vae(self) -> bool:
        return self.graphs.get("vae_decoder") is not None

    @property
    def has_cache(self) -> bool:
        """The folder holds the forecast-cache step graphs (`cache` record and both graphs)."""
        return self.cache is not None

    def graph(self, name: str) -> GraphSpec:
        if name not in GRAPH_NAMES:
            raise UserError(f"no graph {name!r}; an export has {', '.join(GRAPH_NAMES)}")
        g = self.graphs.get(name)
        if g is None:
            if name in OPTIONAL_GRAPHS:
                raise UserError(rules.no_cache_message(self.folder))
            raise UserError(f"{self.folder or 'this export'} has no {name} graph (exported with --vae none)")
        return g

    def table(self, sampler: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps int64 (S,), coefs float32 (S, K)) stored for a sampler and step count."""
        t = self.schedule.table(sampler, steps)
        return t.timesteps, t.coefs

    def path(self, rec: FileRecord | str) -> Path:
        """The file of a record, inside the manifest's folder (the path rule checked, never outside)."""
        if self.folder is None:
            raise UserError("this manifest was not read from a folder")
        name = rec.file if isinstance(rec, FileRecord) else rec
        return self.folder / rules.check_path(name, "file")

    def files(self) -> list[FileRecord]:
        """Every file record of every graph, each file once (graphs may share external data)."""
        seen: dict[str, FileRecord] = {}
        for g in self.graphs.values():
            for rec in g.files if g is not None else ():
                seen.setdefault(rec.file, rec)
        return list(seen.values())

    # --- the folder's files (disk.py) ---------------------------------------------------------
    def verify_hashes(self) -> None:
        """Recompute size and sha256 of every file (once each); one-line error on a mismatch."""
        disk.verify_hashes(self)

    def check_files_exist(self) -> None:
        disk.check_files_exist(self)

    def check_graph_files(self) -> None:
        """Files present, and (where onnx is importable) the ONNX files' I/O equal the manifest's."""
        disk.check_graph_files(self)

    # --- contract rules (rules.py, schedules.py) ------------------------------------------------
    def check_consistency(self, where: str = FILENAME) -> None:
        """What the schema cannot say: shapes that agree with each other, tables in range."""
        for problem in rules.consistency_problems(self):
            raise UserError(f"{where}: {problem}")
        for problem in _schedule_problems(self.schedule, self.graphs["dit_step"]):
            raise UserError(f"{where}: {problem}")
