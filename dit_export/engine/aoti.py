"""AOTInductor packages of the step and VAE modules, for the C++ runtime's CPU backend.

The C++ library (`cpp/`) runs on machines without TensorRT through LibTorch: it loads
`aoti/dit_step.pt2` and `aoti/vae_decoder.pt2` with `torch::inductor::AOTIModelPackageLoader`
(and `aoti/dit_step_full.pt2` + `aoti/dit_step_forecast.pt2`, `CachedSamplerStep`, when the
export has the forecast cache's graphs).
Both are compiled here from the very modules the ONNX graphs were traced from (`SamplerStep(model,
guided=True)` and `VAEDecode(vae)`, rebuilt from the weights the export records), with
`torch.export` + `torch._inductor.aoti_compile_and_package`. Each package has its own record
beside it (`aoti/dit_step.pt2.json`: file, sha256, bytes, I/O, the ONNX graph it stands for,
torch version, CPU ISA; see `engine.records`); the export's manifest is not touched.

A package holds machine code for the CPU it was compiled on (inductor picks the host's vector
ISA, recorded as `cpu_isa`) and runs only with the same torch release's LibTorch: compile it on
(or for) the machine that runs it. Always fp32: an fp16 export gets fp32 packages.

    python -m dit_export aoti ENGINES_DIR        # adds aoti/dit_step.pt2, aoti/vae_decoder.pt2 (+ the cache's)
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dit_export.backends import env_threads
from dit_export.engine.records import (
    GraphSource,
    file_fields,
    file_problem,
    graph_names,
    graph_source,
    precision,
    read_export,
    read_record,
    records_in,
    verify_export,
    write_record,
)
from dit_export.errors import UserError
from dit_export.export.feeds import example_feeds, for_inputs
from dit_export.export.precision import check_backend
from dit_export.fileio import atomic_path, ensure_writable_dir
from dit_export.lazy import optional_import
from dit_export.models.spec import ModelSpec
from dit_export.sampling.cache import CACHE_GRAPHS, CACHE_OUTPUT, FORECAST_GRAPH, FULL_GRAPH, cache_plan

SCHEMA = "dit_export.aoti/2"
AOTI_DIR = "aoti"
# rel-L2 between a package and its ONNX graph on the same inputs (ORT CPU): both are traced from
# the same module, so fp32 agrees to rounding; an fp16 graph only to its own precision. Larger
# means the package was compiled from different code (e.g. a changed step module): refuse it.
AGREEMENT = {"fp32": 1e-4, "fp16": 5e-2}
# the step, the VAE, and the forecast cache's two step graphs (issue 21) where the export has them
AOTI_GRAPHS = ("dit_step", "vae_decoder", FULL_GRAPH, FORECAST_GRAPH)
SUFFIX = ".pt2"
# (manifest, folder, want_vae) -> (DiT in fp32 eval mode, VAEDecode or None): the modules the export traced
LoadModules = Callable[[Any, Path, bool], tuple[Any, Any]]


def package_name(graph: str) -> str:
    return f"{graph}{SUFFIX}"


def package_path(folder: Path, graph: str) -> Path:
    """`<folder>/aoti/<graph>.pt2` (its record: the same + ".json")."""
    return Path(folder) / AOTI_DIR / package_name(graph)


def read_packages(folder: Path) -> dict[str, dict]:
    """{graph: record} of every recorded package in the folder."""
    return {rec.get("graph", p.stem): rec for p, rec in records_in(folder, AOTI_DIR, SUFFIX).items()}


def find_package(folder: Path, manifest: Any, graph: str, check_hash: bool = True) -> tuple[Path, dict]:
    """The package of `graph` and its record, checked against the export's graph and its own hash."""
    folder = Path(folder)
    path = package_path(folder, graph)
    rec = read_record(path)
    how = f"python -m dit_export aoti {folder}"
    if rec is None:
        raise UserError(f"{folder}: no AOTInductor package for {graph}; compile them with: {how}")
    source = graph_source(manifest, graph)
    if rec.get("schema") != SCHEMA:
        raise UserError(
            f"{path.name}: record schema {rec.get('schema')!r} is not {SCHEMA!r}; recompile: {how}"
        )
    if source is None or rec.get("onnx_sha256") != source.sha256:
        raise UserError(
            f"{path.name} was compiled from another {graph} graph than this export's; recompile: {how}"
        )
    why = file_problem(folder, path, rec, check_hash)
    if why:
        raise UserError(f"{folder}: {why}; recompile: {how}")
    return path, rec


def torch_version() -> str:
    """The installed torch's version string, without importing torch."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


COMPILER_LOGGERS = ("torch._inductor", "torch.export", "torch._dynamo")


def _example_inputs(source: GraphSource) -> tuple:
    """Zero tensors of the graph's static input shapes and dtypes (torch.export traces on them)."""
    torch = optional_import("torch", "compiling AOTInductor packages")
    dtypes = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}  # fp16: the cache
    args = []
    for t in source.input_specs:
        if t["dtype"] not in dtypes:
            raise UserError(
                f"{source.name} input {t['name']} is {t['dtype']}; AOTI packages take float32/int64 (and an fp16 cache) only"
            )
        value = torch.ones if t["name"] == "guidance" else torch.zeros
        args.append(value(tuple(t["shape"]), dtype=dtypes[t["dtype"]]))
    return tuple(args)


def cpu_isa() -> str:
    """The vector ISA inductor compiles CPU kernels for on this machine (e.g. avx512, avx2)."""
    cpu_vec_isa = optional_import("torch._inductor.cpu_vec_isa", "compiling AOTInductor packages")
    return str(cpu_vec_isa.pick_vec_isa()) or "scalar"


def _check_inputs(manifest: Any, graph: str, seed: int = 0) -> list[dict]:
    """Realistic inputs for the agreement check: a DDPM and a DDIM row, cfg 4 (step); latents (VAE)."""
    common = dict(
        batch=manifest.batch,
        channels=manifest.latent_channels,
        size=manifest.latent_size,
        num_classes=manifest.num_classes,
        seed=seed,
    )
    if graph == "vae_decoder":
        feeds = example_feeds(graph, **common)
        return [{"latent": feeds["latent"] / np.float32(manifest.vae.scaling_factor)}]
    cached: dict = {}
    cases = []
    for sampler, tables in manifest.schedule.tables.items():
        table = tables[min(tables)]
        k = len(table.timesteps) // 2
        t, coef = int(table.timesteps[k]), table.coefs[k]
        if graph in CACHE_GRAPHS:  # a cache row of the highest order, at a step of this graph's kind
            shape = manifest.cache.shape
            plan = cache_plan(len(table.timesteps), 3, int(shape[2]) - 1, int(shape[2]))
            rows = [j for j in range(plan.steps) if bool(plan.full[j]) == (graph == FULL_GRAPH)]
            cached = dict(cache_shape=shape, cache_coef=plan.coefs[rows[-1] if rows else 0])
        cases.append(example_feeds(graph, **common, t=t, coef=coef, sampler=sampler, state=True, **cached))
    return cases


def check_agreement(folder: Path, manifest: Any, graph: str, package: Path) -> float:
    """Worst rel-L2 between the package and the ONNX graph (onnxruntime CPU) on realistic inputs.

    Raises a UserError when it exceeds AGREEMENT: then the package does not compute what the
    export's graph computes (the Python modules changed since the export), and would sample
    different images than every other backend.
    """
    ort = optional_import("onnxruntime")
    torch = optional_import("torch", "compiling AOTInductor packages")
    inductor = optional_import("torch._inductor", "compiling AOTInductor packages")
    source = graph_source(manifest, graph)
    assert source is not None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = env_threads()
    sess = ort.InferenceSession(str(Path(folder) / source.file), so, providers=["CPUExecutionProvider"])
    with _quiet():
        runner = inductor.aoti_load_package(str(package))
    worst = 0.0
    limit = AGREEMENT.get(precision(manifest), AGREEMENT["fp16"])
    # dit_step: x_next first, then the solver state; the cache's full step also its refreshed cache
    outs = [o.name for o in sess.get_outputs()]
    checked = [0] + ([outs.index(CACHE_OUTPUT)] if CACHE_OUTPUT in outs else [])
    for feed in _check_inputs(manifest, graph):
        feed = for_inputs(feed, sess.get_inputs())  # an fp16 export's cache: float16
        wants = sess.run(None, feed)
        with torch.no_grad():
            gots = runner(*[torch.from_numpy(feed[t["name"]]) for t in source.input_specs])
        gots = gots if isinstance(gots, (list, tuple)) else [gots]
        for i in checked:
            got, want = gots[i].numpy().astype(np.float64), wants[i].astype(np.float64)
            if not np.isfinite(got).all():
                raise UserError(
                    f"{package.name} gives NaN/Inf where {source.file} does not: recompile it from the "
                    "code that made this export (or re-export)"
                )
            rel = float(np.linalg.norm(got - want)) / max(float(np.linalg.norm(want)), 1e-30)
            worst = max(worst, rel)
    if worst > limit:
        raise UserError(
            f"{package.name} disagrees with {source.file} (rel-L2 {worst:.2e} > {limit:g}): the modules it "
            "was compiled from are not the ones this folder was exported from; re-export, then compile again"
        )
    return worst


def _quiet():
    from dit_export.export.graphs import quiet  # imports torch: only when compiling

    return quiet(COMPILER_LOGGERS)


def compile_package(module, args: tuple, path: Path) -> None:
    """torch.export the module on `args` and AOT-compile it into one .pt2 file at `path`."""
    torch = optional_import("torch", "compiling AOTInductor packages")
    inductor = optional_import("torch._inductor", "compiling AOTInductor packages")
    module = module.eval()
    with _quiet(), torch.no_grad():
        try:
            program = torch.export.export(module, args, strict=False)
            inductor.aoti_compile_and_package(program, package_path=str(path))
        except Exception as e:  # inductor raises many types (compiler errors, lowering errors)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"AOTInductor could not compile {path.name}: {first[:300]}") from None


def reference_modules(manifest: Any, folder: Path, want_vae: bool = True) -> tuple[Any, Any]:
    """(DiT, VAEDecode | None) in fp32 eval mode, from the ModelSpec the export recorded."""
    from dit_export.models.vae import VAEDecode  # imports torch: only when compiling

    spec = ModelSpec.from_dict(manifest.model.spec)
    model, _ = spec.load_dit()
    vae = spec.load_vae() if want_vae else None
    decode = VAEDecode(vae).eval() if vae is not None else None
    return model.eval().requires_grad_(False), decode


def _modules(manifest: Any, folder: Path, graphs: tuple[str, ...], load_modules: LoadModules) -> dict:
    """{graph: () -> module}: the step and VAE modules the export traced, rebuilt from its weights."""
    from dit_export.sampling.step import CachedSamplerStep, SamplerStep  # imports torch: only when compiling

    model, decode = load_modules(manifest, folder, "vae_decoder" in graphs)
    model.set_fused_attention(False)  # the attention the ONNX graph was traced with
    step = graph_source(manifest, "dit_step")
    stateful = step is not None and len(step.output_specs) > 1  # the solver-state I/O (issue 11)
    modules = {
        "dit_step": lambda: SamplerStep(model, guided=True, with_state=stateful),
        FULL_GRAPH: lambda: CachedSamplerStep(model, "full"),  # the forecast cache (issue 21)
        FORECAST_GRAPH: lambda: CachedSamplerStep(model, "forecast"),
    }
    if decode is not None:
        decode.set_fused_attention(True)
        modules["vae_decoder"] = lambda: decode
    return modules


def _graphs_to_compile(folder: Path, manifest: Any, graphs: tuple[str, ...] | None) -> tuple[str, ...]:
    have = graph_names(manifest)
    if graphs is None:
        return tuple(g for g in AOTI_GRAPHS if g in have)
    for g in graphs:
        if g not in AOTI_GRAPHS:
            raise UserError(f"no AOTI package for graph {g!r}; choose from {', '.join(AOTI_GRAPHS)}")
        if g not in have:
            raise UserError(f"{folder}: the export has no {g} graph (exported with --vae none?)")
    return tuple(graphs)


def compile_one(folder: Path, manifest: Any, graph: str, module, isa: str) -> dict:
    """Compile, check against the ONNX graph, then write the package and its record; returns the record."""
    source = graph_source(manifest, graph)
    assert source is not None
    path = package_path(folder, graph)
    ensure_writable_dir(path.parent)
    t0 = time.perf_counter()
    with atomic_path(path) as tmp:
        tmp.unlink()  # the packager writes the file itself and wants a .pt2 suffix
        staged = tmp.with_name(tmp.name + SUFFIX)
        try:
            compile_package(module, _example_inputs(source), staged)
            seconds = time.perf_counter() - t0
            agreement = check_agreement(folder, manifest, graph, staged)
            staged.replace(tmp)
        finally:
            staged.unlink(missing_ok=True)
    record = {
        "schema": SCHEMA,
        "graph": graph,
        **file_fields(folder, path),
        "onnx_file": source.file,
        "onnx_sha256": source.sha256,
        "inputs": list(source.input_specs),
        "outputs": list(source.output_specs),
        "torch": torch_version(),
        "device": "cpu",
        "precision": "fp32",
        "cpu_isa": isa,
        "compile_seconds": round(seconds, 1),
        "onnx_rel_l2": float(f"{agreement:.3g}"),
    }
    write_record(path, record)
    return record


def add_aoti_packages(
    engines_dir: str | Path,
    graphs: tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
    *,
    load_modules: LoadModules = reference_modules,
) -> dict[str, dict]:
    """Compile `aoti/dit_step.pt2` (and `aoti/vae_decoder.pt2` when the export has a VAE) into an
    exported folder, each with its record; returns {graph: record}.

    `load_modules(manifest, folder, want_vae)` rebuilds the modules the export traced (default:
    from the export's recorded ModelSpec). Each package is checked against its ONNX
    graph and written atomically, then its record: an interrupted run leaves no half-written
    file (at worst a new package beside its old record, which the hash check refuses).
    """
    folder = Path(engines_dir)
    manifest = read_export(folder)
    check_backend(str(manifest.precision), "cpp")  # int8/fp8: AOTI compiles fp32 modules (issue 22)
    verify_export(folder, manifest)
    graphs = _graphs_to_compile(folder, manifest, graphs)
    modules = _modules(manifest, folder, graphs, load_modules)
    isa = cpu_isa()
    records = {}
    for g in graphs:
        log(f"compiling {package_name(g)} with AOTInductor (CPU, {isa}) ...")
        rec = records[g] = compile_one(folder, manifest, g, modules[g](), isa)
        log(
            f"  {rec['file']}: {rec['bytes'] / 2**20:.1f} MiB in {rec['compile_seconds']:.1f} s; "
            f"rel-L2 vs {rec['onnx_file']} {rec['onnx_rel_l2']:.1e}"
        )
    return records
