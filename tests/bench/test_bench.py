"""`bench --quick`: a smoke run whose output files must be complete and agree (no timing asserts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from dit_export.bench.backends import BASELINE, QUICK_BACKENDS, SPECS, peak_class
from dit_export.bench.machine import device_peak, versions
from dit_export.bench.report import fmt_ms, fmt_num
from dit_export.bench.run import STAGES
from dit_export.bench.timing import PeakRss, Stats
from dit_export.cli import main as cli_main


def bench_main(argv: list[str]) -> int:
    """`python -m dit_export bench ARGV` in-process: its exit status (argparse errors exit 2)."""
    try:
        return cli_main(["bench", *argv])
    except SystemExit as e:
        return int(e.code or 0)


def _bench_cmd() -> list[str]:
    return [sys.executable, "-m", "dit_export", "bench"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """`bench --quick` with a work folder that already holds its batch-2 fp32 folder: a hard-linked
    copy of the S/8 folder the runtime tests build (tests/folders.py), which bench reuses by
    `build`'s rule; the batch-1 folder is exported (and checked) by bench's own worker."""
    from folders import link_copy, s8_folder

    from dit_export.bench.exports import folder_name
    from dit_export.cli.bench import QUICK
    from dit_export.models.spec import ModelSpec

    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"quick.{ext}" for k, ext in (("json", "json"), ("md", "md"), ("png", "png"))}
    spec = ModelSpec(model=QUICK["model"], random_weights=True, vae=QUICK["vae"]).validate()
    shared = s8_folder(tmp_path_factory, "fp32")
    seeded = link_copy(shared, out / "work" / folder_name(spec, "fp32", 2))
    proc = subprocess.run(
        [*_bench_cmd(), "--quick", "--work-dir", str(out / "work"), "--json", str(paths["json"]),
         "--markdown", str(paths["md"]), "--plot", str(paths["png"])],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "preparing 2 export folder(s)" in proc.stdout, proc.stdout
    # batch 2 was reused as is (the same file, not a new export); batch 1 was exported
    assert (seeded / "dit_step.onnx").samefile(shared / "dit_step.onnx")
    assert (out / "work" / folder_name(spec, "fp32", 1) / "manifest.json").is_file()
    res = json.loads(paths["json"].read_text())
    return res, paths["md"].read_text(), paths, proc.stdout


def _md_table(md: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after `heading`, as dicts keyed by the header cells."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip() == heading)
    while not lines[i].startswith("|"):
        i += 1
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def _agrees(cell: str, value: float | None) -> bool:
    """A table cell shows `value` to its printed precision."""
    if value is None:
        return cell == "–"
    text = cell.rstrip("×")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10**-decimals * (1 + 1e-9) + 1e-12


def test_every_requested_backend_is_measured_or_skipped_with_a_reason(quick):
    res, md, _, _ = quick
    assert res["schema"] == "dit_export.bench/1"
    names = [b["name"] for b in res["backends"]]
    assert names == list(QUICK_BACKENDS)  # the quick set, in order, none dropped
    for b in res["backends"]:
        assert b["status"] in ("measured", "skipped", "failed"), b
        if b["status"] != "measured":
            assert b["reason"] and len(b["reason"]) > 10, b
            assert b["reason"] in md  # the markdown says why, too
    status = {b["name"]: b["status"] for b in res["backends"]}
    assert status[BASELINE] == "measured"
    assert status["ort"] == "measured"  # onnxruntime is a test dependency
    assert status["torch-compile"] == "skipped"  # --quick never compiles
    gpu = res["machine"]["gpu"]
    if gpu is None:
        assert status["torch-tf32"] == "skipped" and "CUDA" in next(
            b["reason"] for b in res["backends"] if b["name"] == "torch-tf32"
        )
        assert status["trt"] == "skipped"


def test_rows_are_complete_and_derived_figures_consistent(quick):
    res, _, _, _ = quick
    cfg = res["config"]
    assert cfg["quick"] and cfg["steps"] == 2 and cfg["batches"] == [1, 2]
    assert cfg["warmup"] == 1 and cfg["repeat"] == 2 and cfg["stages"] == list(STAGES)
    assert res["model"]["name"] == "DiT-S/8"
    flops_image = res["model"]["flops_per_image_forward"]
    assert flops_image == 2 * res["model"]["macs_per_image_forward"]
    assert abs(res["model"]["macs_per_image_forward"] / 1e9 - 0.36) < 0.01  # the paper's S/8 figure
    for name in {r["backend"] for r in res["results"]}:
        batches = sorted(r["batch"] for r in res["results"] if r["backend"] == name)
        assert batches == [1, 2], name
    base = {r["batch"]: r for r in res["results"] if r["backend"] == BASELINE}
    measured = [r for r in res["results"] if r["status"] == "measured"]
    assert {r["backend"] for r in measured} >= {BASELINE, "ort"}
    for r in measured:
        n = r["batch"]
        for stage in ("denoiser", "step", "vae"):
            st = r[stage]
            assert st["n"] == cfg["repeat"]
            assert 0 < st["min_ms"] <= st["median_ms"] <= st["p90_ms"], (r["backend"], stage, st)
            assert st["first_call_ms"] > 0 and st["clock"]
        # 2 FLOPs per MAC, 2N rows per guided forward
        assert math.isclose(
            r["denoiser"]["tflops"], flops_image * 2 * n / (r["denoiser"]["median_ms"] / 1e3) / 1e12
        )
        s = r["sample"]
        assert s["kind"] == "measured" and s["steps"] == 2 and s["decode"]
        assert math.isclose(s["images_per_s"], n / s["total_s"])
        assert math.isclose(s["denoiser_x_steps_s"], 2 * r["step"]["median_ms"] / 1e3)
        assert math.isclose(
            s["loop_overhead_s"], s["total_s"] - s["denoiser_x_steps_s"] - s["vae_s"], abs_tol=1e-9
        )
        mem = r["memory"]
        assert mem["peak_bytes"] and mem["peak_bytes"] > 0 and mem["kind"]
        ratio = r["ratio_to_torch_fp32"]
        b = base[n]
        for stage in ("denoiser", "step", "vae"):
            assert math.isclose(ratio[stage], b[stage]["median_ms"] / r[stage]["median_ms"])
        assert math.isclose(ratio["images_per_s"], s["images_per_s"] / b["sample"]["images_per_s"])
        assert r["info"]["engine"] and r["info"]["precision"] and r["info"]["attention"]
        if r["backend"] == BASELINE:
            assert ratio["denoiser"] == 1.0 and ratio["images_per_s"] == 1.0
    m = res["machine"]
    assert m["label"] and m["cpu"] and m["cpus_usable"] >= 1
    assert res["versions"]["torch"] and res["versions"]["onnxruntime"]


def test_markdown_agrees_with_json(quick):
    res, md, _, _ = quick
    assert res["machine"]["label"] in md.splitlines()[0]
    summary = _md_table(md, "## Summary")
    assert len(summary) == len(res["results"])
    by_key = {(r["backend"], r["batch"]): r for r in res["results"]}
    for row in summary:
        r = by_key[(row["backend"], int(row["batch"]))]
        if r["status"] != "measured":
            assert row["kind"] == r["status"]
            continue
        assert _agrees(row["denoiser ms"], r["denoiser"]["median_ms"])
        assert _agrees(row["step ms"], r["step"]["median_ms"])
        assert _agrees(row["VAE ms"], r["vae"]["median_ms"])
        assert _agrees(row["sample s"], r["sample"]["total_s"])
        assert row["kind"] == r["sample"]["kind"]
        assert _agrees(row["images/s"], r["sample"]["images_per_s"])
        assert _agrees(row["× torch-fp32 images/s"], r["ratio_to_torch_fp32"]["images_per_s"])
    den = _md_table(md, "## Denoiser forward (2N rows)")
    measured = [r for r in res["results"] if r["status"] == "measured"]
    assert [(d["backend"], int(d["batch"])) for d in den] == [(r["backend"], r["batch"]) for r in measured]
    for d, r in zip(den, measured):
        for col, key in (("median ms", "median_ms"), ("p90 ms", "p90_ms"), ("min ms", "min_ms")):
            assert _agrees(d[col], r["denoiser"][key]), (d, col)
        assert _agrees(d["TFLOP/s"], float(fmt_num(r["denoiser"]["tflops"])))
        assert _agrees(d["× torch-fp32"], r["ratio_to_torch_fp32"]["denoiser"])
    for batch in res["config"]["batches"]:
        stage = _md_table(md, f"### batch {batch} (milliseconds)")
        rows = {s["stage"]: s for s in stage}
        for r in (r for r in measured if r["batch"] == batch):
            total = rows["total"][r["backend"]]
            assert total == f"{fmt_ms(r['sample']['total_s'] * 1e3)} ({r['sample']['kind']})"
            assert _agrees(rows["images/s"][r["backend"]], float(fmt_num(r["sample"]["images_per_s"])))
            assert _agrees(
                rows[f"denoiser × {res['config']['steps']}"][r["backend"]],
                r["sample"]["denoiser_x_steps_s"] * 1e3,
            )


def test_plot_written_or_skipped_with_reason(quick):
    res, _, paths, stdout = quick
    out = res["outputs"]
    try:
        import matplotlib  # noqa: F401

        have = True
    except ModuleNotFoundError:
        have = False
    if have:
        assert out["plot"] and paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert out["plot"] is None and "matplotlib" in out["plot_skipped"]
        assert not paths["png"].exists() and "plot skipped" in stdout


# ------------------------------------------------------------------------------ cheap units


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--quick", "--batch", "0"], "--batch"),
        (["--quick", "--backends", "tensorflow"], "unknown bench backend"),
        (["--quick", "--warmup", "0"], "--warmup"),
        (["--model", "S/8", "--ckpt", "x.pt", "--random-weights"], "either --ckpt or --random-weights"),
        (["--steps", "3"], "give --model"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, words, capsys):
    assert bench_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err


def test_stats_and_peaks():
    st = Stats.of([0.003, 0.001, 0.002, 0.010])
    assert st.min_ms == pytest.approx(1.0) and st.median_ms == pytest.approx(2.5) and st.n == 4
    assert st.min_ms <= st.median_ms <= st.p90_ms <= 10.0
    assert device_peak("NVIDIA H100 80GB HBM3")["tflops"]["fp16"] == 989.0
    assert device_peak("NVIDIA H100 PCIe")["label"] == "H100 PCIe"
    assert device_peak("NVIDIA H200")["label"].startswith("H200")
    assert device_peak("NVIDIA A100-SXM4-80GB")["tflops"]["tf32"] == 156.0
    assert device_peak("AMD EPYC") is None and device_peak(None) is None
    assert set(QUICK_BACKENDS) <= set(SPECS)


def test_peak_rss_window_resets():
    import mmap

    before = PeakRss()
    blob = mmap.mmap(-1, 64 << 20)  # 64 MiB of fresh pages (a heap block may be resident already)
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    peak1 = before.peak()
    blob.close()
    after = PeakRss()
    assert peak1 is not None and before.baseline is not None
    assert peak1 - before.baseline >= 60 << 20
    if after.kind.startswith("VmHWM"):  # Linux: the window starts again below the 64 MiB peak
        assert after.peak() < peak1


def test_peak_class_follows_the_build_precision():
    """Issue 14.7: TensorRT builds keep TF32 off, so trt-fp32 is scored on the fp32 (CUDA-core) peak."""
    assert peak_class(SPECS["trt-fp32"], "cuda")[0] == "fp32"
    assert peak_class(SPECS["trt"], "cuda")[0] == "fp16"
    assert peak_class(SPECS["ort"], "cuda")[0] == "tf32"  # ORT's CUDA EP allows TF32
    assert peak_class(SPECS["ort-fp16"], "cuda")[0] == "fp16"
    modes = {
        n: peak_class(SPECS[n], "cuda")[0]
        for n in ("torch-fp32", "torch-tf32", "torch-fp16", "torch-compile")
    }
    assert modes == {
        "torch-fp32": "fp32",
        "torch-tf32": "tf32",
        "torch-fp16": "fp16",
        "torch-compile": "fp16",
    }
    assert all(peak_class(s, "cpu")[0] is None for s in SPECS.values())
    h200 = device_peak("NVIDIA H200")["tflops"]
    assert h200[peak_class(SPECS["trt-fp32"], "cuda")[0]] == 67.0  # not the TF32 495 (7.4× apart)


def test_versions_come_from_metadata_without_imports():
    import subprocess

    code = (
        "import sys; from dit_export.bench.machine import versions; v = versions(); "
        "print(v['numpy'] is not None, 'torch' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "False", "False"]
    assert versions()["dit_export"]


def test_bench_reuses_a_folder_by_build_s_rule(tmp_path_factory, tmp_path):
    """bench's work folders follow the one reuse rule (`ExportFolder.why_stale`): a folder that
    `build` made for the same request is reused as is, without an export."""
    from folders import link_copy, s8_folder

    from dit_export.bench.exports import _ensure_export
    from dit_export.models.spec import ModelSpec

    folder = link_copy(s8_folder(tmp_path_factory, "fp32"), tmp_path / "f")
    before = (folder / "dit_step.onnx").stat().st_mtime_ns
    lines: list[str] = []
    spec = ModelSpec(model="S/8", random_weights=True, vae="random-tiny").validate()
    for cache in (2, 0, None):  # the folder's own cache order, or fewer cache graphs timed
        _ensure_export(spec, folder, "fp32", 2, checked=False, cache=cache, log=lines.append)
    assert lines == ["  reusing f"] * 3 and (folder / "dit_step.onnx").stat().st_mtime_ns == before
