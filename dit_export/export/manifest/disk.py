"""manifest.json on disk: read and parsed once, written once (temp file then rename), and the
folder's files checked against it (present, size, sha256, ONNX I/O)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dit_export.errors import UserError
from dit_export.export.manifest import rules
from dit_export.export.manifest.records import FILENAME
from dit_export.fileio import sha256_file
from dit_export.lazy import optional_import

if TYPE_CHECKING:
    from dit_export.export.manifest.core import Manifest


def read_json(folder: Path) -> object:
    """The parsed manifest.json of `folder` (one read); one-line UserError when absent or not JSON.
    NaN/Infinity literals are refused (1e400 parses as inf: the rules refuse non-finite coefs)."""
    path = folder / FILENAME
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder (expected an exported folder with {FILENAME})")
    if not path.is_file():
        raise UserError(
            f"{folder} has no {FILENAME}: not an exported folder (run `python -m dit_export export`)"
        )
    try:
        return json.loads(path.read_text(), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot read {path}: {rules.first_line(e)}") from None


def write(m: Manifest, folder: Path) -> Path:
    """Write manifest.json into a folder being built (export's staging folder); never over one.

    Validates the result first (the same checks as reading) and hashes nothing: the records
    were made from the files. The write goes to a temporary name and is renamed into place.
    """
    path = folder / FILENAME
    if path.exists():
        raise UserError(f"{path} exists: an export's manifest is written once and never rewritten")
    raw = m.to_dict()
    check_files_exist(type(m).from_dict(json.loads(json.dumps(raw, allow_nan=False)), folder))
    tmp = folder / f".{FILENAME}.tmp"
    try:
        tmp.write_text(json.dumps(raw, indent=1, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _os_error(e, f"cannot write {path}") from None
    return path


def check_files_exist(m: Manifest) -> None:
    for rec in m.files():
        if not m.path(rec).is_file():
            raise UserError(f"{m.folder / FILENAME}: file {rec.file} is missing from {m.folder}")


def verify_hashes(m: Manifest) -> None:
    """Recompute size and sha256 of every file (once each); one-line error on a mismatch."""
    for rec in m.files():
        p = m.path(rec)
        if not p.is_file():
            raise UserError(f"{m.folder}: graph file {rec.file} is missing")
        size = p.stat().st_size
        if size != rec.bytes:
            raise UserError(
                f"{m.folder}: {rec.file} has {size} bytes, the manifest says {rec.bytes} (stale or truncated)"
            )
        if sha256_file(p) != rec.sha256:
            raise UserError(f"{m.folder}: sha256 of {rec.file} does not match the manifest (file changed)")


def check_graph_files(m: Manifest) -> None:
    """Files present, and (where onnx is importable) the ONNX files' I/O equal the manifest's."""
    check_files_exist(m)
    try:
        onnx = optional_import("onnx")
    except UserError:
        return  # the numpy/ORT runtime has no onnx; the manifest's own consistency was checked
    for problem in rules.graph_file_problems(m, onnx):
        raise UserError(problem)


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON number {name}")


def _os_error(e: OSError, what: str) -> UserError:
    if e.errno == errno.ENOSPC:
        return UserError(f"{what}: no space left on the device")
    return UserError(f"{what}: {e.strerror or e}")
