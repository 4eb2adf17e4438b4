"""The merge: check every shard is complete and of one set, then stream the chunks into samples.npz.

The npz is the ADM evaluator's layout (arr_0 uint8 N×H×W×3 in global order, arr_1 int64 labels),
written as a deterministic zip: the same images give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dit_export.errors import UserError
from dit_export.fileio import atomic_path
from dit_export.images import save_png
from dit_export.sets.launcher import Shard
from dit_export.sets.records import (
    chunk_plan,
    first_difference,
    read_request,
    set_key,
    set_labels,
    shard_dirs,
)
from dit_export.sets.store import chunk_done, read_chunk

SAMPLES_FILE = "samples.npz"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the merged npz is a function of the images


@dataclass
class MergeResult:
    path: Path
    num_images: int
    shards: int
    image_size: int
    classes: int
    per_class: tuple[int, int]  # fewest and most images of one class
    bytes: int
    generation_seconds: float  # the sum over chunks of the time to generate them (all processes)
    seconds: float  # this merge's wall time

    def summary(self) -> str:
        lo, hi = self.per_class
        per = f"{lo} per class" if lo == hi else f"{lo}–{hi} per class"
        gen = self.generation_seconds
        rate = f", {self.num_images / gen:.2f} images/s per process" if gen > 0 else ""
        return (
            f"merged {self.num_images} images {self.image_size}×{self.image_size} ({self.classes} classes, {per}) "
            f"from {self.shards} shard(s) into {self.path} ({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s; "
            f"generation took {gen:.1f} process-seconds{rate}"
        )


def _collect(out: Path) -> tuple[dict, list[tuple[Path, int, int, int, dict]]]:
    """The set's record and every chunk (shard dir, c, lo, hi, chunk record), checked complete."""
    dirs = shard_dirs(out)
    if not dirs:
        raise UserError(f"{out} holds no sample-set shards (expected {out / 'shards'}/I-of-N/request.json)")
    reqs = {d: read_request(d) for d in dirs}
    first = reqs[dirs[0]]
    record, count = first["set"], first["shard"]["count"]
    key = set_key(record)
    by_index: dict[int, Path] = {}
    for d, r in reqs.items():
        label = f"shard {r['shard']['index']}/{r['shard']['count']}"
        if r["set"] != record:
            raise UserError(f"{label} in {d} records another set ({first_difference(record, r['set'])})")
        if r["shard"]["count"] != count or d.name != Shard(r["shard"]["index"], count).name:
            raise UserError(f"{label} in {d} does not match the {count} shards of this set")
        by_index[r["shard"]["index"]] = d
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing[:8]) + (" …" if len(missing) > 8 else "")
        raise UserError(
            f"{out}: shard(s) {names} missing ({len(missing)} of {count}): run them, then merge again"
        )
    chunks = []
    for i, d in sorted(by_index.items()):
        shard = Shard(i, count)
        mine = chunk_plan(record, shard)
        recs = [(c, lo, hi, chunk_done(d, c, key, lo, hi, hash_check=False)) for c, lo, hi in mine]
        undone = [c for c, _, _, rec in recs if rec is None]
        if undone:
            raise UserError(
                f"shard {shard} is incomplete: {len(mine) - len(undone)} of {len(mine)} chunks done "
                f"(first missing: chunk {undone[0]}): run it again to finish, then merge"
            )
        chunks += [(d, c, lo, hi, rec) for c, lo, hi, rec in recs]
    chunks.sort(key=lambda t: t[1])
    return record, chunks


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)  # np.save's layout for any shape we write
    return buf.getvalue()


def _write_member(zf: zipfile.ZipFile, name: str, shape, dtype, parts: Iterator[np.ndarray]) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    with zf.open(info, "w", force_zip64=True) as f:
        f.write(_npy_header(tuple(shape), dtype))
        for part in parts:
            f.write(np.ascontiguousarray(part, dtype=dtype).tobytes())


def merge_set(
    out: str | os.PathLike, *, png: bool = False, log: Callable[[str], None] = print, progress: bool = True
) -> MergeResult:
    """Check every shard is complete and consistent; write out/samples.npz (and out/png/ on request)."""
    t0 = time.perf_counter()
    out = Path(out)
    record, chunks = _collect(out)
    n, size = record["num_images"], record["image_size"]
    classes = range(record["num_classes"]) if record["classes"] == "all" else record["classes"]
    labels = set_labels(n, classes)
    if hashlib.sha256(labels.tobytes()).hexdigest() != record["labels_sha256"]:
        raise UserError(f"{out}: the recorded labels do not match the recorded classes (edited records?)")
    target = out / SAMPLES_FILE
    bar = tqdm(total=n, unit="img", desc="merge", disable=not progress)

    def parts() -> Iterator[np.ndarray]:
        for d, c, lo, hi, rec in chunks:
            arr = read_chunk(d, c, rec, (hi - lo, size, size, 3))
            if png:
                for k, img in enumerate(arr):
                    save_png(out / "png" / f"{lo + k:06d}.png", img)
            bar.update(hi - lo)
            yield arr

    try:
        with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_member(zf, "arr_0.npy", (n, size, size, 3), np.uint8, parts())
            _write_member(zf, "arr_1.npy", (n,), np.int64, iter([labels]))
    finally:
        bar.close()
    counts = np.bincount(labels, minlength=max(classes) + 1)[list(classes)]
    shards = len({d for d, *_ in chunks})
    result = MergeResult(
        target,
        n,
        shards,
        size,
        len(set(classes)),
        (int(counts.min()), int(counts.max())),
        target.stat().st_size,
        float(sum(rec.get("seconds", 0.0) for *_, rec in chunks)),
        time.perf_counter() - t0,
    )
    log(result.summary())
    runtimes = sorted({str(rec.get("runtime")) for *_, rec in chunks})
    if len(runtimes) > 1:
        log(f"note: the chunks ran on {len(runtimes)} different runtimes: {'; '.join(runtimes)}")
    return result
