"""The export's output folder: may it be written, one export at a time, and clean-up after a kill.

The lower-level half of the folder rules: `check_out_dir` decides whether `export` may replace a
folder at all (an export of ours with --force, never someone else's files); whether a build can
reuse what is there is the folder object's rule (`runtime.folder.ExportFolder.why_stale`), which
sits above engine/ because it also weighs the plans and AOTI packages.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from dit_export.errors import UserError
from dit_export.export.manifest import FILENAME, Manifest

SCHEMA_FAMILY = "dit_export.manifest/"
# What a folder written by dit_export may hold besides the manifest's files (engine/ writes the
# compiled folders, build and bench build.json), so that `--force` can tell our folders from anyone else's.
OURS = ("plans", "aoti", "build.json", ".lock", "calibration.npz")  # int8/fp8 calibration set
OUR_SUFFIXES = (".plan", ".pt2", ".cache", ".json", ".lock")

__all__ = ["check_out_dir", "disk_errors", "export_lock", "lock_path", "remove_stale_partials"]


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite an export without --force, and anything that is not ours even with it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not _is_export(out):
        hint = "pass --force to replace it" if not force else "choose another --out or move it away"
        raise UserError(
            f"--out {out} exists and is not empty, and it is not a dit_export export (no {FILENAME}); "
            f"{'refusing to replace it even with --force: ' if force else ''}{hint}"
        )
    if not force:
        raise UserError(f"{out} already holds an export; pass --force to replace it")
    recorded = _recorded_files(out)
    foreign = sorted(p.name for p in out.iterdir() if not _is_ours(p.name, recorded))
    if foreign:
        raise UserError(
            f"--out {out} holds files dit_export did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); move them away first, --force replaces only an export"
        )


def _is_export(out: Path) -> bool:
    """A manifest.json of ours (any schema version) — not just any file of that name."""
    try:
        raw = json.loads((out / FILENAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(raw, dict) and str(raw.get("schema", "")).startswith(SCHEMA_FAMILY)


def _recorded_files(out: Path) -> set[str] | None:
    """The files an export's manifest records; None for a manifest this version cannot read."""
    try:
        return {rec.file for rec in Manifest.read(out, check_graphs=False).files()}
    except UserError:
        return None


def _is_ours(name: str, recorded: set[str] | None) -> bool:
    if name == FILENAME or name in OURS or name.endswith(OUR_SUFFIXES):
        return True
    if recorded is None:  # an export from an older dit_export
        return name.endswith((".onnx", ".data"))
    return name in recorded


def lock_path(out: Path) -> Path:
    return Path(out).with_name(f".{Path(out).name}.export.lock")


@contextmanager
def export_lock(out: Path) -> Iterator[None]:
    """One export of a folder at a time: a second one fails at once with one line.

    An OS file lock beside the folder (dropped by the kernel when the process dies, so a killed
    export never leaves a stale lock). A build holds its own lock (`.<name>.lock`) around this.
    """
    path = lock_path(out)
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise UserError(f"another export of {out} is running; wait for it to finish") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: a waiting peer sees the inode gone and retries
        lock.release()


def remove_stale_partials(out: Path) -> list[Path]:
    """Staging folders of killed exports of `out` (called while holding the export lock: a live
    export of the same folder would hold it, so every `.<name>.*.partial` here is stale)."""
    removed = []
    for junk in Path(out).parent.glob(f".{Path(out).name}.*.partial"):
        if junk.is_dir() and not junk.is_symlink():
            shutil.rmtree(junk, ignore_errors=True)
            removed.append(junk)
    return removed


@contextmanager
def disk_errors(out: Path) -> Iterator[None]:
    """A write failing (disk full, permissions) is one line; atomic_dir has removed the partial."""
    try:
        yield
    except OSError as e:
        if os.environ.get("DIT_EXPORT_DEBUG"):
            raise
        why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise UserError(f"export to {out} failed: {why}; nothing written") from None
