"""Schedule tables added to an exported folder (`schedules --add`, the schedules.json sidecar), the
folder's sampler record as the Python runtime reads it, and a toy sampler registered only here
sampled on ONNX Runtime against the PyTorch reference loop (its noise through `pred_noise`)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from folders import assert_one_line_error, link_copy, run_cli, s8_folder

from dit_export.compare import rel_l2
from dit_export.errors import UserError
from dit_export.sampling import samplers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sampling"))
from test_samplers import toy_spec  # noqa: E402  (the toy sampler of the registry tests)
from test_solvers import FilledStepNoise  # noqa: E402

LABELS = [207, 360, 387]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return s8_folder(tmp_path_factory, "fp32")


def _latents(runtime, labels, **fields):
    return runtime.generate(runtime.request(labels, **fields), decode=False).latents


def test_schedules_add_stores_a_checked_sidecar(fp32, tmp_path):
    from dit_export.runtime import Sampler

    folder = link_copy(fp32, tmp_path / "s8")
    manifest_bytes = (folder / "manifest.json").read_bytes()
    proc = run_cli("schedules", "--engines", str(folder), "--add", "dpm++2m:12", "ddim:30", "ddim:10")
    assert proc.returncode == 0, proc.stderr
    assert "dpm++2m 12 steps: added" in proc.stdout and "ddim 10 steps: already stored" in proc.stdout
    assert "dpm++2m: ode, multistep, no step noise, >= 2 steps; stored steps 10,12,20,25" in proc.stdout
    assert "ddpm: ancestral, draws noise, >= 1 steps; stored steps 25,50,100,250" in proc.stdout
    assert (folder / "manifest.json").read_bytes() == manifest_bytes  # never rewritten
    side = json.loads((folder / "schedules.json").read_text())
    assert side["schema"] == "dit_export.schedules/1" and sorted(side["tables"]) == ["ddim", "dpm++2m"]
    with Sampler.load(folder, backend="ort") as s, Sampler.load(fp32, backend="ort") as plain:
        assert s.schedules.stored_table("dpm++2m", 12) is not None
        assert plain.schedules.stored_table("dpm++2m", 12) is None
        for sampler, steps in (("dpm++2m", 12), ("ddim", 30)):
            ts, coefs = s.schedule(steps, sampler)
            want_ts, want = samplers.get(sampler).coefficients(steps)
            np.testing.assert_array_equal(ts, want_ts)
            np.testing.assert_array_equal(coefs, want)
        got = _latents(s, LABELS, seed=3, steps=12, sampler="dpm++2m")
        np.testing.assert_array_equal(got, _latents(plain, LABELS, seed=3, steps=12, sampler="dpm++2m"))
    proc = run_cli("inspect", str(folder), "--no-hash")
    assert "dpm++2m: ode, multistep, no step noise, >= 2 steps; stored steps 10,12,20,25" in proc.stdout


@pytest.mark.parametrize(
    "tamper, needle",
    [
        (lambda side, m: side["tables"]["dpm++2m"]["12"]["coefs"][3].__setitem__(5, 0.25), "does not match its sha256"),
        (lambda side, m: m.write_text(m.read_text() + " "), "was written for another manifest.json"),
        (lambda side, m: side.__setitem__("coef_names", side["coef_names"][:-1]), "'coef_names' differs"),
    ],
)
def test_a_tampered_sidecar_is_refused_in_one_line(fp32, tmp_path, tamper, needle):
    from dit_export.runtime import Sampler

    folder = link_copy(fp32, tmp_path / "s8")
    assert run_cli("schedules", "--engines", str(folder), "--add", "dpm++2m:12").returncode == 0
    path = folder / "schedules.json"
    side = json.loads(path.read_text())
    tamper(side, folder / "manifest.json")
    path.write_text(json.dumps(side))
    with pytest.raises(UserError, match=re.escape(needle)):
        Sampler.load(folder, backend="ort")
    proc = run_cli("sample", "--engines", str(folder), "--classes", "1", "--steps", "12", "--sampler", "dpm++2m",
                   "--no-progress", "--out", str(tmp_path / "g.png"))  # fmt: skip
    assert_one_line_error(proc, needle, "schedules --engines")


def test_bad_schedule_requests_are_one_line(fp32, tmp_path):
    for args, needle in (
        (["--add", "dpm++2m"], "expected SAMPLER:STEPS"),
        (["--add", "euler:10"], "unknown sampler 'euler'"),
        (["--add", "unipc:1"], "unipc needs at least 2 steps"),
    ):
        assert_one_line_error(run_cli("schedules", "--engines", str(fp32), *args), needle)
    assert_one_line_error(run_cli("schedules", "--engines", str(tmp_path / "none")), "is not a folder")


@pytest.fixture
def toy():
    spec = samplers.register(toy_spec(stored_steps=()))
    yield spec
    samplers.unregister(spec.name)


def test_toy_sampler_on_onnx_runtime_equals_the_reference_loop(fp32, tmp_path, toy):
    """Registered in the tests only: added to a folder, then sampled with per-step Philox noise."""
    from dit_export.export.schedule_tables import add_tables
    from dit_export.models.checkpoints import random_dit
    from dit_export.runtime import Sampler
    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    folder = link_copy(fp32, tmp_path / "s8")
    with Sampler.load(folder, backend="ort") as s:  # not in the folder's record yet: the fix is named
        with pytest.raises(UserError, match=re.escape(f"schedules --engines {folder} --add {toy.name}:STEPS")):
            _latents(s, LABELS, steps=6, sampler=toy.name)
    assert add_tables(folder, [(toy.name, 6)]) == [(toy.name, 6)]
    model, _ = random_dit("S/8", 256, seed=0)
    with Sampler.load(folder, backend="ort") as s:
        assert s.schedules.draws_noise(toy.name) and not s.schedules.draws_noise("unipc")
        for cfg in (1.0, 4.0):
            got = _latents(s, LABELS, seed=5, steps=6, sampler=toy.name, cfg_scale=cfg)
            noise = make_noise("philox", 5, len(LABELS), (4, 32, 32), guided=cfg > 1.0)
            ref = sample_latents(model, LABELS, noise, steps=6, sampler=toy.name, cfg_scale=cfg, progress=False)
            assert rel_l2(got, ref.numpy()) < 1e-5, cfg
    # the per-step noise term is live: the same loop without it ends elsewhere
    quiet = sample_latents(model, LABELS, FilledStepNoise(noise, 0.0), steps=6, sampler=toy.name, cfg_scale=4.0, progress=False)
    assert rel_l2(got, quiet.numpy()) > 1e-2




def test_export_and_build_take_schedules(fp32, tmp_path):
    """`export --schedules` stores extra tables in the manifest it writes; `build --schedules` on a
    folder it reuses adds them to the sidecar (the export is not redone)."""
    from dit_export.cli.app import build_parser
    from dit_export.export.schedule_tables import export_tables

    args = build_parser().parse_args(["export", "--model", "S/8", "--out", "o", "--schedules", "dpm++2m:12", "ddim:30"])
    assert args.schedules == [("dpm++2m", 12), ("ddim", 30)]
    tables = export_tables(args.schedules)
    assert sorted(tables.tables["dpm++2m"]) == [10, 12, 20, 25] and 30 in tables.tables["ddim"]
    assert set(tables.samplers) == set(samplers.names())
    folder = link_copy(fp32, tmp_path / "s8", copy=("build.json",))
    proc = run_cli("build", "--model", "S/8", "--random-weights", "--vae", "random-tiny", "--batch", "2",
                   "--precision", "fp32", "--backend", "onnxruntime", "--out", str(folder), "--no-verify",
                   "--schedules", "dpm++2m:12", "unipc:10")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 schedule table(s) added" in proc.stdout, proc.stdout
    side = json.loads((folder / "schedules.json").read_text())
    assert list(side["tables"]) == ["dpm++2m"] and list(side["tables"]["dpm++2m"]) == ["12"]
