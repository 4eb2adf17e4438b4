"""`manifest.json`: everything a runtime (Python or C++) needs to drive an exported folder.

Torch-free on purpose (json, hashlib, numpy, pathlib and our one-line error type only): the
numpy runtime and the C++ example read the same file. `read_manifest` validates every field a
runtime relies on and names the first bad one; `verify_hashes` re-checks the graph files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from dit_export.errors import UserError

SCHEMA = "dit_export.manifest/1"
FILENAME = "manifest.json"
GRAPH_NAMES = ("dit", "dit_step", "vae_decoder")
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")

# ddpm/ddim step counts whose tables are stored (others: the rule text, or schedule.make_schedule).
STORED_SCHEDULES = {"ddpm": (250, 100, 50, 25), "ddim": (50, 25, 10)}

_MISSING = object()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(folder: Path, name: str) -> dict:
    """{"file", "sha256", "bytes"} of a file in `folder`."""
    p = Path(folder) / name
    return {"file": name, "sha256": sha256_file(p), "bytes": p.stat().st_size}


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write (inside a folder that is itself built atomically by the caller); validates first."""
    folder = Path(folder)
    _validate(manifest, folder, check_files=True)
    path = folder / FILENAME
    path.write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict:
    """The validated manifest of an exported folder; a one-line UserError naming the bad field."""
    folder = Path(folder)
    path = folder / FILENAME
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder (expected an exported folder with {FILENAME})")
    if not path.is_file():
        raise UserError(
            f"{folder} has no {FILENAME}: not an exported folder (run `python -m dit_export export`)"
        )
    try:
        manifest = json.loads(path.read_text(), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(
            f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    _validate(manifest, folder, check_files=True)
    return manifest


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON number {name}")


def verify_hashes(folder: str | Path, manifest: dict | None = None) -> None:
    """Recompute the sha256 of every graph file and its external data; one-line error on a mismatch."""
    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    for gname, g in manifest["graphs"].items():
        if g is None:
            continue
        for entry in [g] + list(g["external_data"]):
            p = folder / entry["file"]
            if not p.is_file():
                raise UserError(f"{folder}: graph file {entry['file']} ({gname}) is missing")
            size = p.stat().st_size
            if size != entry["bytes"]:
                raise UserError(
                    f"{folder}: {entry['file']} has {size} bytes, the manifest says {entry['bytes']} (stale or truncated)"
                )
            if sha256_file(p) != entry["sha256"]:
                raise UserError(
                    f"{folder}: sha256 of {entry['file']} does not match the manifest (file changed)"
                )


def schedule_table(manifest: dict, sampler: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps int64 (S,), coefs float32 (S, K)) stored for a sampler and step count."""
    tables = manifest["schedule"]["tables"].get(sampler, {})
    entry = tables.get(str(int(steps)))
    if entry is None:
        have = ", ".join(
            f"{s} {','.join(sorted(t, key=int))}" for s, t in manifest["schedule"]["tables"].items()
        )
        raise UserError(
            f"no stored {sampler} table for {steps} steps (stored: {have}); "
            "compute it with dit_export.sampling.schedule.make_schedule"
        )
    return np.asarray(entry["timesteps"], dtype=np.int64), np.asarray(entry["coefs"], dtype=np.float32)


# --------------------------------------------------------------------------- validation


def _get(obj: dict, path: str, kind, where: str = FILENAME, optional: bool = False, prefix: str = ""):
    """obj[path] (dotted) of the given type(s); errors name the field as `prefix + path`."""
    cur = obj
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            if optional:
                return None
            raise UserError(f"{where}: missing field {prefix + path!r}")
        cur = cur[key]
    if cur is None and optional:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(cur, kinds) and not (isinstance(cur, bool) and bool not in kinds)
    if not ok:
        want = "/".join(k.__name__ for k in kinds)
        raise UserError(f"{where}: field {prefix + path!r} should be {want}, got {type(cur).__name__}")
    return cur


def _validate(m: object, folder: Path, check_files: bool) -> None:
    where = str(folder / FILENAME)
    if not isinstance(m, dict):
        raise UserError(f"{where}: not a JSON object")
    schema = _get(m, "schema", str, where)
    if schema.split("/")[0] != SCHEMA.split("/")[0]:
        raise UserError(f"{where}: field 'schema' is {schema!r}, not a dit_export manifest")
    if schema != SCHEMA:
        raise UserError(
            f"{where}: schema {schema!r} is not supported (this dit_export reads {SCHEMA}); re-export"
        )
    for key in ("dit_export", "torch", "onnx"):
        _get(m, f"versions.{key}", str, where)
    _get(m, "model.name", str, where)
    cfg = _get(m, "model.config", dict, where)
    for key, kind in (("depth", int), ("hidden_size", int), ("num_heads", int), ("patch_size", int),
                      ("input_size", int), ("in_channels", int), ("num_classes", int), ("learn_sigma", bool)):  # fmt: skip
        _get(cfg, key, kind, where, prefix="model.config.")
    if _get(m, "model.flavor", str, where) not in ("official", "diffusers"):
        raise UserError(f"{where}: field 'model.flavor' must be official or diffusers")
    _get(m, "model.cfg_channels", int, where)
    _get(m, "model.null_class", int, where)
    _get(m, "model.source", str, where)
    for key in ("image_size", "latent_size", "latent_channels", "batch", "opset"):
        if _get(m, key, int, where) <= 0:
            raise UserError(f"{where}: field {key!r} must be positive")
    if _get(m, "precision", str, where) not in ("fp32", "fp16"):
        raise UserError(f"{where}: field 'precision' must be fp32 or fp16")
    if "vae" not in m:
        raise UserError(f"{where}: missing field 'vae' (null when exported with --vae none)")
    vae = _get(m, "vae", dict, where, optional=True)
    if vae is not None:
        _get(m, "vae.source", str, where)
        _get(m, "vae.scaling_factor", (float, int), where)
        _get(m, "vae.factor", int, where)
    graphs = _get(m, "graphs", dict, where)
    for name in GRAPH_NAMES:
        if name not in graphs:
            raise UserError(f"{where}: missing field 'graphs.{name}'")
        g = graphs[name]
        if g is None:
            if name != "vae_decoder":
                raise UserError(f"{where}: field 'graphs.{name}' is null")
            if vae is not None:
                raise UserError(f"{where}: 'vae' is set but 'graphs.vae_decoder' is null")
            continue
        _validate_graph(g, f"graphs.{name}", where, folder, check_files)
    if vae is None and graphs.get("vae_decoder") is not None:
        raise UserError(f"{where}: 'graphs.vae_decoder' is set but 'vae' is null")
    sched = _get(m, "schedule", dict, where)
    names = _get(sched, "coef_names", list, where, prefix="schedule.")
    _get(sched, "num_train_steps", int, where, prefix="schedule.")
    _get(sched, "rule", str, where, prefix="schedule.")
    tables = _get(sched, "tables", dict, where, prefix="schedule.")
    for sampler, by_steps in tables.items():
        if not isinstance(by_steps, dict):
            raise UserError(f"{where}: field 'schedule.tables.{sampler}' should be an object")
        for steps, t in by_steps.items():
            label = f"schedule.tables.{sampler}.{steps}"
            ts = _get(t, "timesteps", list, where, prefix=f"{label}.")
            coefs = _get(t, "coefs", list, where, prefix=f"{label}.")
            if not steps.isdigit() or len(ts) != int(steps) or len(coefs) != int(steps):
                raise UserError(f"{where}: field {label!r} should hold {steps} timesteps and coef rows")
            if any(not isinstance(row, list) or len(row) != len(names) for row in coefs):
                raise UserError(f"{where}: field '{label}.coefs' rows should have {len(names)} values")
    _get(m, "noise.default", str, where)
    _get(m, "checks", dict, where)


def _validate_graph(g: object, label: str, where: str, folder: Path, check_files: bool) -> None:
    if not isinstance(g, dict):
        raise UserError(f"{where}: field {label!r} should be an object")
    pre = f"{label}."
    fname = _get(g, "file", str, where, prefix=pre)
    if "/" in fname or "\\" in fname or fname.startswith("."):
        raise UserError(f"{where}: field '{label}.file' must be a plain file name, got {fname!r}")
    sha = _get(g, "sha256", str, where, prefix=pre)
    if len(sha) != 64:
        raise UserError(f"{where}: field '{label}.sha256' is not a sha256 hex digest")
    _get(g, "bytes", int, where, prefix=pre)
    ext = _get(g, "external_data", list, where, prefix=pre)
    for i, e in enumerate(ext):
        for key, kind in (("file", str), ("sha256", str), ("bytes", int)):
            _get(e, key, kind, where, prefix=f"{label}.external_data[{i}].")
    for side in ("inputs", "outputs"):
        items = _get(g, side, list, where, prefix=pre)
        if not items:
            raise UserError(f"{where}: field '{label}.{side}' is empty")
        for i, t in enumerate(items):
            lab = f"{label}.{side}[{i}]."
            _get(t, "name", str, where, prefix=lab)
            shape = _get(t, "shape", list, where, prefix=lab)
            if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
                raise UserError(
                    f"{where}: field '{lab}shape' must be a list of non-negative integers (static graph)"
                )
            if _get(t, "dtype", str, where, prefix=lab) not in DTYPES:
                raise UserError(
                    f"{where}: field '{lab}dtype' {t['dtype']!r} is not one of {', '.join(DTYPES)}"
                )
    if check_files:
        for entry in [g] + ext:
            if not (folder / entry["file"]).is_file():
                raise UserError(f"{where}: {label} file {entry['file']} is missing from {folder}")
