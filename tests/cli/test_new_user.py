"""What a new user tripped on (issue 24, item 3): each one shown gone by a test.

- `verify --help` showed ``[--engines DIR]`` as optional although only ``--thresholds`` runs without it;
- the shipped model printed and recorded itself as "custom", and its manifest held absolute paths
  into the installed package; "1 images";
- the "labelled grid" had no labels (``sample --label-grid`` draws each class under its image);
- ``score --help`` did not explain ``--sampler``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dit_export.cli.app import build_parser
from dit_export.sampling import samplers


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_verify_usage_shows_engines_as_required(capsys) -> None:
    text = _help(capsys, "verify")
    usage = text.split("\n\n", 1)[0]
    assert usage.startswith("usage: python -m dit_export verify --engines DIR")
    assert "[--engines DIR]" not in usage
    assert "verify --thresholds" in usage  # the one form without a folder


def test_verify_thresholds_runs_without_engines(run_cli, tmp_path) -> None:
    # `verify` alone is one line naming --engines: tests/cli/test_bad_inputs.py ("verify without folder")
    r = run_cli("verify", "--thresholds", cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_score_help_explains_the_sampler(capsys) -> None:
    text = " ".join(_help(capsys, "score").split())
    assert "--sampler" in text
    for name in samplers.names():
        assert name in text, name
    assert " ".join(samplers.help_text().split()) in text


@pytest.mark.parametrize("command", ["sample"])
def test_label_grid_flag_is_documented(capsys, command) -> None:
    text = " ".join(_help(capsys, command).split())
    assert "--label-grid draw each image's class under it in the grid" in text


def test_shipped_model_names_itself_and_records_no_install_path(run_cli, tmp_path) -> None:
    """tiny-digits: `tiny-digits` in the export line, the manifest and the sampler's line (was
    "custom"), its name as weights and VAE source (was /…/site-packages/dit_export/data/…), one
    image said as one, and the grid labelled."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    # no forecast-cache graphs: nothing here samples cached (README: the suite's rule)
    export = "export --model tiny-digits --precision fp32 --no-check --max-cache-order none --out eng"
    r = run_cli(*export.split(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(tiny-digits, fp32, batch 1)" in r.stdout
    text = (tmp_path / "eng" / "manifest.json").read_text()
    m = json.loads(text)
    assert (m["model"]["name"], m["model"]["source"], m["vae"]["source"]) == ("tiny-digits",) * 3
    assert "custom" not in text and "dit_export/data" not in text and "tiny_digits" not in text

    r = run_cli(
        *"sample --engines eng --backend ort --providers CPUExecutionProvider --classes 3 --steps 2".split(),
        *"--no-progress --label-grid --out g.png".split(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sampling 1 image(s) with tiny-digits" in r.stdout, r.stdout
    assert "wrote labelled grid g.png and 1 image in g/" in r.stdout, r.stdout
    from dit_export.images import load_png

    grid, tile = load_png(tmp_path / "g.png"), load_png(tmp_path / "g" / "000-class3.png")
    assert tile.shape == (32, 32, 3)
    assert grid.shape[1] == 32 + 4 and grid.shape[0] > 32 + 4 + 8  # a caption band under the image
    np.testing.assert_array_equal(grid[2:34, 2:34], tile)  # the image itself, untouched
    band = grid[34:-2, 2:34]
    assert band.max() > 200 and band.min() == 0  # white text on black: the "3" is drawn

    # a sample set records the model by name too (request.json: was "custom")
    r = run_cli(
        *"sample-set --engines eng --backend ort --providers CPUExecutionProvider --num-images 2".split(),
        *"--steps 2 --out set --no-progress".split(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (request,) = (tmp_path / "set").rglob("request.json")
    record = json.dumps(json.loads(request.read_text()))
    assert '"model": "tiny-digits"' in record and "custom" not in record, record


def test_labelled_grid_layout() -> None:
    from dit_export.images import labelled_grid

    imgs = np.full((5, 16, 16, 3), 100, np.uint8)
    g = labelled_grid(imgs, ["0", "1", "2", "3", "4"], nrow=4, padding=2)
    band = (g.shape[0] - 2) // 2 - 2 - 16  # two rows of (image + band + padding)
    assert g.shape[1] == 4 * 18 + 2 and band >= 8
    for k in range(5):
        row, col = divmod(k, 4)
        top, left = 2 + row * (16 + band + 2), 2 + col * 18
        assert (g[top : top + 16, left : left + 16] == 100).all()
        assert g[top + 16 : top + 16 + band, left : left + 16].max() > 200  # its caption
    assert g[2 + 16 + band + 2 :, 2 + 18 :].max() == 0  # second row: one image, the rest is padding
    with pytest.raises(ValueError, match="N captions"):
        labelled_grid(imgs, ["0"])


def test_console_script_is_declared_and_runs(tmp_path) -> None:
    """`dit-export` (pyproject's [project.scripts]) is the same CLI as `python -m dit_export`."""
    import shutil
    import subprocess
    import sys

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]  # tomllib is 3.11+
    assert [ln.strip() for ln in section.strip().splitlines()] == ['dit-export = "dit_export.cli:main"']
    beside = Path(sys.executable).parent / "dit-export"  # the venv's bin/, on PATH or not
    exe = str(beside) if beside.is_file() else shutil.which("dit-export")
    if exe is None:
        pytest.skip("dit_export is not pip-installed in this environment (no dit-export on PATH)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("dit_export "), r.stderr


def test_readme_commands_write_only_ignored_paths() -> None:
    """Every output path of the README's shell commands is one git ignores (issue 24: a user who
    runs them leaves no untracked files in the clone)."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```bash\n(.*?)```", (root / "README.md").read_text(), re.S)
    outs = re.findall(r"--(?:out|save-latents|save-images|json|markdown|plot) (\S+)", "\n".join(blocks))
    assert outs, "the README has no command that writes a file"
    for o in outs:
        r = subprocess.run(["git", "check-ignore", "-q", o], cwd=root)
        assert r.returncode == 0, f"README writes {o}, which git does not ignore"
