"""ModelOpt ONNX PTQ vs onnxruntime.quantization.quantize_static (what `--precision int8` uses), issue 22.

Not a test. Same fp32 `dit_step` graph, same calibration inputs (the int8 export's calibration.npz),
different quantizer; then every variant is scored by the project venv on held-out inputs:
guided-ε / x̂0 / step-output rel-L2 against the fp32 graph, tiny-digits class accuracy and FD
(ddpm-50, cfg 4, seeds 0 1, 200 images each, through the runtime's `Sampler` on a copy of the int8
folder whose dit_step.onnx is swapped), per-forward time on ONNX Runtime CPU (1 and 2 threads,
interleaved rounds), op mix, the kernels ORT picked, the int8 share of GEMM FLOPs, quantization time.

Side venvs (ModelOpt pins onnxruntime-gpu 1.24 / onnx 1.21; never install it into the project venv):

    python3.11 -m venv /work/venv-modelopt && /work/venv-modelopt/bin/pip install "nvidia-modelopt[onnx]"
    python3.11 -m venv /work/venv-inc && /work/venv-inc/bin/pip install onnxruntime==1.32.0 \\
        onnx==1.23.2 "neural-compressor<3"          # ORT quantize_static's SmoothQuant option needs it

Run (project venv; --work holds the export folders, made with `dit_export export` when missing):

    python benchmarks/modelopt_compare.py int8 [--models tiny-digits S/2 B/2]   # quantize + rel-L2 + speed
    python benchmarks/modelopt_compare.py gate                                  # tiny-digits acc / FD
    python benchmarks/modelopt_compare.py fp8 [--models S/2]                    # structural fp8 check
    python benchmarks/modelopt_compare.py restructure     # recompute the structure columns, re-render

The results file was made with (load 7–22 on the shared 2-core box; ModelOpt's default node set
with entropy calibration did not finish on S/2 in 25 min there, so S/2 and B/2 ran without it):

    python benchmarks/modelopt_compare.py int8 --models tiny-digits
    python benchmarks/modelopt_compare.py int8 --models S/2 --variants ours mo-matched ours+sq --rounds 5 --calls 1
    python benchmarks/modelopt_compare.py int8 --models B/2 --variants ours mo-matched ours+sq \
        --heldout-seeds 5 --rounds 3 --calls 1
    python benchmarks/modelopt_compare.py gate
    python benchmarks/modelopt_compare.py fp8 --models tiny-digits --variants ours mo-default mo-matched
    python benchmarks/modelopt_compare.py fp8 --models S/2 --variants ours mo-matched

Variants: `ours` = dit_export.export.quantize.quantize_graph (int8); `mo-default` = ModelOpt
`quantize(quantize_mode="int8")` with only the calibration data and the CPU provider given (its own
node selection, entropy calibration, rest of the graph converted to fp16); `mo-matched` = ModelOpt
restricted to our policy's nodes (nodes_to_quantize, MatMul/Gemm, high_precision_dtype fp32,
calibration_method max = MinMax); `mo-entropy` = the same with entropy calibration;
`ours+sq` = our quantize_static call plus ORT's SmoothQuant option (alpha 0.5, neural-compressor).
Results merge into benchmarks/results/modelopt_compare.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_export.export import analysis  # noqa: E402
from dit_export.export.calibrate import CalibSet, CalibSettings  # noqa: E402
from dit_export.export.precision import INT8, QUANT_POLICIES  # noqa: E402
from dit_export.fileio import sha256_file  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIDE = ROOT / "benchmarks" / "modelopt_side.py"
MO_PY = Path(os.environ.get("MODELOPT_PY", "/work/venv-modelopt/bin/python"))
INC_PY = Path(os.environ.get("INC_PY", "/work/venv-inc/bin/python"))
PROBE = "guided_eps"  # extra graph output: the guided ε the solver consumes (an Identity of it)
OUTS = ("x_next", "hist_x0_next", PROBE)
VARIANTS = ("ours", "mo-default", "mo-matched", "mo-entropy", "ours+sq")
HELDOUT_SEEDS = (5, 6)  # calibration used seeds 0 1 (tiny) / 0 (S/2, B/2)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def spec_of(model: str):
    from dit_export.models.spec import ModelSpec

    if model == "tiny-digits":
        return ModelSpec(model="tiny-digits")
    return ModelSpec(model=model, random_weights=True, vae="none", image_size=256)


def tag(model: str) -> str:
    return model.replace("/", "")


def folder(work: Path, model: str, precision: str) -> Path:
    """The export (benchmarks/int8_speed.py's settings): tiny-digits batch 10, ddpm-50 × seeds 0 1
    calibration; S/2 and B/2 random weights, 256 px, batch 1, ddpm-10 × seed 0."""
    from dit_export.export.exporter import ExportOptions, export

    batch = 10 if model == "tiny-digits" else 1
    out = work / "folders" / f"{tag(model)}-{precision}-b{batch}"
    if (out / "manifest.json").is_file():
        return out
    calib = CalibSettings() if model == "tiny-digits" else CalibSettings(steps=10, seeds=(0,))
    o = ExportOptions(model=spec_of(model), out=out, batch=batch, precision=precision, force=True,
                      max_cache_order=None, check=False, calibration=calib)  # fmt: skip
    export(o, log=lambda s: None)
    return out


def probe_graph(src: Path, dst: Path) -> None:
    """fp32 dit_step + output `guided_eps` (the Where of the guidance region, what the solver reads)."""
    import onnx

    m = onnx.load(str(src))
    scope = {
        n.name: next((p.value for p in n.metadata_props if p.key == "dit_export.scope"), "")
        for n in m.graph.node
    }
    where = [n for n in m.graph.node if n.op_type == "Where" and scope[n.name].startswith("denoiser:")]
    if len(where) != 1:
        raise SystemExit(f"{src}: expected one guidance Where node, found {len(where)}")
    m.graph.node.append(
        onnx.helper.make_node("Identity", [where[0].output[0]], [PROBE], name="probe_guided_eps")
    )
    ref = m.graph.output[0]
    m.graph.output.append(onnx.helper.make_tensor_value_info(PROBE, ref.type.tensor_type.elem_type, None))
    onnx.save(m, str(dst))


def heldout(work: Path, model: str, batch: int, steps: int, seeds=HELDOUT_SEEDS) -> dict[str, np.ndarray]:
    """Held-out step inputs: the fp32 reference loop, seeds the calibration set never saw."""
    path = work / tag(model) / "heldout.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    from dit_export.export.calibrate import calib_key, capture

    spec = spec_of(model)
    dit, _ = spec.load_dit()
    dit.eval().requires_grad_(False)
    dit.set_fused_attention(False)
    s = CalibSettings(steps=steps, seeds=tuple(seeds))
    cs = capture(dit, batch, s, calib_key(s, spec.to_dict(), batch), log=print)
    np.savez(path, **cs.step)
    return dict(cs.step)


def side(py: Path, *args: str) -> dict:
    p = subprocess.run([str(py), str(SIDE), *args], capture_output=True, text=True)
    line = [s.split("RESULT ", 1)[1] for s in p.stdout.splitlines() if "RESULT {" in s]
    if p.returncode or not line:
        tail = (p.stdout + p.stderr)[-3000:]
        raise SystemExit(f"side script failed ({py} {' '.join(args[:1])}):\n{tail}")
    return json.loads(line[-1])


def quantize_all(src: Path, out: Path, calib: Path, nodes: Path, variants, mode: str = "int8") -> dict:
    """Each variant of `src` into out/<variant>.onnx (kept when present); quantize records."""
    from dit_export.export.quantize import quantize_graph

    recs = {}
    for v in variants:
        dst = out / f"{v}.onnx"
        rec_path = out / f"{v}.json"
        if dst.is_file() and rec_path.is_file():
            recs[v] = json.loads(rec_path.read_text())
            continue
        load = uptime()
        common = ["--src", str(src), "--calib", str(calib), "--out", str(dst), "--mode", mode]
        if v == "ours":
            t0 = time.perf_counter()
            rec = quantize_graph(src, dst, CalibSet.load(calib), "dit_step", mode)
            rec = {
                "seconds": round(time.perf_counter() - t0, 2),
                "tool": "onnxruntime.quantization (dit_export)",
            }
        elif v == "mo-default":
            rec = side(MO_PY, "modelopt", *common, "--preset", "default")
        elif v in ("mo-matched", "mo-entropy"):
            preset = "matched" if v == "mo-matched" else "matched-entropy"
            rec = side(MO_PY, "modelopt", *common, "--preset", preset, "--nodes", str(nodes))
        elif v == "ours+sq":
            rec = side(INC_PY, "smoothquant", *common, "--nodes", str(nodes), "--alpha", "0.5")
        else:
            raise SystemExit(f"unknown variant {v}")
        rec["uptime"] = load
        rec_path.write_text(json.dumps(rec, indent=1))
        recs[v] = rec
        print(f"  {v}: {rec['seconds']} s", flush=True)
    return recs


def session(path: Path, threads: int, quantized: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    disabled = list(QUANT_POLICIES[INT8].ort_disabled_optimizers) if quantized else []
    return ort.InferenceSession(
        str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def errors(graphs: dict[str, Path], inputs: dict[str, np.ndarray], outs=OUTS) -> dict:
    """Per variant and output: max and mean over the held-out steps of the batch's rel-L2 vs fp32."""
    sessions = {v: session(p, 2, v != "fp32") for v, p in graphs.items()}
    calls = len(inputs["x"])
    got = {v: [] for v in graphs}
    for k in range(calls):
        feed = {n: a[k] for n, a in inputs.items()}
        for v, s in sessions.items():
            got[v].append(dict(zip(outs, s.run(list(outs), feed), strict=True)))
    res = {}
    for v in graphs:
        if v == "fp32":
            continue
        res[v] = {}
        for o in outs:
            r = [rel_l2(got[v][k][o], got["fp32"][k][o]) for k in range(calls)]
            res[v][o] = {"max": round(max(r), 6), "mean": round(statistics.mean(r), 6)}
    return res


def timing(graphs: dict[str, Path], feed: dict[str, np.ndarray], rounds: int, calls: int) -> dict:
    """ms per forward: every round runs every variant once per thread count, medians over rounds."""
    res = {}
    for threads in (1, 2):
        sessions = {v: session(p, threads, v != "fp32") for v, p in graphs.items()}
        for s in sessions.values():
            s.run(["x_next"], feed)  # warm-up
        times = {v: [] for v in graphs}
        for _ in range(rounds):
            for v, s in sessions.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    s.run(["x_next"], feed)
                times[v].append(1e3 * (time.perf_counter() - t0) / calls)
        med = {v: statistics.median(t) for v, t in times.items()}
        res[str(threads)] = {
            "ms": {v: round(m, 2) for v, m in med.items()},
            "speedup_vs_fp32": {v: round(med["fp32"] / m, 3) for v, m in med.items()},
            "all_ms": {v: [round(x, 2) for x in t] for v, t in times.items()},
        }
        del sessions
    return res


def structure(path: Path, precision: str = INT8) -> dict:
    """Op mix, int8 share of GEMM FLOPs, ORT kernels, opset, file size."""
    import onnx

    from dit_export.export.quantize import KERNEL_OPS, ort_kernels

    m = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    # ModelOpt and SmoothQuant outputs carry no value_info for the Q/DQ tensors: infer shapes into a
    # copy (nothing computed changes) so the GEMM FLOP count sees every GEMM.
    shaped = path.with_name(path.stem + ".shapes.onnx")
    if not shaped.is_file():
        onnx.shape_inference.infer_shapes_path(str(path), str(shaped), data_prop=True)
    rep = analysis.analyze(shaped, precision)
    kernels = ort_kernels(path, precision) if precision == INT8 else {}
    inits = {i.name: i for i in m.graph.initializer}
    q_inputs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    w_q = sum(
        1 for n in q_inputs if n.input[0] in inits
    )  # fp32 weight → Q → DQ (ModelOpt's AddQDQPairToWeight)
    out_dtypes = collections.Counter(
        onnx.helper.tensor_dtype_to_np_dtype(inits[n.input[2]].data_type).name
        for n in q_inputs if len(n.input) > 2 and n.input[2] in inits
    )  # fmt: skip
    return {
        "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "bytes": path.stat().st_size,
        "ops": dict(ops.most_common()),
        "q_dq": [ops.get("QuantizeLinear", 0), ops.get("DequantizeLinear", 0)],
        "q_of_fp32_initializer": w_q,
        "quantized_dtypes": dict(out_dtypes),
        "quant_gemm_flop_share": round(rep.quant_flop_share, 4),
        "gemm_flops_by_dtype": {k: round(v / 1e9, 4) for k, v in rep.gemm_flops.items()},
        "ort_int8_kernels": {k: v for k, v in kernels.items() if k in KERNEL_OPS},
        "ort_fp32_gemm_kernels": {k: kernels[k] for k in ("MatMul", "Gemm", "FusedMatMul") if k in kernels},
        "ort_cast_nodes": kernels.get("Cast", 0),
        "checks_failed": [f"{c.name}: {c.detail}"[:200] for c in rep.checks if not c.ok],
    }


def part_int8(args) -> dict:
    rows = []
    for model in args.models:
        batch = 10 if model == "tiny-digits" else 1
        d = args.work / tag(model)
        d.mkdir(parents=True, exist_ok=True)
        fp32_dir, int8_dir = folder(args.work, model, "fp32"), folder(args.work, model, "int8")
        calib = int8_dir / "calibration.npz"
        probe = d / "fp32.onnx"
        if not probe.is_file():
            probe_graph(fp32_dir / "dit_step.onnx", probe)
        nodes = d / "nodes.json"
        from dit_export.export.quantize import node_names

        names = node_names(probe, QUANT_POLICIES[INT8])
        nodes.write_text(json.dumps(names))
        print(f"{model}: {len(names)} policy nodes; quantizing", flush=True)
        variants = [v for v in args.variants if v != "ours+sq" or INC_PY.is_file()]
        recs = quantize_all(probe, d, calib, nodes, variants)
        graphs = {"fp32": probe} | {v: d / f"{v}.onnx" for v in variants}
        steps = 50 if model == "tiny-digits" else 10
        inputs = heldout(args.work, model, batch, steps, args.heldout_seeds)
        print(f"{model}: errors on {len(inputs['x'])} held-out steps", flush=True)
        err = errors(graphs, inputs)
        print(json.dumps(err), flush=True)
        mid = {n: a[len(a) // 2] for n, a in inputs.items()}
        load0 = uptime()
        sp = timing(graphs, mid, args.rounds, args.calls)
        load1 = uptime()
        print(json.dumps({t: r["ms"] for t, r in sp.items()}), flush=True)
        st = {v: structure(p) for v, p in graphs.items() if v != "fp32"}
        rows.append({"model": model, "batch": batch, "policy_nodes": len(names), "calibration_calls":
                     CalibSet.load(calib).calls, "heldout_calls": len(inputs["x"]), "quantize": recs,
                     "rel_l2": err, "timing": sp, "uptime_timing": [load0, load1], "structure": st})  # fmt: skip
    return {"rows": rows, "rounds": args.rounds, "calls": args.calls}


def part_restructure(args) -> None:
    """Recompute the `structure` of every stored int8/fp8 row from the graphs in --work."""
    path = RESULTS / "modelopt_compare.json"
    res = json.loads(path.read_text())
    for part, sub in (("int8", ""), ("fp8", "fp8")):
        for r in res.get(part, {}).get("rows", []):
            d = args.work / tag(r["model"]) / sub
            for v in r["structure"]:
                st = structure(d / f"{v}.onnx", part)
                if part == "fp8":
                    from dit_export.export import trt_ops

                    st["trt_ops"] = trt_ops_check(d / f"{v}.onnx", trt_ops)
                r["structure"][v] = st
    path.write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "modelopt_compare.md").write_text(render(res))
    print(f"rewrote {path} and modelopt_compare.md")


def swapped_folder(work: Path, variant: str) -> Path:
    """A copy of the tiny-digits int8 folder with `variant`'s plain (no probe) dit_step.onnx."""
    src = folder(work, "tiny-digits", "int8")
    dst = work / "gate" / variant
    if (dst / "manifest.json").is_file():
        return dst
    plain = work / "gate" / "plain"
    plain.mkdir(parents=True, exist_ok=True)
    nodes = plain / "nodes.json"
    fp32 = folder(work, "tiny-digits", "fp32") / "dit_step.onnx"
    from dit_export.export.quantize import node_names

    nodes.write_text(json.dumps(node_names(fp32, QUANT_POLICIES[INT8])))
    quantize_all(fp32, plain, src / "calibration.npz", nodes, [variant])
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.copyfile(plain / f"{variant}.onnx", tmp / "dit_step.onnx")
    m = json.loads((tmp / "manifest.json").read_text())
    g = m["graphs"]["dit_step"]
    g["sha256"], g["bytes"] = sha256_file(tmp / "dit_step.onnx"), (tmp / "dit_step.onnx").stat().st_size
    (tmp / "manifest.json").write_text(json.dumps(m, indent=1))
    (tmp / "build.json").unlink(missing_ok=True)
    tmp.rename(dst)
    return dst


def part_gate(args) -> dict:
    from dit_export.runtime.sampler import Sampler
    from dit_export.verify.score import runtime_sample_fn, score_sampler, train_classifier

    clf = train_classifier(0)
    rows = []
    for v in ["fp32", *args.variants]:
        f = folder(args.work, "tiny-digits", "fp32") if v == "fp32" else swapped_folder(args.work, v)
        runner = Sampler.load(f, "ort", threads=args.threads)
        for seed in args.seeds:
            load = uptime()
            r = score_sampler(runtime_sample_fn(runner, cfg_scale=4.0, steps=50, sampler="ddpm", seed=seed),
                              per_class=args.per_class, classifier=clf, backend="ort",
                              precision="fp32" if v == "fp32" else "int8", steps=50, sampler="ddpm", seed=seed)  # fmt: skip
            row = {"variant": v, "seed": seed, "accuracy": round(r.accuracy, 4), "fd": round(r.fd, 3),
                   "fd_real": round(r.fd_real, 3), "images": r.num_images, "seconds": round(r.sample_seconds, 1),
                   "uptime": load}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
        runner.close()
    return {"rows": rows, "per_class": args.per_class, "cfg_scale": 4.0, "sampler": "ddpm-50"}


def part_fp8(args) -> dict:
    from dit_export.export import trt_ops

    rows = []
    for model in args.models:
        d = args.work / tag(model) / "fp8"
        d.mkdir(parents=True, exist_ok=True)
        fp32_dir, int8_dir = folder(args.work, model, "fp32"), folder(args.work, model, "int8")
        src = fp32_dir / "dit_step.onnx"
        from dit_export.export.quantize import node_names

        nodes = d / "nodes.json"
        nodes.write_text(json.dumps(node_names(src, QUANT_POLICIES["fp8"])))
        variants = [v for v in args.variants if v in ("ours", "mo-default", "mo-matched")]
        recs = quantize_all(src, d, int8_dir / "calibration.npz", nodes, variants, "fp8")
        st = {}
        for v in recs:
            p = d / f"{v}.onnx"
            s = structure(p, "fp8")
            s["trt_ops"] = trt_ops_check(p, trt_ops)
            st[v] = s
        # ORT CPU emulates fp8 Q/DQ (no fp8 GEMM): the error is measurable here, the speed is not.
        batch = 10 if model == "tiny-digits" else 1
        inputs = heldout(args.work, model, batch, 50 if model == "tiny-digits" else 10, args.heldout_seeds)
        graphs = {"fp32": src} | {v: d / f"{v}.onnx" for v in recs}
        err = errors(graphs, inputs, ("x_next", "hist_x0_next"))
        print(json.dumps(err), flush=True)
        rows.append({"model": model, "quantize": recs, "structure": st, "rel_l2": err})
    return {"rows": rows}


def trt_ops_check(path: Path, trt_ops) -> dict:
    """The graph against dit_export.export.trt_ops: ops outside TensorRT's parser list (10.15; 11.x
    adds Swish), dynamic-graph ops, and whether the opset is one every TensorRT 10.x parser reads."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in m.graph.node}
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {
        "unsupported_ops": sorted(ops - trt_ops.TRT_SUPPORTED_OPS),
        "forbidden_ops": sorted(ops & trt_ops.FORBIDDEN_OPS),
        "opset": opset,
        "opset_in_trt10_range": trt_ops.OPSET_MIN <= opset <= trt_ops.OPSET_MAX,
    }


def write(part: str, data: dict, command: str) -> None:
    """Merge into modelopt_compare.json (int8/fp8 rows by model) and re-render the markdown."""
    path = RESULTS / "modelopt_compare.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    data = data | {"command": command}
    old = res.get(part)
    if old and "rows" in old and part in ("int8", "fp8"):
        new = {r["model"] for r in data["rows"]}
        data["rows"] = [r for r in old["rows"] if r["model"] not in new] + data["rows"]
        runs = [*old.get("runs", [old.get("command")]), command]
        data["runs"] = list(dict.fromkeys(runs))  # in order, once each
    res[part] = data
    path.write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "modelopt_compare.md").write_text(render(res))
    print(f"wrote {path} and modelopt_compare.md")


def _model_order(row: dict) -> int:
    order = ("tiny-digits", "S/2", "B/2")
    return order.index(row["model"]) if row["model"] in order else len(order)


def render(res: dict) -> str:
    out = ["# ModelOpt ONNX PTQ vs onnxruntime.quantization (dit_export int8), ONNX Runtime 1.32 CPU", ""]
    out += [VERDICT, ""]
    i8 = res.get("int8")
    if i8:
        out += ["## int8: same fp32 dit_step, same calibration inputs, five quantizer settings", ""]
        for r in sorted(i8["rows"], key=_model_order):
            t1, t2 = r["timing"]["1"], r["timing"]["2"]
            out += [
                f"### {r['model']} (batch {r['batch']}; {r['calibration_calls']} calibration calls, "
                f"{r['heldout_calls']} held-out calls; {r['policy_nodes']} policy GEMMs)",
                "",
                f"Timing load: `{r['uptime_timing'][0]}` → `{r['uptime_timing'][1]}`",
                "",
                "| variant | quantize s | Q/DQ | int8 GEMM FLOP share | ORT int8 kernels | ORT fp32 GEMMs "
                "| guided-ε rel-L2 max / mean | x̂0 rel-L2 max / mean | step out rel-L2 max / mean "
                "| ms 1 thr (×fp32) | ms 2 thr (×fp32) |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
                f"| fp32 | – | – | – | – | – | – | – | – | {t1['ms']['fp32']:.1f} | {t2['ms']['fp32']:.1f} |",
            ]
            for v, st in r["structure"].items():
                e = r["rel_l2"][v]
                k = ", ".join(f"{a} {b}" for a, b in st["ort_int8_kernels"].items()) or "none"
                f32 = ", ".join(f"{a} {b}" for a, b in st["ort_fp32_gemm_kernels"].items()) or "0"
                out.append(
                    f"| {v} | {r['quantize'][v]['seconds']} | {st['q_dq'][0]}/{st['q_dq'][1]} "
                    f"| {100 * st['quant_gemm_flop_share']:.1f} % | {k} | {f32} "
                    f"| {e['guided_eps']['max']:.4f} / {e['guided_eps']['mean']:.4f} "
                    f"| {e['hist_x0_next']['max']:.4f} / {e['hist_x0_next']['mean']:.4f} "
                    f"| {e['x_next']['max']:.4f} / {e['x_next']['mean']:.4f} "
                    f"| {t1['ms'][v]:.1f} ({t1['speedup_vs_fp32'][v]:.2f}×) "
                    f"| {t2['ms'][v]:.1f} ({t2['speedup_vs_fp32'][v]:.2f}×) |"
                )
            out += ["", "Op mix (graph as written):", ""]
            for v, st in r["structure"].items():
                ops = ", ".join(f"{a} {b}" for a, b in list(st["ops"].items())[:10])
                out.append(
                    f"- {v}: opset {st['opset']}, {st['bytes'] / 1e6:.1f} MB, {ops}; "
                    f"fp32-initializer→Q {st['q_of_fp32_initializer']}, Cast after ORT {st['ort_cast_nodes']}"
                )
            out.append("")
        out += [f"Command(s): `{'`, `'.join(i8.get('runs', [i8['command']]))}`", ""]
    g = res.get("gate")
    if g:
        out += [
            f"## tiny-digits gate ({g['sampler']}, cfg {g['cfg_scale']}, {g['per_class']} per class, ORT CPU)",
            "",
            f"Command: `{g['command']}`  ",
            f"Load: `{g['uptime_before']}` → `{g['uptime_after']}`",
            "",
            "| variant | seed | accuracy | FD | FD floor (real subset) | images | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in g["rows"]:
            out.append(
                f"| {r['variant']} | {r['seed']} | {100 * r['accuracy']:.1f} % | {r['fd']:.2f} "
                f"| {r['fd_real']:.2f} | {r['images']} | {r['seconds']} |"
            )
        out.append("")
    f8 = res.get("fp8")
    if f8:
        out += ["## fp8 (E4M3) structural check (CPU calibration; TensorRT never ran here)", ""]
        out += [
            "| model | variant | quantize s | opset | Q/DQ | quantized dtypes | fp8 GEMM FLOP share "
            "| ops outside TRT list | dynamic ops | opset in TRT 10 range | static checks failed |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(f8["rows"], key=_model_order):
            for v, st in r["structure"].items():
                t = st["trt_ops"]
                out.append(
                    f"| {r['model']} | {v} | {r['quantize'][v]['seconds']} | {st['opset']} | "
                    f"{st['q_dq'][0]}/{st['q_dq'][1]} | {st['quantized_dtypes']} "
                    f"| {100 * st['quant_gemm_flop_share']:.1f} % | {t['unsupported_ops'] or '–'} "
                    f"| {t['forbidden_ops'] or '–'} | {t['opset_in_trt10_range']} "
                    f"| {'; '.join(st['checks_failed']) or 'none'} |"
                )
        out += [
            "",
            "fp8 error on held-out steps, ONNX Runtime CPU emulating the fp8 Q/DQ (rel-L2 vs fp32):",
            "",
        ]
        for r in sorted(f8["rows"], key=_model_order):
            for v, e in r.get("rel_l2", {}).items():
                out.append(
                    f"- {r['model']} {v}: x̂0 max {e['hist_x0_next']['max']:.4f} / mean "
                    f"{e['hist_x0_next']['mean']:.4f}; step output max {e['x_next']['max']:.4f} / mean "
                    f"{e['x_next']['mean']:.4f}"
                )
        out += ["", f"Command(s): `{'`, `'.join(f8.get('runs', [f8['command']]))}`", ""]
    return "\n".join(out) + "\n"


VERDICT = """**Verdict: dit_export keeps `onnxruntime.quantization.quantize_static` (QDQ).** Measured on a
shared 2-core machine (load 10–22 throughout; every `uptime` is below), numbers from the tables:

- ModelOpt's ONNX int8 PTQ *is* `onnxruntime.quantization.quantize_static` underneath
  (modelopt/onnx/quantization/int8.py: per_channel=True, TensorRT-guided extra_options, ORT
  monkey-patches). Restricted to our policy's GEMMs with max calibration and fp32 elsewhere
  (`mo-matched`) it computes the same graph: guided-ε rel-L2 mean 0.0603 vs 0.0604 (tiny-digits),
  0.00147 vs 0.00146 (S/2), 0.0020 vs 0.0020 (B/2); the same ORT kernels (MatMulIntegerToFloat
  16 / 48 / 48); the same gate
  (99.0 % / 99.5 %, FD 19.89 / 21.55 vs ours 19.86 / 21.59, fp32 19.96 / 21.70). What differs is
  worse for us: weights stored fp32 behind a Q→DQ pair (files 5.2 vs 2.8 MB, 132 vs 68.5 MB),
  opset 19, our node-scope metadata dropped (so `inspect` cannot check the fp32-embedding rule),
  quantization slower (tiny 10.3 vs 8.6 s in the same minutes; S/2 282 vs 34 s, but at load 21
  vs 14), and the install replaces the project's
  onnxruntime 1.32 / onnx 1.23 by onnxruntime-gpu 1.24 / onnx 1.21 and a CUDA torch.
- ModelOpt's defaults (`mo-default`) target TensorRT: Q/DQ on 125 (tiny) / 313 (S/2) tensors
  (Add, Mul, LayerNorm, the attention logits, the embeddings) and the rest converted to fp16.
  ONNX Runtime CPU picks no integer kernel (309 / 683 Casts after its optimiser): 0.38× fp32 at
  1 thread on tiny (0.43× in an earlier run at load 20) where ours runs 1.62×, and 0.53× on S/2
  where ours runs 2.09× (load ~4); guided-ε rel-L2 mean 0.208 vs 0.060 (tiny) and 0.190 vs 0.0015
  (S/2, 130×); on tiny accuracy holds (99.0 / 99.5 %) but FD moves −3.3 / −4.2 away from fp32's.
- Entropy calibration (`mo-entropy`, ModelOpt's default method) does not help: guided-ε mean 0.0775
  vs 0.0604 for max; FD −0.75 / −1.1 from fp32.
- Channel balancing: ModelOpt's ONNX path has none (its SmoothQuant is a PyTorch-path algorithm,
  `modelopt.torch.quantization` INT8_SMOOTHQUANT_CFG). ONNX Runtime's `SmoothQuant` option (Intel
  neural-compressor 2.4.1, alpha 0.5, folding on), on top of our exact call (`ours+sq`), lowers the
  guided-ε rel-L2 mean by 23–25 % (tiny 0.0466 vs 0.0604, S/2 0.00111 vs 0.00146, B/2 0.0015 vs
  0.0020) and keeps the
  same kernels; the gate does not change (99.0 / 99.5 %, FD 20.00 / 21.65, i.e. within 0.05 of
  fp32 where ours is within 0.11). Not adopted as the default: the gate already passes, and it
  needs neural-compressor 2.x (its ONNX adaptor is gone from 3.x; it pulls pandas, opencv,
  scikit-learn, pycocotools), leaves 25 / 65 unfoldable Mul nodes and quantizes slower (its extra
  calibration pass: tiny 33 vs 9 s, S/2 326 vs 34 s, loads as above; B/2 199 vs 374 s, the other
  way round, at load ~15 vs ~20).
  It is the lever to pull first if a larger model misses its gate.
- fp8 (E4M3) is where ModelOpt is ahead. Both tools' graphs pass the structural check (opset 19,
  only ops on TensorRT's parser list, no dynamic ops, Q/DQ zero points float8e4m3fn, 94.3 % /
  89.8 % of GEMM FLOPs fp8 on tiny / S/2). On held-out steps with ORT CPU emulating the fp8 Q/DQ,
  ModelOpt restricted to our GEMMs (max calibration, per-channel weight scales) has about half our
  error on tiny-digits (step output rel-L2 mean 0.0121 vs 0.0226) and 16 % less on S/2 (0.00043 vs
  0.00051). The difference is the calibrator, not the weight granularity: our quantize_static call
  with per_channel=True for fp8 gave 0.0227 (ORT allows only its Distribution calibrator for float
  types; ModelOpt patches ORT to use max). ModelOpt's fp8 defaults (100 tensors, rest fp16):
  0.0412, worse than both. TensorRT never built any of them here (no GPU).
- Speed: graphs that ORT runs with identical kernels (ours, mo-matched, ours+sq) run at the same
  speed once the box is quieter (S/2 at load ~4: 128.6 / 127.9 / 128.8 ms, 2.09–2.10× fp32 at
  1 thread, 1.57–1.58× at 2); in the runs at load 15–20 they differ by up to ~20 %, the noise
  floor there."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("int8", "gate", "fp8", "restructure"))
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="gate: ORT threads")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--heldout-seeds", type=int, nargs="+", default=list(HELDOUT_SEEDS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/modelopt_cmp"))
    args = ap.parse_args()
    if args.models is None:
        args.models = ["S/2"] if args.part == "fp8" else ["tiny-digits", "S/2", "B/2"]
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part == "restructure":
        return part_restructure(args)
    command = "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:])
    before = uptime()
    data = {"int8": part_int8, "gate": part_gate, "fp8": part_fp8}[args.part](args)
    write(args.part, data | {"uptime_before": before, "uptime_after": uptime()}, command)


if __name__ == "__main__":
    main()
