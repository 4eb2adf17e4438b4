"""Compiled artifacts are files with their own small JSON records (the export's manifest is never rewritten).

Every artifact that engine/ compiles from an export (a TensorRT plan, an AOTInductor package)
lands in a subfolder of the export (`plans/`, `aoti/`) with a record beside it whose name is the
artifact's name + ".json": `plans/dit_step.trt10.13.sm90.plan` + `plans/dit_step.trt10.13.sm90.plan.json`.
A record says what the artifact was made from (the ONNX graph's file and sha256), with what
(TensorRT or torch version, GPU or CPU ISA, build options) and what it is (its own sha256 and
size). Paths inside a record are relative to the export folder, so a folder copied elsewhere
still finds and checks its artifacts.

This module also reads the export's typed `Manifest` for engine/ in one place, so the rest of
engine/ sees only `GraphSource`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dit_export.errors import UserError
from dit_export.export.manifest import Manifest
from dit_export.fileio import read_json_object, sha256_file, write_json

RECORD_SUFFIX = ".json"


@dataclass(frozen=True)
class GraphSource:
    """What a compiled artifact is made from: one ONNX graph of the export."""

    name: str
    file: str  # relative to the export folder
    sha256: str
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    input_specs: tuple[dict, ...]  # [{"name", "shape", "dtype"}] as the manifest lists them
    output_specs: tuple[dict, ...]
    bytes: int = 0  # the graph file and its external data

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in {**self.inputs, **self.outputs}.items()}


def read_export(folder: Path) -> Manifest:
    """The export's manifest (validated by its reader; one-line UserError when absent or bad)."""
    return Manifest.read(Path(folder))


def verify_export(folder: Path, manifest: Manifest) -> None:
    """Every graph file of the export still matches its sha256 (one-line UserError otherwise)."""
    manifest.verify_hashes()


def precision(manifest: Manifest) -> str:
    return str(manifest.precision)


def graph_source(manifest: Manifest, graph: str) -> GraphSource | None:
    """The export's `graph` (None when the export has none, e.g. no VAE)."""
    g = manifest.graphs.get(graph)
    if g is None:
        return None
    ins, outs = tuple(t.to_dict() for t in g.inputs), tuple(t.to_dict() for t in g.outputs)
    return GraphSource(
        name=graph,
        file=g.file.file,
        sha256=g.file.sha256,
        inputs={t.name: tuple(t.shape) for t in g.inputs},
        outputs={t.name: tuple(t.shape) for t in g.outputs},
        input_specs=ins,
        output_specs=outs,
        bytes=sum(int(f.bytes) for f in g.files),
    )


def graph_names(manifest: Manifest) -> list[str]:
    return [name for name, g in manifest.graphs.items() if g is not None]


# ------------------------------------------------------------------------------ records


def record_path(artifact: Path) -> Path:
    """`plans/x.plan` → `plans/x.plan.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + RECORD_SUFFIX)


def relative(folder: Path, path: Path) -> str:
    return Path(path).relative_to(folder).as_posix()


def file_fields(folder: Path, artifact: Path) -> dict:
    """{"file", "sha256", "bytes"} of an artifact, its path relative to the export folder."""
    return {
        "file": relative(folder, artifact),
        "sha256": sha256_file(artifact),
        "bytes": artifact.stat().st_size,
    }


def write_record(artifact: Path, record: dict) -> Path:
    """Write the artifact's record atomically (the artifact itself is already in place)."""
    path = record_path(artifact)
    write_json(path, record)
    return path


def read_record(artifact: Path) -> dict | None:
    """The artifact's record; None when there is none; one-line UserError when it is not JSON."""
    path = record_path(artifact)
    if not path.is_file():
        return None
    return read_json_object(path, "an artifact record")


def records_in(folder: Path, subfolder: str, suffix: str) -> dict[Path, dict]:
    """{artifact path: record} for every `<subfolder>/*<suffix>.json` of an export (unreadable ones skipped)."""
    base = Path(folder) / subfolder
    out: dict[Path, dict] = {}
    if not base.is_dir():
        return out
    for rec_file in sorted(base.glob(f"*{suffix}{RECORD_SUFFIX}")):
        artifact = rec_file.with_name(rec_file.name[: -len(RECORD_SUFFIX)])
        try:
            rec = read_record(artifact)
        except UserError:
            continue
        if rec is not None:
            out[artifact] = rec
    return out


def file_problem(folder: Path, artifact: Path, rec: dict, check_hash: bool = True) -> str | None:
    """Why the artifact does not match its record (missing, truncated, other bytes); None when it does."""
    name = relative(folder, artifact)
    if not artifact.is_file():
        return f"{name} has a record but the file is missing"
    size = artifact.stat().st_size
    if size != rec.get("bytes"):
        return f"{name} has {size} bytes, its record says {rec.get('bytes')} (truncated or replaced)"
    if check_hash and sha256_file(artifact) != rec.get("sha256"):
        return f"{name} does not match its sha256 in {record_path(artifact).name} (corrupt or replaced)"
    return None


def drop_stale(folder: Path, manifest: Manifest, subfolder: str, suffix: str) -> tuple[int, int]:
    """Delete the artifacts (and records) of `subfolder` whose ONNX graph changed; (kept, dropped)."""
    kept = dropped = 0
    for artifact, rec in records_in(folder, subfolder, suffix).items():
        source = graph_source(manifest, str(rec.get("graph")))
        if source is not None and rec.get("onnx_sha256") == source.sha256:
            kept += 1
            continue
        artifact.unlink(missing_ok=True)
        record_path(artifact).unlink(missing_ok=True)
        dropped += 1
    return kept, dropped
