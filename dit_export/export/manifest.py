"""`manifest.json`: the typed record of an exported folder, and everything a runtime needs from it.

Torch-free on purpose (json, numpy, pathlib, fileio and our one-line error type): the numpy
runtime and the C++ example read the same file. The shape of the file is one committed JSON
schema (`manifest.schema.json`, also used by the C++ tests); `Manifest.read` checks it (with
a small checker of that schema, one-line errors naming the field),
then the rules a schema cannot say: every file name stays inside the folder, the graphs' I/O
agree with batch / latent size / classes (against the ONNX files themselves when `onnx` is
importable), timesteps lie in 0..num_train_steps-1 and coefficient rows are finite.

The manifest is written once, by `export`, and never rewritten: compiled artifacts (TensorRT
plans, AOTI packages) are separate files with their own records (engine/).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from dit_export.errors import UserError
from dit_export.fileio import sha256_file
from dit_export.lazy import optional_import

SCHEMA = "dit_export.manifest/2"
FILENAME = "manifest.json"
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
GRAPH_NAMES = ("dit", "dit_step", "vae_decoder")
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
# onnx.TensorProto element types → names (the manifest's dtype vocabulary; analysis uses it too).
DTYPE_NAMES = {
    0: "undefined",
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}

# ddpm/ddim step counts whose tables are stored (others: the rule text, or schedule.make_schedule).
STORED_SCHEDULES = {
    "ddpm": (250, 100, 50, 25),
    "ddim": (50, 25, 10),
    "dpm++2m": (25, 20, 10),
    "unipc": (25, 20, 10),
}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TensorSpec:
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

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> TensorSpec:
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class FileRecord:
    """A file of the folder: its plain name (relative to the folder), sha256 and size."""

    file: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, folder: str | os.PathLike, name: str) -> FileRecord:
        """Hash a file that is already in `folder`."""
        p = Path(folder) / name
        return cls(name, sha256_file(p), p.stat().st_size)

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, d: Mapping) -> FileRecord:
        return cls(str(d["file"]), str(d["sha256"]), int(d["bytes"]))


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
class ModelInfo:
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

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "config": dict(self.config),
            "flavor": self.flavor,
            "cfg_channels": self.cfg_channels,
            "null_class": self.null_class,
            "source": self.source,
            "spec": dict(self.spec),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelInfo:
        return cls(
            str(d["name"]),
            dict(d["config"]),
            str(d["flavor"]),
            int(d["cfg_channels"]),
            int(d["null_class"]),
            str(d["source"]),
            dict(d["spec"]),
        )


@dataclass(frozen=True)
class VaeInfo:
    source: str
    scaling_factor: float
    factor: int

    def to_dict(self) -> dict:
        return {"source": self.source, "scaling_factor": self.scaling_factor, "factor": self.factor}

    @classmethod
    def from_dict(cls, d: Mapping) -> VaeInfo:
        return cls(str(d["source"]), float(d["scaling_factor"]), int(d["factor"]))


@dataclass(frozen=True, eq=False)
class ScheduleTable:
    """The rows a sampler loop feeds: timesteps int64 (S,), coefs float32 (S, K), in loop order."""

    sampler: str
    steps: int
    spec: str
    timesteps: np.ndarray
    coefs: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScheduleTable):
            return NotImplemented
        return (self.sampler, self.steps, self.spec) == (other.sampler, other.steps, other.spec) and (
            np.array_equal(self.timesteps, other.timesteps) and np.array_equal(self.coefs, other.coefs)
        )

    __hash__ = None  # type: ignore[assignment]

    def timesteps_coefs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.timesteps, self.coefs

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "timesteps": [int(t) for t in self.timesteps],
            "coefs": [[float(v) for v in row] for row in self.coefs],
        }


@dataclass(frozen=True)
class ScheduleTables:
    coef_names: tuple[str, ...]
    num_train_steps: int
    rule: str
    tables: Mapping[str, Mapping[int, ScheduleTable]]
    # {sampler: {kind, spacing, min_steps, state: [{input, output}]}} (schedule.sampler_info());
    # empty for a folder exported before the multistep solvers
    samplers: Mapping[str, Mapping] = field(default_factory=dict)

    def state(self, sampler: str) -> tuple[tuple[str, str], ...]:
        """(input, output) names of the dit_step state tensors `sampler` ping-pongs."""
        info = self.samplers.get(sampler, {})
        return tuple((p["input"], p["output"]) for p in info.get("state", ()))

    def table(self, sampler: str, steps: int) -> ScheduleTable:
        t = self.tables.get(sampler, {}).get(int(steps))
        if t is None:
            have = "; ".join(f"{s} {','.join(str(k) for k in sorted(v))}" for s, v in self.tables.items())
            raise UserError(
                f"no stored {sampler} table for {steps} steps (stored: {have}); "
                "compute it with dit_export.sampling.schedule.make_schedule"
            )
        return t

    def stored(self) -> dict[str, tuple[int, ...]]:
        return {s: tuple(sorted(v)) for s, v in self.tables.items()}

    def to_dict(self) -> dict:
        return {
            "coef_names": list(self.coef_names),
            "num_train_steps": self.num_train_steps,
            "rule": self.rule,
            "tables": {s: {str(k): t.to_dict() for k, t in v.items()} for s, v in self.tables.items()},
            **({"samplers": {s: dict(v) for s, v in self.samplers.items()}} if self.samplers else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ScheduleTables:
        tables = {
            sampler: {
                int(steps): ScheduleTable(
                    sampler,
                    int(steps),
                    str(t.get("spec", "")),
                    np.asarray(t["timesteps"], dtype=np.int64),
                    np.asarray(t["coefs"], dtype=np.float32).reshape(len(t["coefs"]), len(d["coef_names"])),
                )
                for steps, t in by_steps.items()
            }
            for sampler, by_steps in d["tables"].items()
        }
        samplers = {str(s): dict(v) for s, v in d.get("samplers", {}).items()}
        return cls(tuple(d["coef_names"]), int(d["num_train_steps"]), str(d["rule"]), tables, samplers)


# --------------------------------------------------------------------------- the manifest


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
    schema: str = SCHEMA
    folder: Path | None = field(default=None, compare=False)

    # --- reading ---------------------------------------------------------------------------
    @classmethod
    def read(cls, folder: str | os.PathLike, *, check_graphs: bool = True) -> Manifest:
        """The validated manifest of an exported folder; a one-line UserError naming the bad field.

        `check_graphs` also compares the manifest's I/O with the ONNX files (when onnx imports).
        """
        folder = Path(folder)
        path = folder / FILENAME
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder (expected an exported folder with {FILENAME})")
        if not path.is_file():
            raise UserError(
                f"{folder} has no {FILENAME}: not an exported folder (run `python -m dit_export export`)"
            )
        try:
            raw = json.loads(path.read_text(), parse_constant=_reject_constant)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"cannot read {path}: {_first_line(e)}") from None
        m = cls.from_dict(raw, folder)
        if check_graphs:
            m.check_graph_files()
        return m

    @classmethod
    def from_dict(cls, raw: object, folder: str | os.PathLike | None = None) -> Manifest:
        """Validate a parsed manifest (schema, paths, semantics) and type it."""
        where = str(Path(folder) / FILENAME) if folder is not None else FILENAME
        _check_schema_version(raw, where)
        validate_schema(raw, where)
        assert isinstance(raw, dict)
        _check_table_sizes(raw["schedule"], where)
        graphs = {
            n: None if raw["graphs"][n] is None else GraphSpec.from_dict(n, raw["graphs"][n])
            for n in GRAPH_NAMES
        }
        m = cls(
            schema=raw["schema"],
            versions=dict(raw["versions"]),
            model=ModelInfo.from_dict(raw["model"]),
            image_size=raw["image_size"],
            latent_size=raw["latent_size"],
            latent_channels=raw["latent_channels"],
            batch=raw["batch"],
            precision=raw["precision"],
            opset=raw["opset"],
            vae=None if raw["vae"] is None else VaeInfo.from_dict(raw["vae"]),
            graphs=graphs,
            schedule=ScheduleTables.from_dict(raw["schedule"]),
            noise_default=raw["noise"]["default"],
            noise_doc=raw["noise"].get("doc", ""),
            precision_policy=raw.get("precision_policy"),
            checks=raw["checks"],
            folder=None if folder is None else Path(folder),
        )
        m.check_consistency(where)
        return m

    def to_dict(self) -> dict:
        return {
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
            "graphs": {n: None if g is None else g.to_dict() for n, g in self.graphs.items()},
            "schedule": self.schedule.to_dict(),
            "noise": {"default": self.noise_default, "doc": self.noise_doc},
            "checks": self.checks,
        }

    # --- writing (once) ---------------------------------------------------------------------
    def write(self, folder: str | os.PathLike) -> Path:
        """Write manifest.json into a folder being built (export's staging folder); never over one.

        Validates the result first (the same checks as `read`) and hashes nothing: the records
        were made from the files. The write goes to a temporary name and is renamed into place.
        """
        folder = Path(folder)
        path = folder / FILENAME
        if path.exists():
            raise UserError(f"{path} exists: an export's manifest is written once and never rewritten")
        raw = self.to_dict()
        Manifest.from_dict(json.loads(json.dumps(raw, allow_nan=False)), folder).check_files_exist()
        tmp = folder / f".{FILENAME}.tmp"
        try:
            tmp.write_text(json.dumps(raw, indent=1, allow_nan=False) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise _os_error(e, f"cannot write {path}") from None
        return path

    # --- access -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def has_vae(self) -> bool:
        return self.graphs.get("vae_decoder") is not None

    def graph(self, name: str) -> GraphSpec:
        if name not in GRAPH_NAMES:
            raise UserError(f"no graph {name!r}; an export has {', '.join(GRAPH_NAMES)}")
        g = self.graphs.get(name)
        if g is None:
            raise UserError(f"{self.folder or 'this export'} has no {name} graph (exported with --vae none)")
        return g

    def table(self, sampler: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps int64 (S,), coefs float32 (S, K)) stored for a sampler and step count."""
        t = self.schedule.table(sampler, steps)
        return t.timesteps, t.coefs

    def path(self, rec: FileRecord | str) -> Path:
        """The file of a record, inside the manifest's folder (checked, never outside)."""
        if self.folder is None:
            raise UserError("this manifest was not read from a folder")
        name = rec.file if isinstance(rec, FileRecord) else rec
        return self.folder / _inside_name(name, "file")

    def files(self) -> list[FileRecord]:
        """Every file record of every graph, each file once (graphs may share external data)."""
        seen: dict[str, FileRecord] = {}
        for g in self.graphs.values():
            for rec in g.files if g is not None else ():
                seen.setdefault(rec.file, rec)
        return list(seen.values())

    def verify_hashes(self) -> None:
        """Recompute size and sha256 of every file (once each); one-line error on a mismatch."""
        for rec in self.files():
            p = self.path(rec)
            if not p.is_file():
                raise UserError(f"{self.folder}: graph file {rec.file} is missing")
            size = p.stat().st_size
            if size != rec.bytes:
                raise UserError(
                    f"{self.folder}: {rec.file} has {size} bytes, the manifest says {rec.bytes} (stale or truncated)"
                )
            if sha256_file(p) != rec.sha256:
                raise UserError(
                    f"{self.folder}: sha256 of {rec.file} does not match the manifest (file changed)"
                )

    # --- semantic checks --------------------------------------------------------------------
    def check_consistency(self, where: str = FILENAME) -> None:
        """What the schema cannot say: names inside the folder, shapes that agree, tables in range."""
        for name, g in self.graphs.items():
            for rec in g.files if g is not None else ():
                _inside_name(rec.file, f"graphs.{name}.file", where)
        if (self.vae is None) != (self.graphs["vae_decoder"] is None):
            raise UserError(f"{where}: field 'vae' and 'graphs.vae_decoder' must both be set or both null")
        for problem in _io_problems(self):
            raise UserError(f"{where}: {problem}")
        for problem in _schedule_problems(self.schedule, self.graphs["dit_step"]):
            raise UserError(f"{where}: {problem}")

    def check_files_exist(self) -> None:
        for rec in self.files():
            if not self.path(rec).is_file():
                raise UserError(f"{self.folder / FILENAME}: file {rec.file} is missing from {self.folder}")

    def check_graph_files(self) -> None:
        """Files present, and (where onnx is importable) the ONNX files' I/O equal the manifest's."""
        self.check_files_exist()
        try:
            onnx = optional_import("onnx")
        except UserError:
            return  # the numpy/ORT runtime has no onnx; the manifest's own consistency was checked
        for name, g in self.graphs.items():
            if g is None:
                continue
            try:
                proto = onnx.load(str(self.path(g.file)), load_external_data=False)
            except Exception as e:  # a corrupt or non-ONNX file: one line, whatever protobuf says
                raise UserError(
                    f"{self.folder}: {g.file.file} is not a readable ONNX file ({_first_line(e)})"
                ) from None
            have = [_vi_spec(v) for v in list(proto.graph.input) + list(proto.graph.output)]
            want = [t.to_dict() for t in g.inputs + g.outputs]
            if have != want:
                diff = next(((w, h) for w, h in zip(want, have) if w != h), (want, have))
                raise UserError(
                    f"{self.folder / FILENAME}: graphs.{name} I/O disagrees with {g.file.file}: "
                    f"manifest says {diff[0]}, the graph has {diff[1]}"
                )


# --------------------------------------------------------------------------- helpers


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON number {name}")


def _os_error(e: OSError, what: str) -> UserError:
    if e.errno == errno.ENOSPC:
        return UserError(f"{what}: no space left on the device")
    return UserError(f"{what}: {e.strerror or e}")


def _inside_name(name: str, label: str, where: str = FILENAME) -> str:
    """A plain file name of the folder; '../x', absolute paths, drives and sub-paths are refused."""
    bad = (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).drive != ""
    )
    if bad:
        raise UserError(f"{where}: field {label!r} must be a plain file name inside the folder, got {name!r}")
    return name


def _check_schema_version(raw: object, where: str) -> None:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: not a JSON object")
    schema = raw.get("schema")
    if not isinstance(schema, str):
        raise UserError(f"{where}: missing field 'schema' (not a dit_export manifest)")
    family, _, version = schema.partition("/")
    if family != SCHEMA.split("/")[0]:
        raise UserError(f"{where}: field 'schema' is {schema!r}, not a dit_export manifest")
    ours = int(SCHEMA.rpartition("/")[2])
    if version.isdigit() and int(version) < ours:
        raise UserError(
            f"{where}: {schema} was exported by an older dit_export (this one reads {SCHEMA}); re-export"
        )
    if schema != SCHEMA:
        raise UserError(
            f"{where}: schema {schema!r} is not supported (this dit_export reads {SCHEMA}); re-export"
        )


def _vi_spec(vi) -> dict:
    t = vi.type.tensor_type
    dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return {"name": vi.name, "shape": dims, "dtype": DTYPE_NAMES.get(int(t.elem_type), str(t.elem_type))}


def _io_problems(m: Manifest) -> Iterator[str]:
    """The graphs' declared I/O against batch, latent size/channels, classes and the VAE factor."""
    cfg = m.model.config
    n, c, size = m.batch, m.latent_channels, m.latent_size
    out_c = 2 * c if m.model.learn_sigma else c
    if cfg["input_size"] != size or cfg["in_channels"] != c:
        yield f"field 'latent_size'/'latent_channels' ({c}×{size}²) disagree with model.config ({cfg['in_channels']}×{cfg['input_size']}²)"
    if m.model.null_class != m.num_classes:
        yield f"field 'model.null_class' is {m.model.null_class}, the model has {m.num_classes} classes (null = num_classes)"
    if m.model.cfg_channels not in (3, c):
        yield f"field 'model.cfg_channels' is {m.model.cfg_channels}; expected 3 or the latent channels {c}"
    factor = m.vae.factor if m.vae is not None else 8
    if m.image_size != size * factor:
        yield f"field 'image_size' {m.image_size} is not latent_size {size} × VAE factor {factor}"
    lat = (n, c, size, size)
    want = {
        "dit": [(2 * n, c, size, size), (2 * n,), (2 * n,), (2 * n, out_c, size, size)],
        "dit_step": [lat, (n,), (n,), lat, (1,), None, lat],  # before the multistep solvers' state
        "dit_step+state": [lat, (n,), (n,), lat, (1,), None, lat, lat, lat, lat, lat, lat, lat],
        "vae_decoder": [(n, c, size, size), (n, 3, m.image_size, m.image_size)],
    }
    for name, g in m.graphs.items():
        if g is None:
            continue
        tensors = g.inputs + g.outputs
        key = "dit_step+state" if name == "dit_step" and len(g.inputs) > 6 else name
        if len(tensors) != len(want[key]):
            yield f"graphs.{name} has {len(tensors)} inputs+outputs, expected {len(want[key])}"
            continue
        for t, shape in zip(tensors, want[key]):
            if shape is not None and t.shape != shape:
                yield (
                    f"graphs.{name} tensor {t.name!r} has shape {list(t.shape)}, but batch {n}, latent "
                    f"{c}×{size}² and image {m.image_size} need {list(shape)}"
                )


def _check_table_sizes(schedule: Mapping, where: str) -> None:
    """Each stored table has `steps` timesteps and rows of len(coef_names) (before numpy sees them)."""
    k = len(schedule["coef_names"])
    for sampler, by_steps in schedule["tables"].items():
        for steps, t in by_steps.items():
            label = f"schedule.tables.{sampler}.{steps}"
            ts, coefs = t["timesteps"], t["coefs"]
            if len(ts) != int(steps) or len(coefs) != int(steps) or any(len(row) != k for row in coefs):
                raise UserError(
                    f"{where}: field {label!r} should hold {steps} timesteps and coef rows of {k} values"
                )


def _schedule_problems(s: ScheduleTables, step: GraphSpec | None) -> Iterator[str]:
    k = len(s.coef_names)
    coef = step.spec("coef") if step is not None and "coef" in step.input_names else None
    if step is not None and (coef is None or coef.shape != (k,)):
        have = "no input 'coef'" if coef is None else f"input 'coef' of shape {list(coef.shape)}"
        yield f"graphs.dit_step has {have}, schedule has {k} coef_names"
    for sampler, info in s.samplers.items():
        for pair in info.get("state", ()):
            if step is not None and (
                pair["input"] not in step.input_names or pair["output"] not in step.output_names
            ):
                yield f"field 'schedule.samplers.{sampler}.state' names {pair['input']}/{pair['output']}, not I/O of graphs.dit_step"
    for sampler, by_steps in s.tables.items():
        for steps, t in by_steps.items():
            label = f"schedule.tables.{sampler}.{steps}"
            if len(t.timesteps) != steps or t.coefs.shape != (steps, k):
                yield f"field {label!r} should hold {steps} timesteps and coef rows of {k} values"
            elif t.timesteps.size and (t.timesteps.min() < 0 or t.timesteps.max() >= s.num_train_steps):
                yield f"field '{label}.timesteps' leaves 0..{s.num_train_steps - 1}"
            elif not np.isfinite(t.coefs).all():
                yield f"field '{label}.coefs' holds a non-finite value"


# --------------------------------------------------------------------------- the JSON schema


@cache
def schema() -> dict:
    """The committed JSON schema (manifest.schema.json)."""
    return json.loads(SCHEMA_FILE.read_text())


def validate_schema(raw: object, where: str = FILENAME) -> None:
    """Check `raw` against manifest.schema.json with the small checker below (always the same one, so
    the answer never depends on what is installed; tests cross-check it with `jsonschema`). Integers
    are JSON integers without a fraction part, as the C++ reader requires (2.0 is refused)."""
    problem = _Checker(schema()).first_error(raw)
    if problem is not None:
        raise UserError(f"{where}: {problem}")


def _label(path: list) -> str:
    """['graphs', 'dit', 'inputs', 0, 'name'] → 'graphs.dit.inputs[0].name'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<manifest>"


_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


class _Checker:
    """The subset of JSON Schema manifest.schema.json uses: type, enum, required, properties,
    additionalProperties, propertyNames, items, minItems, minLength, minimum, exclusiveMinimum,
    pattern, anyOf and local $ref. First error only, as one line naming the field."""

    def __init__(self, root: dict) -> None:
        self.root = root

    def first_error(self, value: object) -> str | None:
        return self._check(value, self.root, [])

    def _resolve(self, s: dict) -> dict:
        while "$ref" in s:
            ref = s["$ref"]
            target = self.root
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            s = {**target, **{k: v for k, v in s.items() if k != "$ref"}}
        return s

    def _check(self, v: object, s: dict, path: list) -> str | None:  # noqa: C901  (one branch per keyword)
        s = self._resolve(s)
        label = _label(path)
        hint = f" ({s['description']})" if "description" in s else ""
        if "anyOf" in s:
            errors = [self._check(v, sub, path) for sub in s["anyOf"]]
            if all(errors):
                return next((e for e in errors if "should be null" not in e), errors[0])
        if "type" in s:
            kinds = s["type"] if isinstance(s["type"], list) else [s["type"]]
            if not any(_is_type(v, k) for k in kinds):
                return f"field {label!r} should be {'/'.join(kinds)}, got {_type_name(v)}{hint}"
        if "enum" in s and v not in s["enum"]:
            return f"field {label!r} is {v!r}, not one of {', '.join(map(str, s['enum']))}{hint}"
        if isinstance(v, str):
            if len(v) < s.get("minLength", 0):
                return f"field {label!r} is empty{hint}"
            if "pattern" in s and not re.search(s["pattern"], v):
                return f"field {label!r} is {v!r}{hint or ' (bad format)'}"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if "minimum" in s and v < s["minimum"]:
                return f"field {label!r} is {v}, below the minimum {s['minimum']}{hint}"
            if "exclusiveMinimum" in s and v <= s["exclusiveMinimum"]:
                return f"field {label!r} is {v}, should be above {s['exclusiveMinimum']}{hint}"
            if isinstance(v, float) and not math.isfinite(v):
                return f"field {label!r} is not finite"
        if isinstance(v, list):
            if len(v) < s.get("minItems", 0):
                return f"field {label!r} should have at least {s['minItems']} item(s){hint}"
            if "items" in s:
                for i, item in enumerate(v):
                    if err := self._check(item, s["items"], [*path, i]):
                        return err
        if isinstance(v, dict):
            return self._check_object(v, s, path)
        return None

    def _check_object(self, v: dict, s: dict, path: list) -> str | None:
        for key in s.get("required", ()):
            if key not in v:
                return f"missing field {_label([*path, key])!r}"
        props = s.get("properties", {})
        extra = s.get("additionalProperties", True)
        names = s.get("propertyNames")
        for key, item in v.items():
            if names is not None and (err := self._check(key, names, [*path, key])):
                return f"field {_label([*path, key])!r}: bad key {key!r}"
            if key in props:
                sub = props[key]
            elif extra is False:
                return f"field {_label([*path, key])!r} is not allowed here"
            elif isinstance(extra, dict):
                sub = extra
            else:
                continue
            if err := self._check(item, sub, [*path, key]):
                return err
        return None


def _is_type(v: object, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(v, bool):
        return False
    return isinstance(v, _JSON_TYPES[kind])


def _type_name(v: object) -> str:
    return {dict: "object", list: "array", str: "str", bool: "bool", int: "int", float: "float"}.get(
        type(v), "null" if v is None else type(v).__name__
    )
