"""Sample sets at scale: one set of N images split over any number of processes, bit-identical for any split.

    set = SetRequest(num_images=50_000, seed=0, cfg_scale=1.5, steps=250)
    run_shard("engines/DiT-XL-2-256-fp16-b32", set, "fid50k", Shard(3, 8), backend="trt")  # on each GPU
    merge_set("fid50k")                                    # once, anywhere: fid50k/samples.npz

What an image is depends only on its global index i: its label is `classes[i % len(classes)]`
(all classes of the model by default: 0, 1, …, C−1, 0, 1, …, so N = K·C gives K per class), its
Philox noise is keyed by (seed, i), and it is always computed at row i mod B of the engine batch B
with the same batch-mates (the images of i // B). The set is cut into chunks of `chunk` consecutive
images (a multiple of B); chunk c is one file, and shard I of N owns the chunks c with
c mod N == I (round-robin over chunks, so every shard gets the same mix of classes and the
last, shorter chunk does not unbalance the first shard). Nothing a shard computes depends on N,
which is why one process, three processes and a torchrun launch write the same bytes.

Layout of SETDIR (every file written atomically: temp file + rename):

    shards/00003-of-00008/request.json     the set's identity + this shard (refused if it differs on resume)
    shards/00003-of-00008/.lock            held while the shard runs (filelock): one writer per shard
    shards/00003-of-00008/chunk-000011.npy uint8 (chunk, H, W, 3) images of global chunk 11
    shards/00003-of-00008/chunk-000011.json its record: first index, count, sha256, seconds, set key
    samples.npz                            after merge: arr_0 uint8 N×H×W×3 in global order, arr_1 int64 labels

A chunk counts as done only when its record exists, names this set and the `.npy` has the
recorded size and SHA-256; a restarted shard redoes every other chunk. The merge checks every
shard of the recorded count is present with the same identity and every chunk is done, then
streams the chunks into the ADM evaluator's npz layout (deterministic zip: same images → same bytes).

numpy + the runtime: no torch at import time (the torch backend imports it when used).
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
import os
import socket
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dit_export.errors import UserError
from dit_export.fileio import atomic_path, ensure_writable_dir, sha256_file, write_bytes, write_json
from dit_export.images import save_png, to_uint8
from dit_export.lazy import optional_import
from dit_export.runtime.sampler import Sampler
from dit_export.sampling.request import NUM_TRAIN_STEPS, SampleRequest

SCHEMA = "dit_export.sample_set/1"
DEFAULT_CHUNK_IMAGES = 64  # images per file, rounded up to a multiple of the engine batch
SAMPLES_FILE = "samples.npz"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the merged npz is a function of the images


# ----------------------------------------------------------------------------------------- the set


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
        req = SampleRequest(
            labels=classes, seed=self.seed, cfg_scale=self.cfg_scale, steps=self.steps, sampler=self.sampler
        ).validate(num_classes, num_train_steps)
        return replace(
            self,
            num_images=int(n),
            classes=None if self.classes is None else req.labels,
            seed=req.seed,
            cfg_scale=req.cfg_scale,
            steps=req.steps,
            chunk=None if self.chunk is None else int(self.chunk),
            per_class=None,
        )

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


# ----------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """Process `index` of `count`; `source` says where it came from (for the log line)."""

    index: int
    count: int
    source: str = "--shard"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserError(f"shard {self.index}/{self.count} ({self.source}): need 0 ≤ I < N")

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def chunks(self, num_chunks: int) -> range:
        """The global chunk indices this shard writes (round-robin)."""
        return range(self.index, num_chunks, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`I/N` (0-based I) → Shard."""
    parts = str(text).split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--shard {text!r}: expected I/N, e.g. 0/8 (shard I of N, 0-based)") from None
    return Shard(index, count, "--shard")


def _env_int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise UserError(f"environment variable {key}={env[key]!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str] = os.environ) -> Shard:
    """torchrun's RANK/WORLD_SIZE, else a Slurm array × tasks, else Slurm's tasks, else 0/1.

    In a Slurm array (`--array=0-(A-1)`) with T tasks per job, shard = array task × T + task id,
    of A × T.
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        return Shard(_env_int(env, "RANK"), _env_int(env, "WORLD_SIZE"), "RANK/WORLD_SIZE")
    procid = _env_int(env, "SLURM_PROCID") if "SLURM_PROCID" in env else 0
    ntasks = _env_int(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else 1
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = _env_int(env, "SLURM_ARRAY_TASK_ID")
        first = _env_int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        tasks = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        return Shard((task - first) * ntasks + procid, tasks * ntasks, "SLURM_ARRAY_TASK_ID × SLURM_PROCID")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return Shard(procid, ntasks, "SLURM_PROCID/SLURM_NTASKS")
    return Shard(0, 1, "no launcher variables")


def pin_gpu(env: Mapping[str, str] = os.environ) -> str | None:
    """Give each process on a machine its own GPU: CUDA_VISIBLE_DEVICES ← the LOCAL_RANK-th device.

    Uses LOCAL_RANK (torchrun) or SLURM_LOCALID; leaves CUDA_VISIBLE_DEVICES alone when it already
    names one device (the launcher bound the GPU). Must run before any CUDA library initialises.
    Returns what it did, for the log, or None.
    """
    key = "LOCAL_RANK" if "LOCAL_RANK" in env else "SLURM_LOCALID" if "SLURM_LOCALID" in env else None
    if key is None:
        return None
    local = _env_int(env, key)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local)
        return f"CUDA_VISIBLE_DEVICES={local} ({key})"
    devices = [d for d in visible.split(",") if d.strip()]
    if len(devices) <= 1:
        return None
    if local >= len(devices):
        raise UserError(f"{key}={local} but CUDA_VISIBLE_DEVICES lists {len(devices)} devices")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[local]
    return f"CUDA_VISIBLE_DEVICES={devices[local]} ({key} {local} of {visible})"


# ----------------------------------------------------------------------------------------- records


def set_record(req: SetRequest, sampler: Sampler, backend: str) -> dict:
    """The identity every shard of a set must share (recorded in each shard's request.json)."""
    folder = Path(sampler.folder)
    manifest_path = folder / "manifest.json"
    labels = req.labels(sampler.num_classes)
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
    }


def set_key(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _first_difference(old: dict, new: dict) -> str:
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            a, b = (json.dumps(d.get(k))[:60] for d in (old, new))
            return f"{k} was {a}, now {b}"
    return "nothing"


def _shard_dirs(out: Path) -> list[Path]:
    root = out / "shards"
    return (
        sorted(p for p in root.iterdir() if p.is_dir() and (p / "request.json").is_file())
        if root.is_dir()
        else []
    )


def _read_request(shard_dir: Path) -> dict:
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


def _check_same_set(out: Path, record: dict, shard: Shard) -> None:
    """Refuse to add a shard to a SETDIR whose other shards record another set or shard count."""
    for d in _shard_dirs(out):
        other = _read_request(d)
        label = f"shard {other['shard']['index']}/{other['shard']['count']}"
        if other["set"] != record:
            raise UserError(
                f"{out} holds {label} of another set ({_first_difference(other['set'], record)}): "
                "use another --out, or the same settings and engines"
            )
        if other["shard"]["count"] != shard.count:
            raise UserError(
                f"{out} was started with {other['shard']['count']} shards ({label}); this process is "
                f"shard {shard} ({shard.source}): use the same shard count or another --out"
            )


# ----------------------------------------------------------------------------------------- chunks


def _chunk_paths(shard_dir: Path, c: int) -> tuple[Path, Path]:
    return shard_dir / f"chunk-{c:06d}.npy", shard_dir / f"chunk-{c:06d}.json"


def _chunk_done(shard_dir: Path, c: int, key: str, lo: int, hi: int, hash_check: bool = True) -> dict | None:
    """The chunk's record when its file is complete and verified, else None."""
    npy, rec_path = _chunk_paths(shard_dir, c)
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


def _write_chunk(
    shard_dir: Path, c: int, key: str, lo: int, images: np.ndarray, seconds: float, runtime: str
) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images), allow_pickle=False)
    data = buf.getvalue()
    npy, rec_path = _chunk_paths(shard_dir, c)
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


def _read_chunk(shard_dir: Path, c: int, rec: dict, shape: tuple[int, ...]) -> np.ndarray:
    npy, _ = _chunk_paths(shard_dir, c)
    data = npy.read_bytes()
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise UserError(f"{npy} changed after it was written (SHA-256 differs): run its shard again")
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype != np.uint8 or arr.shape != shape:
        raise UserError(f"{npy} holds {arr.dtype} {arr.shape}, expected uint8 {shape}")
    return arr


# ----------------------------------------------------------------------------------------- run


@dataclass
class ShardResult:
    shard: Shard
    folder: Path
    images: int  # images this shard owns
    generated: int  # images generated by this call (the rest were already done)
    seconds: float  # generation wall time of this call
    cpu_seconds: float = 0.0  # CPU time of this process (all threads) while generating

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else float("nan")


def _lock(shard_dir: Path, shard: Shard):
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


def _generate(sampler: Sampler, req: SetRequest, labels: np.ndarray, lo: int) -> np.ndarray:
    """uint8 (M, H, W, 3) images of global indices lo .. lo + len(labels) − 1."""
    request = SampleRequest(
        labels=tuple(int(v) for v in labels),
        seed=req.seed,
        cfg_scale=req.cfg_scale,
        steps=req.steps,
        sampler=req.sampler,
        noise="philox",
        first_index=lo,
    )
    res = sampler.generate(request, decode=True, progress=False)
    if res.images is None:
        raise UserError(
            "this export has no VAE decoder (exported with --vae none): a sample set needs images"
        )
    return to_uint8(res.images)


def run_shard(
    engines: str | os.PathLike,
    req: SetRequest,
    out: str | os.PathLike,
    shard: Shard,
    *,
    backend: str = "ort",
    providers: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **backend_options,
) -> ShardResult:
    """Generate (or finish) this shard's chunks of the set in `out`; safe to kill and rerun.

    `backend_options` go to `Sampler.load` (e.g. trt `cuda_graph`).
    """
    out = Path(out)
    with Sampler.load(engines, backend=backend, providers=providers, **backend_options) as sampler:
        if not sampler.has_vae:
            raise UserError("this export has no VAE decoder (exported with --vae none): a set needs images")
        req = req.validate(sampler.num_classes, sampler.num_train_steps)
        record = set_record(req, sampler, sampler.backend.name)
        shard_dir = ensure_writable_dir(out / "shards" / shard.name)
        lock = _lock(shard_dir, shard)
        try:
            _claim_shard(out, shard_dir, record, shard)
            key, mine = set_key(record), chunk_plan(record, shard)
            todo = [(c, lo, hi) for c, lo, hi in mine if _chunk_done(shard_dir, c, key, lo, hi) is None]
            total = sum(hi - lo for _, lo, hi in mine)
            done = total - sum(hi - lo for _, lo, hi in todo)
            log(
                f"shard {shard} ({shard.source}): {total} of {req.num_images} images in {len(mine)} "
                f"chunk(s) of {record['chunk']}, {done} already done; {sampler.describe()}"
            )
            labels, runtime = req.labels(sampler.num_classes), sampler.backend.describe()
            generated, t0, cpu0 = 0, time.perf_counter(), time.process_time()
            with _bar(total, done, f"shard {shard}", progress) as bar:
                for c, lo, hi in todo:
                    t = time.perf_counter()
                    images = _generate(sampler, req, labels[lo:hi], lo)
                    _write_chunk(shard_dir, c, key, lo, images, time.perf_counter() - t, runtime)
                    generated += hi - lo
                    bar.update(hi - lo)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            return ShardResult(shard, shard_dir, total, generated, wall, cpu)
        finally:
            lock.release()


def chunk_plan(record: dict, shard: Shard) -> list[tuple[int, int, int]]:
    """(chunk c, first index, end index) of every chunk the shard owns, in order."""
    n, chunk = record["num_images"], record["chunk"]
    return [(c, c * chunk, min(n, (c + 1) * chunk)) for c in shard.chunks(-(-n // chunk))]


def _claim_shard(out: Path, shard_dir: Path, record: dict, shard: Shard) -> None:
    """Record the set in the shard (first run) or refuse a resume with other settings."""
    _check_same_set(out, record, shard)
    if (shard_dir / "request.json").is_file():
        old = _read_request(shard_dir)
        if old["set"] != record:
            raise UserError(
                f"shard {shard} in {out} was started with other settings "
                f"({_first_difference(old['set'], record)}): use another --out or the same settings"
            )
        return
    write_json(
        shard_dir / "request.json",
        {
            "schema": SCHEMA,
            "set": record,
            "shard": {"index": shard.index, "count": shard.count},
            "host": socket.gethostname(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def _bar(total: int, initial: int, desc: str, progress: bool):
    """A progress bar in images with images/s (tqdm; one per process)."""
    return tqdm(total=total, initial=initial, unit="img", desc=desc, disable=not progress, smoothing=0.1)


# ----------------------------------------------------------------------------------------- merge


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
    dirs = _shard_dirs(out)
    if not dirs:
        raise UserError(f"{out} holds no sample-set shards (expected {out / 'shards'}/I-of-N/request.json)")
    reqs = {d: _read_request(d) for d in dirs}
    first = reqs[dirs[0]]
    record, count = first["set"], first["shard"]["count"]
    key = set_key(record)
    by_index: dict[int, Path] = {}
    for d, r in reqs.items():
        label = f"shard {r['shard']['index']}/{r['shard']['count']}"
        if r["set"] != record:
            raise UserError(f"{label} in {d} records another set ({_first_difference(record, r['set'])})")
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
        recs = [(c, lo, hi, _chunk_done(d, c, key, lo, hi, hash_check=False)) for c, lo, hi in mine]
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
            arr = _read_chunk(d, c, rec, (hi - lo, size, size, 3))
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


__all__ = [
    "SCHEMA",
    "MergeResult",
    "SetRequest",
    "Shard",
    "ShardResult",
    "merge_set",
    "parse_shard",
    "pin_gpu",
    "run_shard",
    "set_labels",
    "shard_from_env",
]
