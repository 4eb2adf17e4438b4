"""AOTInductor packages of the step and VAE modules, for the C++ runtime's CPU backend.

The C++ library (`cpp/`) runs on machines without TensorRT through LibTorch: it loads
`dit_step.pt2` and `vae_decoder.pt2` with `torch::inductor::AOTIModelPackageLoader`. Both are
compiled here from the very modules the ONNX graphs were traced from (`SamplerStep(model,
guided=True)` and `VAEDecode(vae)`, rebuilt from the weights the manifest records), with
`torch.export` + `torch._inductor.aoti_compile_and_package`, and recorded in the manifest under
`"aoti"` (file, sha256, bytes, I/O, the ONNX graph they stand for, torch version, CPU ISA).

A package holds machine code for the CPU it was compiled on (inductor picks the host's vector
ISA, recorded as `cpu_isa`) and runs only with the same torch release's LibTorch: compile it on
(or for) the machine that runs it. Always fp32: an fp16 export gets fp32 packages.

    python -m dit_export.export.aoti ENGINES_DIR        # adds dit_step.pt2, vae_decoder.pt2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dit_export.errors import UserError

SCHEMA = "dit_export.aoti/1"
# rel-L2 between a package and its ONNX graph on the same inputs (ORT CPU): both are traced from
# the same module, so fp32 agrees to rounding; an fp16 graph only to its own precision. Larger
# means the package was compiled from different code (e.g. a changed step module): refuse it.
AGREEMENT = {"fp32": 1e-4, "fp16": 5e-2}
AOTI_GRAPHS = ("dit_step", "vae_decoder")
SUFFIX = ".pt2"
KEY = "aoti"


def package_name(graph: str) -> str:
    return f"{graph}{SUFFIX}"


COMPILER_LOGGERS = ("torch._inductor", "torch.export", "torch._dynamo")


def _example_inputs(manifest: dict, graph: str) -> tuple:
    """Zero tensors of the manifest's static input shapes and dtypes (torch.export traces on them)."""
    import torch

    dtypes = {"float32": torch.float32, "int64": torch.int64}
    args = []
    for t in manifest["graphs"][graph]["inputs"]:
        if t["dtype"] not in dtypes:
            raise UserError(
                f"{graph} input {t['name']} is {t['dtype']}; AOTI packages take float32/int64 only"
            )
        value = torch.ones if t["name"] == "guidance" else torch.zeros
        args.append(value(tuple(t["shape"]), dtype=dtypes[t["dtype"]]))
    return tuple(args)


def cpu_isa() -> str:
    """The vector ISA inductor compiles CPU kernels for on this machine (e.g. avx512, avx2)."""
    from torch._inductor import cpu_vec_isa

    return str(cpu_vec_isa.pick_vec_isa()) or "scalar"


def _check_inputs(manifest: dict, graph: str, seed: int = 0) -> list[dict]:
    """Realistic inputs for the agreement check: a DDPM and a DDIM row, cfg 4 (step); latents (VAE)."""
    rng = np.random.default_rng(seed)
    ins = manifest["graphs"][graph]["inputs"]

    def value(t: dict, row: list[float] | None, tstep: int) -> np.ndarray:
        shape, name = tuple(t["shape"]), t["name"]
        if name == "t":
            return np.full(shape, tstep, dtype=np.int64)
        if name == "y":
            return rng.integers(0, manifest["model"]["config"]["num_classes"], shape).astype(np.int64)
        if name == "guidance":
            return np.full(shape, 4.0, dtype=np.float32)
        if name == "coef":
            return np.asarray(row, dtype=np.float32)
        scale = 1.0 / manifest["vae"]["scaling_factor"] if graph == "vae_decoder" else 1.0
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    if graph != "dit_step":
        return [{t["name"]: value(t, None, 0) for t in ins}]
    cases = []
    for tables in manifest["schedule"]["tables"].values():
        steps = min(tables, key=int)
        entry = tables[steps]
        k = len(entry["timesteps"]) // 2
        cases.append({t["name"]: value(t, entry["coefs"][k], entry["timesteps"][k]) for t in ins})
    return cases


def check_agreement(folder: Path, manifest: dict, graph: str, package: Path) -> float:
    """Worst rel-L2 between the package and the ONNX graph (onnxruntime CPU) on realistic inputs.

    Raises a UserError when it exceeds AGREEMENT: then the package does not compute what the
    export's graph computes (the Python modules changed since the export), and would sample
    different images than every other backend.
    """
    import onnxruntime as ort
    import torch
    import torch._inductor

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        str(folder / manifest["graphs"][graph]["file"]), so, providers=["CPUExecutionProvider"]
    )
    from dit_export.export.graphs import quiet

    with quiet(COMPILER_LOGGERS):
        runner = torch._inductor.aoti_load_package(str(package))
    worst = 0.0
    limit = AGREEMENT.get(manifest["precision"], AGREEMENT["fp16"])
    for feed in _check_inputs(manifest, graph):
        (want,) = sess.run(None, feed)
        with torch.no_grad():
            got = runner(*[torch.from_numpy(feed[t["name"]]) for t in manifest["graphs"][graph]["inputs"]])
        got = (got[0] if isinstance(got, (list, tuple)) else got).numpy().astype(np.float64)
        want = want.astype(np.float64)
        if not np.isfinite(got).all():
            raise UserError(
                f"{package.name} gives NaN/Inf where {graph}.onnx does not: recompile it from the "
                "code that made this export (or re-export)"
            )
        rel = float(np.linalg.norm(got - want)) / max(float(np.linalg.norm(want)), 1e-30)
        worst = max(worst, rel)
    if worst > limit:
        raise UserError(
            f"{package.name} disagrees with {graph}.onnx (rel-L2 {worst:.2e} > {limit:g}): the modules it was "
            "compiled from are not the ones this folder was exported from; re-export, then compile again"
        )
    return worst


def compile_package(module, args: tuple, path: Path) -> None:
    """torch.export the module on `args` and AOT-compile it into one .pt2 file at `path`."""
    import torch
    import torch._inductor

    from dit_export.export.graphs import quiet

    module = module.eval()
    with quiet(COMPILER_LOGGERS), torch.no_grad():
        try:
            program = torch.export.export(module, args, strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        except Exception as e:  # inductor raises many types (compiler errors, lowering errors)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"AOTInductor could not compile {path.name}: {first[:300]}") from None


def add_aoti_packages(
    engines_dir: str | Path,
    graphs: tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Compile `dit_step.pt2` (and `vae_decoder.pt2` when the export has a VAE) into an exported
    folder and record them under the manifest's `"aoti"` key; returns that section.

    Each package is checked against its ONNX graph, written atomically, then the manifest is
    rewritten atomically: an interrupted run leaves no half-written file (at worst a fresh .pt2
    whose manifest record is still the old one, which the C++ runtime refuses by its hash).
    """
    import torch

    from dit_export.export.manifest import FILENAME, file_entry, read_manifest, verify_hashes
    from dit_export.fileio import atomic_path, write_json
    from dit_export.runtime.torch_backend import load_reference
    from dit_export.sampling.step import SamplerStep

    folder = Path(engines_dir)
    manifest = read_manifest(folder)
    verify_hashes(folder, manifest)
    if graphs is None:
        graphs = tuple(g for g in AOTI_GRAPHS if manifest["graphs"].get(g) is not None)
    for g in graphs:
        if g not in AOTI_GRAPHS:
            raise UserError(f"no AOTI package for graph {g!r}; choose from {', '.join(AOTI_GRAPHS)}")
        if manifest["graphs"].get(g) is None:
            raise UserError(f"{folder}: the export has no {g} graph (exported with --vae none?)")
    model, decode = load_reference(manifest, folder, want_vae="vae_decoder" in graphs)
    model.set_fused_attention(False)  # the attention the ONNX graph was traced with
    modules = {"dit_step": lambda: SamplerStep(model, guided=True)}
    if decode is not None:
        decode.set_fused_attention(True)
        modules["vae_decoder"] = lambda: decode

    isa = cpu_isa()
    entries: dict = {}
    for g in graphs:
        name = package_name(g)
        log(f"compiling {name} with AOTInductor (CPU, {isa}) ...")
        t0 = time.perf_counter()
        with atomic_path(folder / name) as tmp:
            tmp.unlink()  # the packager writes the file itself and wants a .pt2 suffix
            staged = tmp.with_name(tmp.name + SUFFIX)
            try:
                compile_package(modules[g](), _example_inputs(manifest, g), staged)
                seconds = time.perf_counter() - t0
                agreement = check_agreement(folder, manifest, g, staged)
                staged.replace(tmp)
            finally:
                staged.unlink(missing_ok=True)
        onnx = manifest["graphs"][g]
        entry = file_entry(folder, name)
        entry.update(
            graph=g,
            onnx_file=onnx["file"],
            onnx_sha256=onnx["sha256"],
            inputs=onnx["inputs"],
            outputs=onnx["outputs"],
            compile_seconds=round(seconds, 1),
            onnx_rel_l2=float(f"{agreement:.3g}"),
        )
        entries[g] = entry
        log(
            f"  {name}: {entry['bytes'] / 2**20:.1f} MiB in {seconds:.1f} s; rel-L2 vs {onnx['file']} {agreement:.1e}"
        )

    # Re-read: another stage (an engine build) may have recorded something meanwhile.
    current = read_manifest(folder)
    have = current.get(KEY)
    section: dict = have if isinstance(have, dict) else {}
    old = section.get("graphs", {}) if isinstance(section.get("graphs"), dict) else {}
    if section.get("torch") != torch.__version__ or section.get("cpu_isa") != isa:
        old = {}  # packages of another torch or CPU cannot share this section's versions
    section = {
        "schema": SCHEMA,
        "torch": torch.__version__,
        "device": "cpu",
        "precision": "fp32",
        "cpu_isa": isa,
        "graphs": {**{k: v for k, v in old.items() if k in AOTI_GRAPHS}, **entries},
    }
    current[KEY] = section
    write_json(folder / FILENAME, current)
    return section


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("engines", help="an exported folder (python -m dit_export export --out DIR)")
    p.add_argument("--graphs", nargs="+", choices=AOTI_GRAPHS, default=None, help="default: all it has")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    section = add_aoti_packages(args.engines, tuple(args.graphs) if args.graphs else None)
    names = ", ".join(e["file"] for e in section["graphs"].values())
    print(f"wrote {names} into {args.engines} in {time.perf_counter() - t0:.1f} s")
    return 0


DESCRIPTION = (
    "Compile AOTInductor packages (dit_step.pt2, vae_decoder.pt2) into an exported folder for the "
    "C++ runtime's CPU backend (cpp/), check them against the ONNX graphs, and record them in its "
    "manifest.json."
)


def register(sub) -> None:
    """`python -m dit_export aoti DIR` when the CLI lists this module in COMMANDS."""
    p = sub.add_parser(
        "aoti", help="compile the C++ runtime's CPU packages (AOTInductor)", description=DESCRIPTION
    )
    _add_args(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dit_export.export.aoti", description=DESCRIPTION)
    _add_args(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
