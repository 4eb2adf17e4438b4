"""Which fp16 policy? Activation ranges along sampling chains, then error vs fp16 FLOP share per method.

Not a test. Runs on CPU (ONNX Runtime) in a few minutes for DiT-S/2:

    python benchmarks/export_precision.py [--model S/2] [--ckpt PATH] [--stress 5]

Weights: random (adaLN-Zero layers perturbed, as every random-weight test) — NOT trained weights;
`--stress K` adds a second regime with those layers K× larger (stronger modulation and gates,
closer to what a trained DiT's adaLN produces). With `--ckpt` the real weights are measured too.

Methods compared (each on the `dit` and `dit_step` graphs, against the PyTorch fp32 model):
- export-time policy (dit_export.export.precision.POLICY): attention + MLP + adaLN GEMM fp16;
- export-time, attention + MLP only (adaLN modulation GEMM fp32);
- export-time, whole blocks + final layer fp16 (LayerNorm, modulate, gates, residual adds fp16
  inside each block; the stream is fp32 only between blocks);
- onnxconverter-common float16 (keep_io_types) on the fp32 graph, only the timestep path blocked;
- onnxconverter-common with the policy's fp32 islands as its node block list;
- with `--autocast-python PY` (a SEPARATE venv with nvidia-modelopt[onnx]: it downgrades onnx, never
  install it into the project venv): ModelOpt AutoCast (keep_io_types, opset 18) with calibration
  data (the check inputs: t ∈ {999, 500, 0}, real labels, N(0, 1) latents) and without.
Writes benchmarks/results/export_precision.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.export import analysis, check, graphs, mixed  # noqa: E402
from dit_export.export.precision import POLICY, PrecisionPolicy  # noqa: E402
from dit_export.export.ranges import FP16_MAX, QUANTITIES, measure_ranges  # noqa: E402
from dit_export.models.checkpoints import load_dit, random_dit  # noqa: E402
from dit_export.sampling.schedule import NUM_COEFS  # noqa: E402
from dit_export.sampling.step import SamplerStep  # noqa: E402

FP16_REGIONS = {"attention", "MLP", "adaLN modulation GEMM"}


def make_model(args, stress: float):
    if args.ckpt:
        model, _ = load_dit(args.ckpt, model=args.model)
    else:
        model, _ = random_dit(args.model, 256, seed=0)
    if stress != 1.0:
        with torch.no_grad():
            for lin in model.zero_initialised()[:-1]:  # adaLN outputs (not the final linear)
                lin.weight.mul_(stress)
                lin.bias.mul_(stress)
    return model.eval().requires_grad_(False)


def export_pair(model, folder: Path, batch: int) -> dict[str, Path]:
    cfg = model.config
    n, c, s = batch, cfg.in_channels, cfg.input_size
    f32, i64 = torch.float32, torch.int64
    specs = {
        "dit": (model, (torch.zeros(2 * n, c, s, s), torch.zeros(2 * n, dtype=i64), torch.zeros(2 * n, dtype=i64)),
                ("x", "t", "y"), ("out",)),
        "dit_step": (SamplerStep(model, True), (torch.zeros(n, c, s, s), torch.zeros(n, dtype=i64),
                     torch.zeros(n, dtype=i64), torch.zeros(n, c, s, s), torch.ones(1, dtype=f32),
                     torch.zeros(NUM_COEFS, dtype=f32)), ("x", "t", "y", "noise", "guidance", "coef"), ("x_next",)),
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (mod, a, ins, outs) in specs.items():
        m = graphs.trace(mod, a, ins, outs, 18)
        graphs.cleanup(m)
        paths[name] = graphs.save(m, folder / f"{name}.onnx").path
    return paths


def occ_convert(src: Path, dst: Path, block: str) -> Path:
    """onnxconverter-common float16 with keep_io_types and a node block list."""
    import onnx
    from onnxconverter_common import float16

    from dit_export.export.graphs import SCOPE_KEY

    model = onnx.load(str(src))
    names = []
    for n in model.graph.node:
        scope = next((p.value for p in n.metadata_props if p.key == SCOPE_KEY), "")
        region = POLICY.region_of(scope)
        if block == "timestep" and scope.startswith("t_embedder"):
            names.append(n.name)
        elif block == "policy" and region not in FP16_REGIONS:
            names.append(n.name)
    with warnings.catch_warnings():  # one "truncated to 1e-07" warning per tiny weight
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=names)
    converted = onnx.shape_inference.infer_shapes(converted)
    onnx.save(converted, str(dst))
    return dst


AUTOCAST = """
import sys
import onnx
from modelopt.onnx.autocast import convert_to_mixed_precision
src, dst, calib = sys.argv[1:4]
m = convert_to_mixed_precision(src, low_precision_type="fp16", keep_io_types=True,
                               calibration_data=calib or None, opset=18)
onnx.save(m, dst)
"""


def autocast_convert(python: str, src: Path, dst: Path, calib: Path | None) -> Path:
    """ModelOpt AutoCast in its own interpreter (its onnx/onnxruntime pins differ from ours)."""
    proc = subprocess.run(
        [python, "-c", AUTOCAST, str(src), str(dst), str(calib or "")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"AutoCast failed on {src.name}: {proc.stderr[-2000:]}")
    return dst


def write_calibration(cases: list, folder: Path) -> Path:
    """One .npz per check case (AutoCast's multi-batch calibration format)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(cases):
        np.savez(folder / f"batch{i:02d}.npz", **c.feeds)
    return folder


def evaluate(paths: dict[str, Path], cases: dict[str, list]) -> dict:
    res = {}
    for name, path in paths.items():
        rep = analysis.analyze(path, "fp16")
        rows = check.run_cases(path, cases[name], "fp16")
        res[name] = {
            "fp16_flop_share": rep.fp16_flop_share,
            "casts": rep.op_counts.get("Cast", 0),
            "nodes": rep.num_nodes,
            "static_checks_failed": [c.name for c in rep.checks if not c.ok],
            "max_rel_l2": max(r.value for r in rows),
            "rows": [r.to_dict() for r in rows],
        }
        if name == "dit":
            res[name]["max_guided_rel_l2"] = max(r.value for r in rows if r.stage == "guided_eps")
    return res


def run_regime(args, stress: float, tmp: Path) -> dict:
    label = f"stress{stress:g}"
    t0 = time.perf_counter()
    model = make_model(args, stress)
    ranges = measure_ranges(model, steps=args.steps, batch=args.batch)
    print(
        f"[{label}] ranges in {time.perf_counter() - t0:.0f} s: "
        + ", ".join(f"{k} {v:.3g}" for k, v in ranges["max"].items())
    )
    cases = check.model_cases(model, args.batch)
    fp32_paths = export_pair(model, tmp / label / "fp32", args.batch)
    methods: dict[str, dict] = {}
    variants = {
        "export-time policy (attn + MLP + adaLN GEMM fp16)": POLICY,
        "export-time attn + MLP fp16 (adaLN GEMM fp32)": PrecisionPolicy(
            "attn-mlp", ("blocks.*.attn", "blocks.*.mlp"), ("GroupNorm",), POLICY.regions
        ),
        "export-time whole blocks + final layer fp16": PrecisionPolicy(
            "blocks", ("blocks.*", "final_layer"), ("GroupNorm",), POLICY.regions
        ),
    }
    for i, (name, policy) in enumerate(variants.items()):
        t0 = time.perf_counter()
        m = make_model(args, stress)
        mixed.apply_dit_policy(m, policy)
        paths = export_pair(m, tmp / label / f"v{i}", args.batch)
        methods[name] = evaluate(paths, cases)
        methods[name]["seconds"] = time.perf_counter() - t0
        print(f"[{label}] {name}: {_short(methods[name])}")
    for block, name in (("timestep", "onnxconverter-common, timestep path blocked"),
                        ("policy", "onnxconverter-common, policy islands blocked")):  # fmt: skip
        t0 = time.perf_counter()
        out = tmp / label / f"occ-{block}"
        out.mkdir(parents=True, exist_ok=True)
        paths = {k: occ_convert(p, out / p.name, block) for k, p in fp32_paths.items()}
        methods[name] = evaluate(paths, cases)
        methods[name]["seconds"] = time.perf_counter() - t0
        print(f"[{label}] {name}: {_short(methods[name])}")
    if args.autocast_python:
        for calibrated in (True, False):
            name = f"ModelOpt AutoCast ({'calibrated on check inputs' if calibrated else 'default random inputs'})"
            t0 = time.perf_counter()
            out = tmp / label / f"autocast-{int(calibrated)}"
            out.mkdir(parents=True, exist_ok=True)
            paths = {}
            for k, src in fp32_paths.items():
                calib = write_calibration(cases[k], out / f"calib-{k}") if calibrated else None
                paths[k] = autocast_convert(args.autocast_python, src, out / src.name, calib)
            methods[name] = evaluate(paths, cases)
            methods[name]["seconds"] = time.perf_counter() - t0
            print(f"[{label}] {name}: {_short(methods[name])}")
    fp32 = evaluate(fp32_paths, cases)
    return {"stress": stress, "ranges": ranges, "fp32_graph": fp32, "methods": methods}


def _short(r: dict) -> str:
    d, s = r["dit"], r["dit_step"]
    return (
        f"fp16 FLOPs {100 * d['fp16_flop_share']:.2f} %, dit guided ε {d['max_guided_rel_l2']:.2e}, "
        f"step {s['max_rel_l2']:.2e}, casts {d['casts']}, failed checks {d['static_checks_failed']}"
    )


def write_md(result: dict, path: Path) -> None:
    lines = [
        "# fp16 policy for the DiT graphs: activation ranges and measured error per method",
        "",
        f"Machine: {result['machine']}. Model {result['model']} at 256 px, batch {result['batch']}, "
        f"{result['weights']}. ONNX Runtime {result['onnxruntime']} CPU (runs many fp16 ops by up-casting: "
        "a lower bound of GPU error). Errors: rel-L2 against the PyTorch fp32 model, max over "
        "t ∈ {999, 500, 0} × cfg ∈ {1.5, 4} (dit: guided ε; dit_step: next latent).",
        "",
        "**Caveat: random weights are not trained weights.** Ranges and errors here show the mechanics; "
        "re-run with `--ckpt DiT-XL-2-256x256.pt` before trusting a less conservative policy.",
        "",
    ]
    for reg in result["regimes"]:
        r = reg["ranges"]
        lines += [
            f"## Regime: adaLN-Zero layers ×{reg['stress']:g}",
            "",
            f"Activation max |·| over all blocks along a guided DDPM-{r['steps']} chain (fp16 max = {FP16_MAX:g}):",
            "",
            "| quantity | max | / fp16 max |",
            "|---|---:|---:|",
        ]
        for q, v in r["max"].items():
            lines.append(f"| {q} | {v:.4g} | {v / FP16_MAX:.1e} |")
        lines += ["", "Per block (max over the cases) — residual stream, gates, logits, MLP hidden:", ""]
        lines.append(
            "| block | residual_in | gate_msa | gate_mlp | scale_msa | attn_logits | mlp_hidden | mlp_out |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
        depth = len(r["cases"][0]["blocks"])
        for i in range(depth):
            vals = {q: max(c["blocks"][i][q] for c in r["cases"]) for q in QUANTITIES}
            lines.append(
                f"| {i} | {vals['residual_in']:.3g} | {vals['gate_msa']:.3g} | {vals['gate_mlp']:.3g} | "
                f"{vals['scale_msa']:.3g} | {vals['attn_logits']:.3g} | {vals['mlp_hidden']:.3g} | {vals['mlp_out']:.3g} |"
            )
        lines += [
            "",
            "| method | fp16 share of GEMM FLOPs | dit guided ε rel-L2 | dit_step rel-L2 | Cast nodes (dit) | static checks |",
            "|---|---:|---:|---:|---:|---|",
        ]
        f = reg["fp32_graph"]
        lines.append(
            f"| fp32 graph (reference point) | 0 % | {f['dit']['max_guided_rel_l2']:.2e} | {f['dit_step']['max_rel_l2']:.2e} | "
            f"{f['dit']['casts']} | — |"
        )
        for name, m in reg["methods"].items():
            d, s = m["dit"], m["dit_step"]
            failed = sorted(set(d["static_checks_failed"] + s["static_checks_failed"]))
            lines.append(
                f"| {name} | {100 * d['fp16_flop_share']:.2f} % | {d['max_guided_rel_l2']:.2e} | {s['max_rel_l2']:.2e} | "
                f"{d['casts']} | {'all pass' if not failed else 'FAIL: ' + ', '.join(failed)} |"
            )
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="S/2")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument(
        "--stress", type=float, default=5.0, help="second regime: adaLN-Zero layers × this (0: skip)"
    )
    p.add_argument(
        "--autocast-python", default=None, help="python of a separate venv with nvidia-modelopt[onnx]"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_precision"))
    args = p.parse_args()
    import onnxruntime

    regimes = [1.0] + ([args.stress] if args.stress and not args.ckpt else [])
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
            "model": args.model,
            "batch": args.batch,
            "weights": args.ckpt or "random weights (seed 0, adaLN-Zero layers perturbed N(0, 0.02²))",
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "regimes": [run_regime(args, s, Path(tmp)) for s in regimes],
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    write_md(result, out.with_suffix(".md"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
