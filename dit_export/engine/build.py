"""`build`: export → engines → a short verify → a summary table, reusing whatever is unchanged.

Decisions come from the manifest. The export is reused when the folder's `build.request` record
(model, weights and their file size/mtime, VAE, batch, precision, opset) equals this request and
every graph file still matches its sha256; TensorRT plans are reused when their records match
(`dit_export.engine.plans`). A re-export keeps the plans and timing caches (hard links set aside
and brought back), dropping only plans whose ONNX graph changed.

Interruptions: the export builds in a hidden sibling and swaps in whole; plans and manifest
updates are written to temporary names and renamed; a lock beside the folder stops a second
build of the same folder. So after Ctrl-C or kill the folder holds only complete files that the
manifest describes, and the next build picks up where this one stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dit_export.errors import UserError
from dit_export.export.manifest import FILENAME, read_manifest, verify_hashes
from dit_export.fileio import ensure_writable_dir

TENSORRT, ONNXRUNTIME = "tensorrt", "onnxruntime"
KEEP_SUFFIXES = (".plan", ".cache")


@dataclass
class BuildConfig:
    out: Path | None = None
    model: str | None = None
    ckpt: str | None = None
    random_weights: bool = False
    weights_seed: int = 0
    flavor: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    vae: str = "mse"
    batch: int = 1
    precision: str = "fp16"
    opset: int | None = None
    backend: str = "auto"
    force: bool = False
    verify: bool = True
    verify_seeds: list[int] = field(default_factory=lambda: [0])
    verify_steps: int = 10
    workspace_gib: float = 4.0
    opt_level: int = 3


@dataclass
class StageRow:
    stage: str
    result: str
    seconds: float | None
    detail: str


# ------------------------------------------------------------------------------ backend choice


def choose_backend(requested: str) -> tuple[str, str]:
    """(tensorrt | onnxruntime, one line saying which and why); --backend tensorrt without it → error."""
    from dit_export.engine import trt_api

    if requested not in ("auto", TENSORRT, ONNXRUNTIME):
        raise UserError(f"--backend must be auto, tensorrt or onnxruntime, got {requested!r}")
    if requested == ONNXRUNTIME:
        return ONNXRUNTIME, f"backend: onnxruntime ({_ort_provider()}), as requested"
    ok, why = trt_api.probe()
    if requested == TENSORRT:
        if not ok:
            raise UserError(f"--backend tensorrt: {why}")
        return TENSORRT, f"backend: tensorrt ({why})"
    if ok:
        return TENSORRT, f"backend auto → tensorrt: {why}"
    return ONNXRUNTIME, f"backend auto → onnxruntime ({_ort_provider()}): {why}"


def _ort_provider() -> str:
    from dit_export.runtime.ort_backend import default_providers

    return default_providers()[0]


# ------------------------------------------------------------------------------ the export stage


def default_out(cfg: BuildConfig) -> Path:
    """engines/<model>-<image size>-<precision>-b<N>, e.g. engines/DiT-XL-2-256-fp16-b1."""
    from dit_export.models.configs import canonical_name
    from dit_export.models.embedded import embedded_model, is_embedded

    if is_embedded(cfg.model):
        name, size = canonical_name(cfg.model), cfg.image_size or embedded_model(cfg.model).image_size
    elif cfg.model and (cfg.image_size or not cfg.ckpt):
        name, size = canonical_name(cfg.model), cfg.image_size or 256
    elif (
        cfg.ckpt
    ):  # the name comes from the weights: read them once (rare: --ckpt without --model/--image-size)
        from dit_export.models.checkpoints import load_dit

        _, mcfg = load_dit(
            cfg.ckpt,
            model=cfg.model,
            image_size=cfg.image_size,
            flavor=cfg.flavor,
            num_classes=cfg.num_classes,
        )
        name, size = mcfg.name or "DiT-custom", mcfg.input_size * 8
    else:
        raise UserError("give --model, --ckpt or both (e.g. --model XL/2)")
    return Path("engines") / f"{name.replace('/', '-')}-{size}-{cfg.precision}-b{cfg.batch}"


def _fingerprint(spec: str | None) -> dict | None:
    """Size and mtime of a local weights file or folder (None for hub ids and shorthands)."""
    if not spec:
        return None
    p = Path(spec).expanduser()
    if p.is_file():
        st = p.stat()
        return {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return {
            "path": str(p.resolve()),
            "bytes": sum(f.stat().st_size for f in files),
            "mtime_ns": max((f.stat().st_mtime_ns for f in files), default=0),
            "files": len(files),
        }
    return None


def export_request(cfg: BuildConfig) -> dict:
    """Everything the export depends on, normalised, as recorded under manifest build.request."""
    from dit_export.export.trt_ops import DEFAULT_OPSET
    from dit_export.models.configs import canonical_name

    return {
        "model": canonical_name(cfg.model) if cfg.model else None,
        "ckpt": cfg.ckpt,
        "ckpt_file": _fingerprint(cfg.ckpt),
        "random_weights": bool(cfg.random_weights),
        "weights_seed": int(cfg.weights_seed),
        "flavor": cfg.flavor,
        "num_classes": cfg.num_classes,
        "image_size": cfg.image_size,
        "vae": cfg.vae,
        "vae_file": _fingerprint(cfg.vae),
        "batch": int(cfg.batch),
        "precision": cfg.precision,
        "opset": int(cfg.opset or DEFAULT_OPSET),
    }


def _why_stale(out: Path, request: dict, force: bool) -> str | None:
    """None when the existing export can be reused as is; else the reason to (re-)export."""
    if not (out / FILENAME).exists():
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder")
        if out.is_dir() and any(p for p in out.iterdir()) and not force:
            raise UserError(f"--out {out} is not empty and holds no export; pass --force to use it anyway")
        return "no export yet"
    try:
        m = read_manifest(out)
        verify_hashes(out, m)
    except UserError as e:
        return f"the existing export is not valid ({e})"
    prev = m.get("build", {}).get("request") if isinstance(m.get("build"), dict) else None
    if prev is None:
        if not force:
            raise UserError(
                f"{out} holds an export that `build` did not make; pass --force to rebuild it, or choose another --out"
            )
        return "--force on an export made by `export`"
    if prev != request:
        changed = sorted(k for k in set(prev) | set(request) if prev.get(k) != request.get(k))
        return "changed: " + ", ".join(changed)
    return None


def _stash(out: Path) -> Path | None:
    """Hard-link plans and timing caches (and their manifest records) aside before a re-export."""
    if not out.is_dir():
        return None
    files = [p for p in out.iterdir() if p.is_file() and p.suffix in KEEP_SUFFIXES]
    if not files:
        return None
    keep = out.with_name(f".{out.name}.keep")
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir()
    for p in files:
        _link(p, keep / p.name)
    try:
        engines = json.loads((out / FILENAME).read_text()).get("engines", {})
    except (OSError, ValueError, AttributeError):
        engines = {}
    (keep / "engines.json").write_text(json.dumps(engines))
    return keep


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _restore(keep: Path, out: Path) -> int:
    """Bring stashed plans back where their ONNX graph is unchanged; returns how many."""
    from dit_export.engine.plans import update_manifest

    try:
        engines = json.loads((keep / "engines.json").read_text())
        m = read_manifest(out)
    except (OSError, ValueError, UserError):
        shutil.rmtree(keep, ignore_errors=True)
        return 0
    back = {}
    for name, rec in engines.items():
        g = m["graphs"].get(rec.get("graph")) if isinstance(rec, dict) else None
        if g is not None and g["sha256"] == rec.get("onnx_sha256") and (keep / name).is_file():
            if not (out / name).exists():
                _link(keep / name, out / name)
            back[name] = rec
    for p in keep.iterdir():
        if p.suffix == ".cache" and not (out / p.name).exists():
            _link(p, out / p.name)
    if back:
        update_manifest(out, lambda m: m.setdefault("engines", {}).update(back))
    shutil.rmtree(keep, ignore_errors=True)
    return len(back)


def ensure_export(cfg: BuildConfig, out: Path, log: Callable[[str], None]) -> StageRow:
    from dit_export.engine.plans import update_manifest
    from dit_export.export.exporter import ExportOptions, export
    from dit_export.export.trt_ops import DEFAULT_OPSET

    t0 = time.perf_counter()
    for junk in out.parent.glob(f".{out.name}.*.partial"):  # exports killed mid-way (we hold the lock)
        shutil.rmtree(junk, ignore_errors=True)
    leftover = out.with_name(f".{out.name}.keep")
    if leftover.exists():  # a build was interrupted during its re-export: recover what still applies
        if (out / FILENAME).exists():
            _restore(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    request = export_request(cfg)
    why = _why_stale(out, request, cfg.force)
    if why is None:
        m = read_manifest(out)
        return StageRow(
            "export",
            "reused",
            time.perf_counter() - t0,
            _graph_sizes(out, m) + " (unchanged, sha256 checked)",
        )
    log(f"exporting to {out} ({why}) ...")
    keep = _stash(out)
    opts = ExportOptions(
        out=out,
        model=cfg.model,
        ckpt=cfg.ckpt,
        random_weights=cfg.random_weights,
        weights_seed=cfg.weights_seed,
        flavor=cfg.flavor,
        num_classes=cfg.num_classes,
        image_size=cfg.image_size,
        vae=cfg.vae,
        batch=cfg.batch,
        precision=cfg.precision,
        opset=cfg.opset or DEFAULT_OPSET,
        check=True,
        force=True,
    )
    export(opts, log=log)
    kept = _restore(keep, out) if keep else 0

    def record(m: dict) -> None:
        m["build"] = {"request": request}

    m = update_manifest(out, record)
    extra = f"; {kept} engine(s) kept" if kept else ""
    return StageRow("export", "exported", time.perf_counter() - t0, f"{_graph_sizes(out, m)} ({why}{extra})")


def _graph_sizes(out: Path, m: dict) -> str:
    parts = []
    for g in m["graphs"].values():
        if g:
            total = g["bytes"] + sum(e["bytes"] for e in g["external_data"])
            parts.append(f"{g['file']} {total / 1e6:.1f} MB")
    return ", ".join(parts)


# ------------------------------------------------------------------------------ the whole build


def build(cfg: BuildConfig, log: Callable[[str], None] = print) -> tuple[list[StageRow], bool, Path]:
    """Run the build; returns (summary rows, verify passed, folder)."""
    from dit_export.engine.lock import BuildLock
    from dit_export.engine.plans import update_manifest

    if cfg.batch < 1:
        raise UserError(f"--batch must be ≥ 1, got {cfg.batch}")
    if cfg.verify_steps < 1:
        raise UserError(f"--verify-steps must be ≥ 1, got {cfg.verify_steps}")
    kind, line = choose_backend(cfg.backend)
    log(line)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    rows: list[StageRow] = []
    passed = True
    with BuildLock(out):
        rows.append(ensure_export(cfg, out, log))
        if kind == TENSORRT:
            rows += _engines(cfg, out, log)
        else:
            rows.append(StageRow("engines", "none", None, "onnxruntime runs the ONNX graphs directly"))
        if cfg.verify:
            from dit_export.verify.run import format_table, summary_line, verify

            backend = "trt" if kind == TENSORRT else "ort"
            t0 = time.perf_counter()
            report = verify(out, backend=backend, seeds=cfg.verify_seeds, steps=cfg.verify_steps)
            passed = report.passed
            log(format_table(report))
            w = report.worst("final latents")
            detail = f"{backend} vs torch fp32, seeds {' '.join(map(str, cfg.verify_seeds))}, {cfg.verify_steps} steps"
            if not passed:
                detail += ": " + summary_line(report).removeprefix("verify ")
            elif w is not None:
                detail += f": final latents rel-L2 {w.value:.1e} (≤ {w.limit:g})"
            rows.append(
                StageRow("verify", "passed" if passed else "FAILED", time.perf_counter() - t0, detail)
            )

            def record(m: dict) -> None:
                m.setdefault("build", {})["verify"] = report.to_dict()

            update_manifest(out, record)
        else:
            rows.append(StageRow("verify", "skipped", None, "--no-verify"))
    return rows, passed, out


def _engines(cfg: BuildConfig, out: Path, log: Callable[[str], None]) -> list[StageRow]:
    from dit_export.engine.plans import Target, build_plans
    from dit_export.engine.trt_api import BuildOptions

    target = Target.current()
    opts = BuildOptions(workspace_bytes=int(cfg.workspace_gib * 2**30), optimization_level=cfg.opt_level)
    rows = []
    for r in build_plans(out, target, opts, log=log):
        rows.append(
            StageRow(
                f"engine {r.graph}",
                r.status,
                r.seconds if r.status == "built" else 0.0,
                f"{r.file} {r.bytes / 1e6:.1f} MB ({r.why}; {target.describe()})",
            )
        )
    return rows


def format_summary(rows: list[StageRow], out: Path) -> str:
    w = max(len(r.stage) for r in rows)
    lines = [f"{'stage':<{w}}  {'result':<8} {'time':>8}  detail"]
    for r in rows:
        t = "" if r.seconds is None else f"{r.seconds:.1f} s"
        lines.append(f"{r.stage:<{w}}  {r.result:<8} {t:>8}  {r.detail}")
    lines.append(f"folder: {out}")
    return "\n".join(lines)
