"""`inspect DIR`: the static facts of every graph in an exported folder, and whether they hold.

`inspect FILE.onnx` reports one graph file on its own (no manifest, no hashes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dit_export.errors import UserError
from dit_export.export import quant_report
from dit_export.export.analysis import Check, GraphReport, analyze
from dit_export.export.manifest import GraphSpec, Manifest
from dit_export.export.manifest.rules import no_cache_message
from dit_export.export.precision import POLICY, QUANTIZED
from dit_export.export.quantize import graph_precision
from dit_export.export.schedule_tables import FolderSchedules
from dit_export.sampling.cache import DEFAULT_ORDER


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _flops(n: float) -> str:
    return f"{n / 1e9:.2f} GFLOP"


def _shape(t) -> str:
    return "×".join(str(d) for d in t.shape) if t.shape else "scalar"


def inspect_folder(folder: Path, verify: bool = True, out: Callable[[str], None] = print) -> bool:
    """Print the report; True when the manifest, the hashes and every static check are fine."""
    folder = Path(folder)
    if folder.is_file():
        return inspect_file(folder, out)
    m = Manifest.read(folder, check_graphs=False)  # a graph whose I/O disagrees is reported below
    ok = True
    cfg = m.model.config
    out(
        f"{folder}: {m.model.name} ({m.model.flavor}, depth {cfg['depth']}, hidden {cfg['hidden_size']}, "
        f"patch {cfg['patch_size']}), image {m.image_size} (latent {m.latent_channels}×{m.latent_size}²), "
        f"batch {m.batch}, {m.precision}, opset {m.opset}, schema {m.schema}"
    )
    out(f"  weights: {m.model.source}")
    out(f"  {cache_line(m)}")
    try:  # the samplers and stored tables both runtimes read (manifest + `schedules --add` sidecar)
        out("  samplers (the C++ runtime samples stored step counts; `schedules --add` stores more):")
        for line in FolderSchedules.of(folder, m).describe():
            out(f"    {line}")
    except UserError as e:
        out(f"  FAIL schedules: {e}")
        ok = False
    if verify:
        try:
            m.verify_hashes()
            out("  files: sha256 of every graph and external-data file matches the manifest")
        except UserError as e:
            out(f"  FAIL files: {e}")
            ok = False
    if m.precision == "fp16":
        pol = m.precision_policy or POLICY.describe()
        out(
            f"  precision policy {pol['name']}: fp16 modules {', '.join(pol['dit_fp16_modules'])}; fp32 islands:"
        )
        for isl in pol["fp32_islands"]:
            out(f"    - {isl['region']}: {isl['why']}")
    if m.precision in QUANTIZED:
        quant_report.print_policy(m.precision_policy, out)
    for name, g in m.graphs.items():
        if g is None:
            out(f"\n{name}: not exported")
            continue
        rep = analyze(m.path(g.file), graph_precision(name, m.precision))  # int8/fp8: the VAE stays fp32
        rep.checks.append(_io_check(g, rep))  # a runtime binds buffers from the manifest's I/O
        ok &= _print_graph(name, g, rep, m.precision, out, m.path(g.file))
    checks = m.checks
    if checks.get("run"):
        bad = [r for r in checks["rows"] if not r.get("passed", r.get("ok"))]
        out(
            f"\nexport-time ONNX Runtime check: {len(checks['rows'])} rows, {'all passed' if not bad else f'{len(bad)} FAILED'}"
        )
        ok &= not bad
    else:
        out("\nexport-time ONNX Runtime check: skipped (--no-check)")
    out("\nresult: " + ("all checks passed" if ok else "some checks FAILED"))
    return ok


def cache_line(m: Manifest) -> str:
    """The forecast step cache in one line: orders, layout and memory per image and per batch."""
    c = m.cache
    if c is None:
        return f"forecast cache: not exported ({no_cache_message(order=DEFAULT_ORDER).split(': ', 1)[1]})"
    per, batch = c.bytes_per_image, c.bytes_for(m.batch)
    dims = "×".join(map(str, c.shape))
    return (
        f"forecast cache: Taylor orders ≤ {c.max_order} ({c.slots} slots), {c.dtype} [{dims}] "
        f"(depth, attn/mlp, slots, 2N rows, tokens, hidden); {_gb(per)} per image, {_gb(batch)} for "
        f"batch {m.batch} (one cache tensor; the loop holds two: {_gb(2 * batch)})"
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else _mb(n)


def inspect_file(path: Path, out: Callable[[str], None] = print) -> bool:
    """One ONNX file on its own (one-line UserError when it is not ONNX)."""
    rep = analyze(path)
    ok = _print_graph(Path(path).stem, None, rep, None, out)
    out("\nresult: " + ("all checks passed" if ok else "some checks FAILED"))
    return ok


def _print_graph(name: str, g: GraphSpec | None, rep: GraphReport, precision, out, path=None) -> bool:
    ext = f" + {', '.join(e.file for e in g.external_data)}" if g is not None and g.external_data else ""
    out(
        f"\n{name}: {g.file.file if g is not None else rep.file}{ext}, {rep.num_nodes} nodes, opset {rep.opset}"
    )
    out("  inputs:  " + "; ".join(f"{t.name} {t.dtype} [{_shape(t)}]" for t in rep.inputs))
    out("  outputs: " + "; ".join(f"{t.name} {t.dtype} [{_shape(t)}]" for t in rep.outputs))
    out("  ops:     " + ", ".join(f"{k} {v}" for k, v in rep.op_counts.items()))
    out("  tensors: " + ", ".join(f"{k} {v}" for k, v in rep.tensor_dtypes.items()))
    total = sum(rep.param_bytes.values())
    out(f"  params:  {_mb(total)} (" + ", ".join(f"{k} {_mb(v)}" for k, v in rep.param_bytes.items()) + ")")
    flops = sum(rep.gemm_flops.values())
    out(f"  GEMM/conv per call: {_flops(flops)}, {100 * rep.fp16_flop_share:.2f} % in fp16")
    if rep.quant_islands is not None:  # int8/fp8 QDQ graphs (issue 22)
        quant_report.print_graph(rep, precision, out, path)
    if rep.fp32_islands is not None:
        out("  fp32 islands (compute nodes by region):")
        for region, entry in rep.fp32_islands.items():
            ops = ", ".join(f"{k} {v}" for k, v in entry["ops"].items())
            out(f"    - {region}: {entry['nodes']} nodes ({ops})")
    elif precision == "fp32":
        out("  fp32 islands: n/a (fp32 graph)")
    out("  checks:")
    for ch in rep.checks:
        out(f"    {'ok  ' if ch.ok else 'FAIL'} {ch.name}: {ch.detail}")
    return rep.ok


def _io_check(g: GraphSpec, rep: GraphReport) -> Check:
    want = [(t.name, list(t.shape), t.dtype) for t in g.inputs + g.outputs]
    have = [(t.name, list(t.shape), t.dtype) for t in rep.inputs + rep.outputs]
    if want == have:
        return Check("manifest I/O", True, "graph I/O names, shapes and dtypes match the manifest")
    diff = next(((w, h) for w, h in zip(want, have) if w != h), (want, have))
    return Check("manifest I/O", False, f"manifest says {diff[0]}, graph has {diff[1]}")
