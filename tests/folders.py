"""Shared helpers for the runtime / build / verify tests (this module holds no tests).

The exported folders are made once per test run (the first test that asks, in any xdist worker,
builds them through the real `build` command under a file lock) and reused by the others: DiT-S/8
at 256 px with random weights, batch 2, a tiny random VAE, fp32 and mixed fp16. The fp32 build puts
every weight-carrying graph's weights in external data (one shared file): its export is also the
export tests' folder (`s8_export_folder`), so S/8 fp32 is exported once per run, not twice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from conftest import assert_user_error as assert_one_line_error  # noqa: F401  (the runtime tests import it from here)
from conftest import run_dit_export as run_cli
from filelock import FileLock

from dit_export.fileio import sha256_file

MODEL_ARGS = ["--model", "S/8", "--random-weights", "--vae", "random-tiny", "--batch", "2"]
_FOLDERS: dict[str, Path] = {}
BUILD_OUTPUT: dict[str, str] = {}  # stdout of the build that made each folder


def shared_root(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run sees (the parent of the workers' base temps)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_folder(tmp_path_factory, name: str, make) -> tuple[Path, str]:
    """`make(out) -> str` (a log) run once per test run for `name`, across all xdist workers.

    The first worker that asks builds it under a file lock; the others wait and reuse it (and its
    log). A failed build leaves no `.done` mark, so the next asker tries again and sees the error.
    """
    root = shared_root(tmp_path_factory)
    out, done, log = root / name, root / f"{name}.done", root / f"{name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)  # `name` may be `group/folder`
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if out.exists():
                shutil.rmtree(out)
            log.write_text(make(out))
            done.touch()
    return out, log.read_text()


def s8_folder(tmp_path_factory, precision: str = "fp32") -> Path:
    """The S/8 folder of a precision, built once per test run with `build --backend onnxruntime`.

    Shared by every module and xdist worker: tests that change a folder work on a `link_copy`.
    fp16 is made by re-building a copy of the fp32 folder with --precision fp16 (a changed
    request: the staleness path), whose output the test of that path checks; its short verify
    is skipped (the fp16 tests compare against torch themselves).
    """
    if precision in _FOLDERS:
        return _FOLDERS[precision]

    def make(out: Path) -> str:
        if precision == "fp32":
            proc = run_cli("build", *MODEL_ARGS, "--precision", "fp32", "--backend", "onnxruntime",
                           "--out", str(out), "--verify-steps", "1", env=EXTERNAL_DATA_ENV)  # fmt: skip
        else:
            link_copy(s8_folder(tmp_path_factory, "fp32"), out)
            proc = run_cli("build", *MODEL_ARGS, "--precision", precision, "--backend", "onnxruntime",
                           "--out", str(out), "--no-verify")  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
        return proc.stdout

    out, BUILD_OUTPUT[precision] = shared_folder(tmp_path_factory, f"s8-{precision}", make)
    _FOLDERS[precision] = out
    return out


# every weight-carrying graph in external data (1 MB threshold): the DiT graphs share one file
EXTERNAL_DATA_ENV = {"DIT_EXPORT_EXTERNAL_DATA_THRESHOLD": str(1 << 20)}


def s8_export_folder(tmp_path_factory) -> tuple[Path, str]:
    """The S/8 fp32 export (batch 2, checked, weights in external data) as `export` leaves it: the
    shared fp32 build's folder without its build record (`build` = that very export + build.json;
    the export's files are untouched by the build, tests/pipeline/test_build.py checks it), in a
    folder of its own. Returns the folder and the build's stdout (the export's log and check table
    are part of it). Used by tests/export/test_export.py, test_manifest.py and test_cache_export.py;
    read only (copy it to change it). The `export` command itself runs in those modules' CLI tests."""
    built = s8_folder(tmp_path_factory, "fp32")

    def make(out: Path) -> str:
        link_copy(built, out)
        (out / "build.json").unlink()
        return BUILD_OUTPUT["fp32"]

    # in a folder of its own: test_export checks that the export left nothing hidden beside it
    # (the base temp holds pytest's own `.lock`)
    return shared_folder(tmp_path_factory, "s8-export/s8_fp32", make)


def tiny_digits_folder(tmp_path_factory) -> Path:
    """The shipped tiny-digits model built for ONNX Runtime: fp32, batch 10, no verify, without the
    forecast cache's graphs (neither user samples cached); made once per test run (the `build` API)
    and read only. Used by tests/serve/test_triton.py (its sizing and row-scheduler checks are
    written for 10-row runs) and tests/verify/test_verify.py."""

    def make(out: Path) -> str:
        from dit_export.models.spec import ModelSpec
        from dit_export.pipeline import BuildConfig, build

        lines: list[str] = []
        cfg = BuildConfig(
            model=ModelSpec(model="tiny-digits"),
            out=out,
            batch=10,
            precision="fp32",
            backend="ort",
            verify=False,
            max_cache_order=None,
        )
        build(cfg, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
        return "\n".join(lines)

    return shared_folder(tmp_path_factory, "tiny-digits-fp32-b10", make)[0]


def link_copy(src: Path, dst: Path, copy: tuple[str, ...] = ()) -> Path:
    """A copy of a folder made of hard links (files named in `copy` are real copies to edit)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            if p.name in copy or p.name == "manifest.json":
                shutil.copy2(p, dst / p.name)
            else:
                os.link(p, dst / p.name)
    return dst


def rehash(folder: Path, graph: str) -> None:
    """Make a hand-edited graph "valid": record its new sha256 and size in the manifest."""
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    g = m["graphs"][graph]
    f = folder / g["file"]
    g["sha256"], g["bytes"] = sha256_file(f), f.stat().st_size
    path.write_text(json.dumps(m, indent=1) + "\n")


def replace_graph(folder: Path, graph: str, model) -> None:
    """Write an edited ONNX model in place of a graph (a new file: hard-linked copies stay intact)."""
    import onnx

    f = folder / f"{graph}.onnx"
    f.unlink()
    onnx.save(model, str(f))
    rehash(folder, graph)


def load_graph(path: Path):
    """An exported graph's ONNX model without its external weights loaded (they stay references to
    the folder's data file). onnx.load refuses to read external data through a file with several
    hard links (a "hardlink attack" check), and `link_copy` folders are made of hard links."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def perturb_weight(model, scale: float = 1.05, folder: Path | None = None) -> str:
    """Scale the largest float initializer of an ONNX model (it becomes inline data; the others keep
    their external references); returns its name. `folder`: where its external data lives."""
    from onnx import TensorProto, numpy_helper

    inits = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
    big = max(inits, key=lambda i: int(np.prod(i.dims)))
    if big.data_location == TensorProto.EXTERNAL:
        assert folder is not None, "an external initializer: say which folder holds its data"
        info = {e.key: e.value for e in big.external_data}
        count = int(np.prod(big.dims))
        arr = np.fromfile(folder / info["location"], np.float32, count, offset=int(info.get("offset", 0)))
        arr = arr.reshape(tuple(big.dims))
    else:
        arr = numpy_helper.to_array(big)
    big.CopyFrom(numpy_helper.from_array((arr * np.float32(scale)).astype(np.float32), big.name))
    return big.name


def inject_nan(model, at_t: int):
    """dit_step that outputs NaN wherever its timestep input equals `at_t` (x_next otherwise)."""
    from onnx import TensorProto, helper

    g = model.graph
    out = "x_next"  # the first output (the solver-state outputs follow it)
    assert g.output[0].name == out
    for node in g.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = "x_next_before_nan"
    g.initializer.extend(
        [
            helper.make_tensor("nan_at_t", TensorProto.INT64, [], [at_t]),
            helper.make_tensor("nan_value", TensorProto.FLOAT, [], [float("nan")]),
            helper.make_tensor("nan_shape", TensorProto.INT64, [4], [-1, 1, 1, 1]),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Equal", ["t", "nan_at_t"], ["nan_hit"]),
            helper.make_node("Reshape", ["nan_hit", "nan_shape"], ["nan_hit4"]),
            helper.make_node("Where", ["nan_hit4", "nan_value", "x_next_before_nan"], [out]),
        ]
    )
    return model
