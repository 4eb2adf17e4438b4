"""The chunk files of a shard: one `.npy` of images and its `.json` record each, written atomically.

A chunk counts as done only when its record exists, names this set and the `.npy` has the recorded
size and SHA-256; `.lock` (filelock) keeps one writer per shard.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.fileio import sha256_file, write_bytes, write_json
from dit_export.lazy import optional_import
from dit_export.sets.launcher import Shard


def chunk_paths(shard_dir: Path, c: int) -> tuple[Path, Path]:
    return shard_dir / f"chunk-{c:06d}.npy", shard_dir / f"chunk-{c:06d}.json"


def chunk_done(shard_dir: Path, c: int, key: str, lo: int, hi: int, hash_check: bool = True) -> dict | None:
    """The chunk's record when its file is complete and verified, else None."""
    npy, rec_path = chunk_paths(shard_dir, c)
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("set") != key or rec.get("first") != lo or rec.get("count") != hi - lo:
        return None
    try:
        if npy.stat().st_size != rec.get("bytes"):
            return None
    except OSError:
        return None
    if hash_check and sha256_file(npy) != rec.get("sha256"):
        return None
    return rec


def write_chunk(
    shard_dir: Path, c: int, key: str, lo: int, images: np.ndarray, seconds: float, runtime: str
) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images), allow_pickle=False)
    data = buf.getvalue()
    npy, rec_path = chunk_paths(shard_dir, c)
    write_bytes(npy, data)
    write_json(
        rec_path,
        {
            "set": key,
            "chunk": c,
            "first": lo,
            "count": int(images.shape[0]),
            "file": npy.name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "seconds": round(seconds, 6),
            "runtime": runtime,  # the backend's own description (informational; the set records the word)
        },
    )


def read_chunk(shard_dir: Path, c: int, rec: dict, shape: tuple[int, ...]) -> np.ndarray:
    npy, _ = chunk_paths(shard_dir, c)
    data = npy.read_bytes()
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise UserError(f"{npy} changed after it was written (SHA-256 differs): run its shard again")
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype != np.uint8 or arr.shape != shape:
        raise UserError(f"{npy} holds {arr.dtype} {arr.shape}, expected uint8 {shape}")
    return arr


def lock_shard(shard_dir: Path, shard: Shard):
    """The held `.lock` of the shard (release it when done); one line when another process holds it."""
    filelock = optional_import("filelock", "the sample-set shard lock")
    lock = filelock.FileLock(str(shard_dir / ".lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise UserError(
            f"shard {shard} of {shard_dir.parent.parent} is being written by another process "
            f"(lock {shard_dir / '.lock'}); run each shard once"
        ) from None
    return lock
