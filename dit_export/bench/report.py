"""The benchmark result as markdown tables and a PNG plot (matplotlib optional).

Every number in the markdown comes from the JSON document through the formatters below, so the
two always agree (tests parse the tables back and compare).
"""

from __future__ import annotations

from pathlib import Path

from dit_export.bench.backends import BASELINE
from dit_export.fileio import atomic_path

NA = "–"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return NA
    a = abs(x)
    return f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 1 else f"{x:.3f}"


def fmt_s(x: float | None) -> str:
    if x is None:
        return NA
    a = abs(x)
    return f"{x:.1f}" if a >= 100 else f"{x:.2f}" if a >= 1 else f"{x:.3f}"


def fmt_num(x: float | None, digits: int = 3) -> str:
    """`digits` significant figures, plain notation."""
    if x is None:
        return NA
    if x == 0:
        return "0"
    from math import floor, log10

    dec = max(0, digits - 1 - int(floor(log10(abs(x)))))
    return f"{x:.{dec}f}"


def fmt_ratio(x: float | None) -> str:
    return NA if x is None else f"{x:.2f}×"


def fmt_bytes(x: int | None) -> str:
    if x is None:
        return NA
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.0f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out


def _measured(res: dict) -> list[dict]:
    return [r for r in res["results"] if r["status"] == "measured"]


def _median_ms(r: dict, graph: str) -> str:
    """A result's median time of one graph's call (`denoiser`, `step`, `vae`, a cache step), formatted."""
    return fmt_ms((r.get(graph) or {}).get("median_ms"))


def _ratio(r: dict, key: str) -> float | None:
    rt = r.get("ratio_to_torch_fp32") or {}
    return rt.get(key)


def _pct(x: float | None) -> str:
    return NA if x is None else f"{x:.0f}%"


def _loads(v: list[float] | None) -> str:
    return "/".join(f"{x:.1f}" for x in v) if v else NA


def header_lines(res: dict) -> list[str]:
    m, v, c, mod = res["machine"], res["versions"], res["config"], res["model"]
    spec = c["model"]  # the ModelSpec as data
    gpu = (m.get("gpu") or {}).get("name") or "no GPU"
    weights = (
        f"random weights (seed {spec['weights_seed']})"
        if spec["random_weights"]
        else (spec["ckpt"] or "released weights")
    )
    trt = v.get("tensorrt") or "not installed"
    lines = [
        f"# {mod['name']} @{mod['image_size']} benchmark: {m['label']}",
        "",
        f"- measured {res['created_utc']} on **{m['label']}** ({gpu}; {m['platform']}; "
        f"1/5/15-min load average {_loads(m.get('load_average'))} at start; other processes used "
        f"{_pct(m.get('other_processes_cpu_pct'))} of the CPUs during the run)",
        f"- torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}, TensorRT {trt}, "
        f"dit_export {v.get('dit_export')}, Python {v.get('python')}",
        f"- model {mod['name']} ({weights}), VAE {spec['vae']}, DDPM {c['steps']} steps, guidance "
        f"{c['cfg_scale']:g} (every forward runs 2N rows), {fmt_num(mod['flops_per_image_forward'] / 1e9)} "
        f"GFLOP per image per forward",
        f"- warm-up {c['warmup']} (first call untimed), {c['repeat']} timed calls per stage; GPU: CUDA events, "
        "CPU: perf_counter; torch baselines on "
        f"{c['device']} with {'SDPA' if c['torch_attention'] == 'sdpa' else 'explicit'} attention; CPU threads: "
        + (str(c["threads"]) if c.get("threads") else "library defaults"),
    ]
    if res.get("device_peak"):
        p = res["device_peak"]
        lines.append(
            f"- device peak ({p['label']}): fp16 {p['tflops']['fp16']:g}, tf32 {p['tflops']['tf32']:g}, "
            f"fp32 {p['tflops']['fp32']:g} TFLOP/s ({p['source']})"
        )
    else:
        lines.append("- device peak: unknown for this device; achieved TFLOP/s only")
    if c.get("cache_interval", 1) > 1:
        lines.append(
            f"- forecast step cache: interval {c['cache_interval']}, order {c['cache_order']} (the whole "
            "sample runs cached; see the cache table)"
        )
    if res.get("command"):
        lines.append(f"- command: `{res['command']}`")
    for n in res.get("notes", []):
        lines.append(f"- note: {n}")
    return lines


def backends_table(res: dict) -> list[str]:
    info: dict[str, dict] = {}
    for r in _measured(res):
        info.setdefault(r["backend"], r.get("info") or {})
    rows = []
    for b in res["backends"]:
        i = info.get(b["name"], {})
        what = (
            b["summary"] if b["status"] == "measured" else f"{b['summary']}. **{b['status']}**: {b['reason']}"
        )
        rows.append(
            [
                b["name"],
                b["status"],
                what,
                i.get("precision", NA) if b["status"] == "measured" else NA,
                i.get("attention", NA) if b["status"] == "measured" else NA,
                i.get("engine", NA) if b["status"] == "measured" else NA,
            ]
        )
    return _table(["backend", "status", "what", "precision", "attention", "engine"], rows)


def stage_table(res: dict, stage: str, with_flops: bool) -> list[str]:
    head = ["backend", "batch", "median ms", "p90 ms", "min ms"]
    if with_flops:
        head += ["TFLOP/s", "% of peak"]
    head += ["× torch-fp32"]
    extra = stage == "step" and any(r.get("step_no_cuda_graph") for r in _measured(res))
    if extra:
        head += ["no CUDA graph ms"]
    rows = []
    for r in _measured(res):
        st = r.get(stage)
        if not st:
            continue
        row = [
            r["backend"],
            str(r["batch"]),
            fmt_ms(st["median_ms"]),
            fmt_ms(st["p90_ms"]),
            fmt_ms(st["min_ms"]),
        ]
        if with_flops:
            row += [fmt_num(st.get("tflops")), fmt_num(st.get("pct_of_peak"), 2)]
        row += [fmt_ratio(_ratio(r, stage))]
        if extra:
            ng = r.get("step_no_cuda_graph")
            row += [fmt_ms(ng["median_ms"]) if ng else NA]
        rows.append(row)
    return _table(head, rows)


def summary_table(res: dict) -> list[str]:
    """One line per (backend, batch): the numbers a deployment decision needs."""
    head = [
        "backend",
        "batch",
        "denoiser ms",
        "step ms",
        "VAE ms",
        "sample s",
        "kind",
        "images/s",
        "× torch-fp32 images/s",
        "peak memory",
    ]
    rows = []
    for r in res["results"]:
        if r["status"] != "measured":
            rows.append([r["backend"], str(r["batch"]), *([NA] * 4), r["status"], NA, NA, NA])
            continue
        s = r.get("sample") or {}
        mem = r.get("memory") or {}
        rows.append(
            [
                r["backend"],
                str(r["batch"]),
                _median_ms(r, "denoiser"),
                _median_ms(r, "step"),
                _median_ms(r, "vae"),
                fmt_s(s.get("total_s")),
                s.get("kind", NA),
                fmt_num(s.get("images_per_s")),
                fmt_ratio(_ratio(r, "images_per_s")),
                fmt_bytes(mem.get("peak_bytes")),
            ]
        )
    return _table(head, rows)


def pipeline_tables(res: dict) -> list[str]:
    """NVIDIA-demo style: per batch, stages down, backends across (ms, except images/s)."""
    steps = res["config"]["steps"]
    out: list[str] = []
    for batch in res["config"]["batches"]:
        rs = [r for r in _measured(res) if r["batch"] == batch and r.get("sample")]
        if not rs:
            continue
        head = ["stage", *[r["backend"] for r in rs]]

        def ms(x: float | None) -> str:
            return fmt_ms(None if x is None else x * 1e3)

        body = [
            [f"denoiser × {steps}", *[ms(r["sample"]["denoiser_x_steps_s"]) for r in rs]],
            ["VAE decode", *[ms(r["sample"]["vae_s"]) for r in rs]],
            ["loop overhead", *[ms(r["sample"]["loop_overhead_s"]) for r in rs]],
            ["total", *[f"{ms(r['sample']['total_s'])} ({r['sample']['kind']})" for r in rs]],
            ["images/s", *[fmt_num(r["sample"]["images_per_s"]) for r in rs]],
            ["× torch-fp32", *[fmt_ratio(_ratio(r, "images_per_s")) for r in rs]],
        ]
        out += [f"### batch {batch} (milliseconds)", ""] + _table(head, body) + [""]
    return out


def memory_table(res: dict) -> list[str]:
    rows = []
    for r in _measured(res):
        m = r.get("memory") or {}
        rows.append(
            [
                r["backend"],
                str(r["batch"]),
                m.get("kind", NA),
                fmt_bytes(m.get("peak_bytes")),
                fmt_bytes(m.get("delta_bytes")),
                m.get("method", NA),
            ]
        )
    return _table(["backend", "batch", "what", "peak", "above the level before loading", "how"], rows)


def cache_table(res: dict) -> list[str]:
    """The forecast cache per (backend, batch): its two step graphs, the cached sample beside the
    uncached estimate, and its memory (one cache tensor per image; the runtime holds two)."""
    head = ["backend", "batch", "full step ms", "forecast step ms", "uncached step ms", "full / all steps",
            "cached sample s", "uncached estimate s", "speed-up", "cache per image", "cache held"]  # fmt: skip
    rows = []
    for r in _measured(res):
        s = r.get("sample") or {}
        c = s.get("cache")
        if not c:
            continue
        rows.append(
            [
                r["backend"],
                str(r["batch"]),
                _median_ms(r, "dit_step_full"),
                _median_ms(r, "dit_step_forecast"),
                _median_ms(r, "step"),
                f"{c['full_steps']} / {c['full_steps'] + c['forecast_steps']}",
                f"{fmt_s(s.get('total_s'))} ({s.get('kind', NA)})",
                fmt_s(c.get("uncached_estimate_s")),
                fmt_ratio(c.get("speedup_vs_uncached_estimate")),
                f"{fmt_bytes(c.get('bytes_per_image'))} {c.get('dtype', 'float32')}",
                fmt_bytes(c.get("held_bytes")),
            ]
        )
    return _table(head, rows)


def to_markdown(res: dict) -> str:
    lines = header_lines(res) + ["", "## Backends", ""] + backends_table(res)
    lines += ["", "## Summary", ""] + summary_table(res)
    pipe = pipeline_tables(res)
    if pipe:
        lines += [
            "",
            "## Stage table (whole sample)",
            "",
            "`denoiser × steps` = steps × the median fused step; `loop overhead` = measured total − "
            "that − VAE (noise, copies, Python); estimated totals have no overhead row.",
            "",
        ] + pipe
    if any(r.get("denoiser") for r in _measured(res)):
        lines += ["## Denoiser forward (2N rows)", ""] + stage_table(res, "denoiser", True) + [""]
    if any(r.get("step") for r in _measured(res)):
        lines += ["## One fused sampler step (N images, guidance inside)", ""] + stage_table(
            res, "step", True
        )
        lines += [""]
    if any(r.get("vae") for r in _measured(res)):
        lines += ["## VAE decode (N latents)", ""] + stage_table(res, "vae", False) + [""]
    if any((r.get("sample") or {}).get("cache") for r in _measured(res)):
        lines += ["## Forecast step cache", ""] + cache_table(res)
        lines += ["", "Speed-up: the uncached estimate (steps × the fused step + VAE) over the cached "
                  "sample, measured in the same run. Cache per image: one cache tensor (in its dtype); the "
                  "runtime holds two (the full step writes the refreshed one).", ""]  # fmt: skip
    lines += ["## Memory", ""] + memory_table(res)
    failed = [r for r in res["results"] if r["status"] != "measured"]
    if failed:
        lines += ["", "## Failed", ""] + _table(
            ["backend", "batch", "reason"], [[r["backend"], str(r["batch"]), r["reason"]] for r in failed]
        )
    lines += [
        "",
        f"Ratios are speed-ups over `{BASELINE}` measured in this run at the same batch (> 1: faster). "
        "FLOP/s count the DiT matmuls from the config (2 FLOPs per MAC, 2N rows per guided forward).",
    ]
    return "\n".join(lines) + "\n"


def write_plot(res: dict, path: str | Path) -> str | None:
    """Latency and throughput against batch, one line per backend; returns why not, or None."""
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        return "matplotlib is not installed (pip install 'dit_export[plot]')"

    rows = _measured(res)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [b["name"] for b in res["backends"] if any(r["backend"] == b["name"] for r in rows)]
    for name in names:
        mine = sorted((r for r in rows if r["backend"] == name), key=lambda r: r["batch"])
        den = [(r["batch"], r["denoiser"]["median_ms"]) for r in mine if r.get("denoiser")]
        if den:
            axes[0].plot(*zip(*den), marker="o", label=name)
        smp = [
            (r["batch"], r["sample"]["images_per_s"], r["sample"]["kind"]) for r in mine if r.get("sample")
        ]
        if smp:
            (line,) = axes[1].plot([b for b, _, _ in smp], [v for _, v, _ in smp], label=name)
            for b, v, kind in smp:
                axes[1].plot(
                    [b],
                    [v],
                    marker="o",
                    color=line.get_color(),
                    fillstyle="full" if kind == "measured" else "none",
                )
    mod, c = res["model"], res["config"]
    from matplotlib.ticker import NullFormatter, ScalarFormatter  # type: ignore[import-not-found]

    axes[0].set(yscale="log", ylabel="ms", title="denoiser forward (2N rows), median")
    axes[1].set(ylabel="images/s", title=f"whole sample, {c['steps']} steps + VAE (hollow: estimated)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(c["batches"])
        ax.set_xlabel("batch (images)")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].yaxis.set_major_formatter(ScalarFormatter())
    axes[0].yaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"{mod['name']} @{mod['image_size']} on {res['machine']['label']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return None
