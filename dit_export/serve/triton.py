"""A Triton Inference Server model repository for the sampler (`python -m dit_export triton-repo`).

    REPO/
      dit_sampler/                 the Python-backend model: the whole sampler loop in-process
        config.pbtxt               backend "python", dynamic batching, KIND_GPU (plans) | KIND_CPU
        1/model.py                 a copy of dit_export/serve/triton_model.py
        1/engines/                 the engines folder (hard links, else copies), unless --reference
      dit_sampler_dit_step/        only with --plan-models: each TensorRT plan as a tensorrt_plan model
        config.pbtxt               platform "tensorrt_plan", cc_model_filenames {"9.0": <plan>}
        1/<plan file>

A sampler is a loop (one step graph per step), not a DAG, so it cannot be a Triton ensemble, and
one Triton call per step would add its ~0.6 ms overhead to every step: the Python-backend model
owns its engines and runs `dit_export.runtime.Sampler` in its own process (one per instance;
`workers` Samplers in it, fed by one row queue that fills each engine run). The sizes are chosen
for the folder and the machine by `serve/sizing.py` unless given.

Configs are `inference.ModelConfig` protobuf messages (tritonclient's `model_config_pb2`, the
schema tritonserver itself parses) written with `google.protobuf.text_format`; `parse_config`
reads one back against the same schema.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from dit_export.errors import UserError
from dit_export.export.manifest import Manifest, dtypes
from dit_export.fileio import atomic_dir
from dit_export.lazy import optional_import
from dit_export.runtime.folder import ExportFolder
from dit_export.sampling import samplers
from dit_export.serve import sizing

MODEL_SOURCE = Path(__file__).with_name("triton_model.py")
DEFAULT_NAME = "dit_sampler"
ENGINES_DIR = "engines"  # inside the version directory
# Copied with the engines folder besides the manifest's graph files (plans/ separately).
EXTRA_FILES = ("build.json",)

# The sampler model's tensors: name → (Triton data type, dims without the batch dim, optional).
SAMPLER_INPUTS = (
    ("class_label", "TYPE_INT64", False, "class id of the image"),
    ("seed", "TYPE_UINT64", False, "Philox noise seed, 0..2**64-1"),
    ("cfg_scale", "TYPE_FP32", True, "guidance scale ≥ 1 (default: parameter default_cfg_scale)"),
    ("steps", "TYPE_INT32", True, "sampling steps (default: parameter default_steps)"),
    ("sampler", "TYPE_STRING", True, f"{' | '.join(samplers.names())} (default: parameter default_sampler)"),
    ("first_index", "TYPE_INT64", True, "image index of the group's first row under its seed (default 0)"),
    ("cache_interval", "TYPE_INT32", True, "forecast step cache: one full step in N (default 1: no caching)"),
    ("cache_order", "TYPE_INT32", True, "Taylor order of the forecast, 0..3 (default 2; N > 1 only)"),
)
OUTPUT_NAME = "image"  # uint8 (H, W, 3) per row
_TRITON_DTYPES = dtypes.to("triton")  # "float16" → "TYPE_FP16", from the one dtype table


def model_config_pb2() -> ModuleType:
    """tritonclient's `model_config_pb2` (the `inference.ModelConfig` schema).

    It ships in `tritonclient.grpc`, whose package __init__ needs grpcio; without grpcio the
    generated module (which needs only protobuf) is loaded from its file.
    """
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except (ImportError, RuntimeError):  # no tritonclient, or no grpcio (tritonclient raises RuntimeError)
        pass
    tc = optional_import("tritonclient", "the Triton model config (triton-repo)")
    path = Path(tc.__file__).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise UserError(
            f"{path} is missing: this tritonclient has no model_config_pb2; pip install tritonclient"
        )
    name = "dit_export_triton_model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod


def config_text(config) -> str:
    """A ModelConfig message as config.pbtxt text."""
    text_format = optional_import("google.protobuf.text_format", "the Triton model config (triton-repo)")
    return text_format.MessageToString(config)


def parse_config(text: str):
    """config.pbtxt text → ModelConfig; a one-line UserError when it does not fit the schema."""
    pb2 = model_config_pb2()
    text_format = optional_import("google.protobuf.text_format", "the Triton model config (triton-repo)")
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"config.pbtxt does not fit Triton's ModelConfig schema: {e}") from None


@dataclass(frozen=True)
class SamplerModel:
    """What the sampler model's config says (everything the repository writer decides)."""

    name: str
    image_size: int
    max_batch: int
    engine_batch: int
    instances: int
    kind: str  # "KIND_GPU" | "KIND_CPU"
    backend: str  # runtime backend inside model.py: "trt" | "ort"
    engines: str  # relative to the version directory, or an absolute path (--reference)
    queue_delay_us: int = 2000  # the row scheduler's fill delay (parameters.fill_delay_us)
    threads: int = 0  # ONNX Runtime intra-op threads per worker (0: the library's default)
    workers: int = 1  # Samplers per instance sharing its row queue
    preferred: tuple[int, ...] = ()  # default: the engine batch and max_batch
    defaults: dict = field(default_factory=lambda: {"cfg_scale": 4.0, "steps": 250, "sampler": "ddpm"})


def sampler_config(m: SamplerModel):
    """The `inference.ModelConfig` of the Python-backend sampler model."""
    pb2 = model_config_pb2()
    c = pb2.ModelConfig(name=m.name, backend="python", max_batch_size=m.max_batch)
    for name, dtype, optional, _ in SAMPLER_INPUTS:
        c.input.add(name=name, data_type=pb2.DataType.Value(dtype), dims=[1], optional=optional)
    c.output.add(name=OUTPUT_NAME, data_type=pb2.TYPE_UINT8, dims=[m.image_size, m.image_size, 3])
    preferred = sorted(set(m.preferred) or {b for b in (m.engine_batch, m.max_batch) if 0 < b <= m.max_batch})
    c.dynamic_batching.preferred_batch_size.extend(preferred)
    # Triton hands requests over at once: model.py's row scheduler waits (fill_delay_us) for rows to
    # fill an engine run, counted from when the engine is free, not from a request's arrival.
    c.dynamic_batching.max_queue_delay_microseconds = 0
    c.instance_group.add(count=m.instances, kind=pb2.ModelInstanceGroup.Kind.Value(m.kind))
    params = {
        "engines": m.engines,
        "backend": m.backend,
        "engine_batch": str(m.engine_batch),
        "threads": str(m.threads),
        "workers": str(m.workers),
        "fill_delay_us": str(m.queue_delay_us),
        "default_cfg_scale": str(m.defaults["cfg_scale"]),
        "default_steps": str(m.defaults["steps"]),
        "default_sampler": m.defaults["sampler"],
    }
    for k, v in params.items():
        c.parameters[k].string_value = v
    return c


def plan_config(name: str, graph, plans: dict[str, str]):
    """A `tensorrt_plan` model for one graph (static shapes: max_batch_size 0, the full dims)."""
    pb2 = model_config_pb2()
    c = pb2.ModelConfig(name=name, platform="tensorrt_plan", max_batch_size=0)
    for tensors, io in ((graph.inputs, c.input), (graph.outputs, c.output)):
        for t in tensors:
            if t.dtype not in _TRITON_DTYPES:
                raise UserError(f"{graph.name}: tensor {t.name} has dtype {t.dtype}, no Triton type mapped")
            io.add(name=t.name, data_type=pb2.DataType.Value(_TRITON_DTYPES[t.dtype]), dims=list(t.shape))
    c.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.KIND_GPU)
    for cc, file in plans.items():
        c.cc_model_filenames[cc] = file
    return c


@dataclass
class RepoResult:
    out: Path
    model_dir: Path
    config: object  # ModelConfig of the sampler model
    plan_models: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(self.lines)


def choose_runtime(folder: Path, backend: str = "auto") -> tuple[str, str, dict[Path, dict]]:
    """(runtime backend, instance kind, plans) — trt + KIND_GPU when the folder holds recorded plans
    (`auto`: the folder's rule for a runtime on another machine, `runtime.folder.choose_backend`)."""
    export = ExportFolder.of(folder)
    backend, _ = export.choose_backend(backend, allowed=("trt", "ort"), elsewhere=True)
    plans = export.plans
    if backend == "trt" and not plans:
        raise UserError(
            f"{folder} has no TensorRT plans (plans/*.plan with records): build --backend trt first"
        )
    if backend not in ("trt", "ort"):
        raise UserError(f"triton-repo serves with trt or ort, not {backend!r}")
    return backend, ("KIND_GPU" if backend == "trt" else "KIND_CPU"), plans


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_engines(manifest: Manifest, plans: dict[Path, dict], dst: Path) -> int:
    """The files a runtime opens (manifest, graphs + external data, build record, plans + records)
    into dst; hard links on the same file system, else copies. Returns the bytes placed."""
    folder = manifest.folder
    names = ["manifest.json", *(rec.file for rec in manifest.files())]
    names += [n for n in EXTRA_FILES if (folder / n).is_file()]
    for plan in plans:
        rel = plan.relative_to(folder)
        names += [str(rel), str(rel) + ".json"]
    total = 0
    for n in dict.fromkeys(names):
        _link_or_copy(folder / n, dst / n)
        total += (folder / n).stat().st_size
    return total


def write_repository(
    engines: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str = DEFAULT_NAME,
    max_batch: int | None = None,
    instances: int | None = None,
    workers: int | None = None,
    threads: int | None = None,
    backend: str = "auto",
    reference: bool = False,
    plan_models: bool = False,
    queue_delay_us: int | None = None,
    force: bool = False,
) -> RepoResult:
    """Write REPO/<name>/ (config.pbtxt, 1/model.py, 1/engines/) for the engines folder.

    instances, workers, threads, max_batch, queue_delay_us: None = chosen for the folder and this machine
    (`sizing.choose`; the reasons are in the result's lines)."""
    folder = Path(engines).resolve()
    manifest = Manifest.read(folder, check_graphs=False)
    manifest.check_files_exist()
    if not manifest.has_vae:
        raise UserError(f"{folder} has no VAE decoder (exported with --vae none): the server returns images")
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise UserError(f"--name {name!r}: use letters, digits, '_' and '-' (a folder name)")
    for flag, v, least in (
        ("instances", instances, 1),
        ("workers", workers, 1),
        ("threads", threads, 1),
        ("max-batch", max_batch, 1),
        ("queue-delay-us", queue_delay_us, 0),
    ):
        if v is not None and v < least:
            raise UserError(f"--{flag} {v}: at least {least}")
    runtime, kind, plans = choose_runtime(folder, backend)
    if plan_models and not plans:
        raise UserError(f"--plan-models: {folder} has no TensorRT plans")
    sz = sizing.choose(
        manifest, runtime, kind, instances=instances, workers=workers, threads=threads, max_batch=max_batch,
        queue_delay_us=queue_delay_us,
    )  # fmt: skip

    out = Path(out)
    model_dir = out / name
    if model_dir.exists() and not force:
        raise UserError(f"{model_dir} exists; pass --force to replace it")
    max_batch = sz.max_batch
    engines_param = str(folder) if reference else ENGINES_DIR

    spec = SamplerModel(
        name=name,
        image_size=manifest.image_size,
        max_batch=max_batch,
        engine_batch=manifest.batch,
        instances=sz.instances,
        kind=kind,
        backend=runtime,
        engines=engines_param,
        queue_delay_us=sz.queue_delay_us,
        threads=sz.threads,
        workers=sz.workers,
        preferred=sz.preferred,
    )
    config = sampler_config(spec)
    text = config_text(config)
    parse_config(text)  # what tritonserver reads must round-trip through the schema
    lines = [f"{model_dir}: Python-backend sampler, {runtime} on {kind}"]
    # Built under a temporary name, swapped in whole: a failure or Ctrl-C leaves no half model
    # (and, with --force, the old one in place).
    with atomic_dir(model_dir) as tmp:
        version = tmp / "1"
        version.mkdir()
        if reference:
            lines.append(f"  engines referenced at {folder} (not copied: the server must see this path)")
        else:
            size = copy_engines(manifest, plans if runtime == "trt" else {}, version / ENGINES_DIR)
            lines.append(
                f"  engines placed in {model_dir / '1' / ENGINES_DIR} ({size / 2**20:.1f} MiB, "
                "hard links where possible)"
            )
        shutil.copy2(MODEL_SOURCE, version / "model.py")
        (tmp / "config.pbtxt").write_text(text)
    lines += [f"  {line}" for line in sz.lines]
    lines.append(
        f"  inputs {', '.join(n for n, *_ in SAMPLER_INPUTS)} → {OUTPUT_NAME} uint8 "
        f"{manifest.image_size}×{manifest.image_size}×3; max batch {max_batch}, engine batch {manifest.batch}"
    )
    result = RepoResult(out, model_dir, config, lines=lines)
    if plan_models:
        result.plan_models = _write_plan_models(out, name, manifest, plans, force)
        lines += [f"  tensorrt_plan model {p}" for p in result.plan_models]
    return result


def _write_plan_models(
    out: Path, name: str, manifest: Manifest, plans: dict[Path, dict], force: bool
) -> list[Path]:
    by_graph: dict[str, dict[str, Path]] = {}
    for path, rec in plans.items():
        by_graph.setdefault(rec["graph"], {})[str(rec["compute_capability"])] = path
    written = []
    for graph, files in sorted(by_graph.items()):
        d = out / f"{name}_{graph}"
        if d.exists() and not force:
            raise UserError(f"{d} exists; pass --force to replace it")
        cfg = plan_config(d.name, manifest.graph(graph), {cc: p.name for cc, p in files.items()})
        text = config_text(cfg)
        parse_config(text)
        with atomic_dir(d) as tmp:  # whole or not at all, as the sampler model
            for path in files.values():
                _link_or_copy(path, tmp / "1" / path.name)
            (tmp / "config.pbtxt").write_text(text)
        written.append(d)
    return written
