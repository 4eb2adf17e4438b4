"""sample-set: one process, three processes and a torchrun launch write the same samples.npz; kill -9 and
resume gives the same bytes; a missing, incomplete, tampered or mismatched shard fails with one line.

CPU, the shipped tiny-digits model (exported once per module at fp32, batch 4), 14 images in chunks of 4
(the last chunk is short and padded), DDIM 25 steps: about a minute of CPU in all, a third of it the export.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dit_export.errors import UserError
from dit_export.sets import (
    SAMPLES_FILE,
    SetRequest,
    Shard,
    merge_set,
    parse_shard,
    pin_gpu,
    run_shard,
    set_labels,
    shard_from_env,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("filelock")

REPO = Path(__file__).resolve().parents[2]
N, CHUNK, STEPS, SEED = 14, 4, 25, 7
SET = SetRequest(num_images=N, seed=SEED, cfg_scale=4.0, steps=STEPS, sampler="ddim", chunk=CHUNK)
SET_FLAGS = [
    "--num-images", str(N), "--seed", str(SEED), "--cfg-scale", "4", "--steps", str(STEPS),
    "--sampler", "ddim", "--chunk", str(CHUNK), "--no-progress",
]  # fmt: skip


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **extra,
    )
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dit_export", *args]


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "eng"
    r = subprocess.run(
        _cli("export", "--model", "tiny-digits", "--batch", "4", "--precision", "fp32", "--no-check",
             "--max-cache-order", "none", "--out", str(out)),  # uncached sets (test_cache_runtime has a cached one)
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def reference(engines, tmp_path_factory) -> Path:
    """The set from one in-process shard (0/1), merged."""
    out = tmp_path_factory.mktemp("ref") / "set"
    res = run_shard(engines, SET, out, Shard(0, 1), progress=False, log=lambda s: None)
    assert (res.images, res.generated) == (N, N)
    merge_set(out, log=lambda s: None, progress=False)
    return out


def _npz_bytes(setdir: Path) -> bytes:
    return (setdir / SAMPLES_FILE).read_bytes()


def _one_line_error(fn, match: str) -> str:
    with pytest.raises(UserError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------------------------ units


def test_labels_spread_evenly_in_a_fixed_order():
    assert set_labels(7, range(3)).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert set_labels(5, (9, 4)).tolist() == [9, 4, 9, 4, 9]
    assert SetRequest(per_class=3).validate(10).num_images == 30
    assert SetRequest(per_class=2, classes=(1, 5)).validate(10).labels(10).tolist() == [1, 5, 1, 5]
    _one_line_error(lambda: SetRequest(num_images=7, per_class=3).validate(10), "disagrees")
    _one_line_error(lambda: SetRequest().validate(10), "number of images")
    _one_line_error(lambda: SetRequest(num_images=4, classes=(10,)).validate(10), "out of range")


def test_shards_from_flags_and_launcher_variables():
    assert [list(Shard(i, 3).chunks(7)) for i in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert (parse_shard("2/5").index, parse_shard("2/5").count) == (2, 5)
    for bad in ("5/5", "x", "1/0", "-1/2"):
        _one_line_error(lambda bad=bad: parse_shard(bad), "shard")
    assert (
        str(shard_from_env({"RANK": "3", "WORLD_SIZE": "8", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}))
        == "3/8"
    )
    assert str(shard_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "4"})) == "1/4"
    array = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "5"}
    assert str(shard_from_env({**array, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})) == "3/5"
    assert str(shard_from_env({**array, "SLURM_PROCID": "1", "SLURM_NTASKS": "2"})) == "7/10"
    assert str(shard_from_env({})) == "0/1"
    _one_line_error(lambda: shard_from_env({"RANK": "a", "WORLD_SIZE": "2"}), "not an integer")


def test_pin_gpu_picks_the_local_rank(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pin_gpu({}) is None and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert pin_gpu({"LOCAL_RANK": "2"}) and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    pin_gpu({"LOCAL_RANK": "1"})
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert pin_gpu({"SLURM_LOCALID": "3"}) is None  # one device left: the launcher bound it


# ------------------------------------------------------------------------------------------ identity


def test_set_equals_one_plain_request(engines, reference):
    """The merged set is the ADM layout and equals one Sampler request over all N labels."""
    from dit_export.runtime.sampler import Sampler

    data = np.load(reference / SAMPLES_FILE)
    assert sorted(data.files) == ["arr_0", "arr_1"]
    images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (N, 32, 32, 3) and images.std() > 10
    assert labels.dtype == np.int64 and labels.tolist() == set_labels(N, range(10)).tolist()
    with (
        zipfile.ZipFile(reference / SAMPLES_FILE) as zf,
        zf.open("arr_0.npy") as f,
    ):  # the ADM evaluator's reader
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert (shape, fortran, dtype) == ((N, 32, 32, 3), False, np.uint8)
        np.testing.assert_array_equal(np.frombuffer(f.read(), np.uint8).reshape(shape), images)
    with Sampler.load(engines, backend="ort") as s:
        want = s.sample(labels.tolist(), seed=SEED, cfg_scale=4.0, steps=STEPS, sampler="ddim")
    np.testing.assert_array_equal(images, want)


@pytest.fixture(scope="module")
def three_shards(engines, tmp_path_factory) -> Path:
    """The set from three `sample-set --shard i/3` processes running at once, merged by the CLI."""
    out = tmp_path_factory.mktemp("three") / "set"
    procs = [
        subprocess.Popen(
            _cli("sample-set", "--engines", str(engines), *SET_FLAGS, "--out", str(out), "--shard", f"{i}/3"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(3)
    ]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stdout + stderr
    r = subprocess.run(
        _cli("sample-set", "--out", str(out), "--merge"), capture_output=True, text=True, env=_env()
    )
    assert r.returncode == 0, r.stderr
    assert f"merged {N} images" in r.stdout and "from 3 shard(s)" in r.stdout
    return out


def test_three_processes_are_bit_identical_to_one(reference, three_shards):
    assert _npz_bytes(three_shards) == _npz_bytes(reference)


def test_torchrun_two_processes_are_bit_identical_to_one(engines, reference, tmp_path):
    with socket.socket() as s:  # a free loopback port for torchrun's store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "torchrun"
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "dit_export", "sample-set", "--engines", str(engines), *SET_FLAGS, "--out", str(two),
    ]  # fmt: skip
    r = subprocess.run(torchrun, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shard 0/2 (RANK/WORLD_SIZE)" in r.stdout and "shard 1/2 (RANK/WORLD_SIZE)" in r.stdout
    merge_set(two, log=lambda s: None, progress=False)
    assert _npz_bytes(two) == _npz_bytes(reference)


def test_kill_9_midway_then_resume(engines, reference, tmp_path):
    out = tmp_path / "killed"
    shard_dir = out / "shards" / Shard(0, 1).name
    cmd = _cli("sample-set", "--engines", str(engines), *SET_FLAGS, "--out", str(out))
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 120
    while not list(shard_dir.glob("chunk-*.json")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = len(list(shard_dir.glob("chunk-*.json")))
    assert 1 <= done < 4, f"the kill came too late ({done} of 4 chunks done)"
    _one_line_error(lambda: merge_set(out, log=lambda s: None, progress=False), "incomplete")

    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{done * CHUNK} already done" in r.stdout
    merge_set(out, log=lambda s: None, progress=False)
    assert _npz_bytes(out) == _npz_bytes(reference)
    assert not list(out.rglob("*.tmp"))  # the killed write left nothing behind after the resume


def test_damaged_chunk_is_redone(engines, reference, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(reference, out)
    npy = out / "shards" / Shard(0, 1).name / "chunk-000002.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    _one_line_error(
        lambda: merge_set(out, log=lambda s: None, progress=False), "changed after it was written"
    )
    res = run_shard(engines, SET, out, Shard(0, 1), progress=False, log=lambda s: None)
    assert res.generated == CHUNK
    merge_set(out, png=True, log=lambda s: None, progress=False)
    assert _npz_bytes(out) == _npz_bytes(reference)
    assert len(list((out / "png").glob("*.png"))) == N


# ------------------------------------------------------------------------------------------ refusals


def test_merge_refuses_missing_incomplete_or_mismatched_shards(three_shards, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(three_shards / "shards", out / "shards")

    missing = tmp_path / "missing"
    shutil.copytree(out, missing)
    shutil.rmtree(missing / "shards" / Shard(1, 3).name)
    _one_line_error(lambda: merge_set(missing, progress=False), r"shard\(s\) 1/3 missing")

    incomplete = tmp_path / "incomplete"
    shutil.copytree(out, incomplete)
    (incomplete / "shards" / Shard(0, 3).name / "chunk-000003.json").unlink()
    _one_line_error(lambda: merge_set(incomplete, progress=False), "shard 0/3 is incomplete")

    mismatched = tmp_path / "mismatched"
    shutil.copytree(out, mismatched)
    rec_path = mismatched / "shards" / Shard(2, 3).name / "request.json"
    rec = json.loads(rec_path.read_text())
    rec["set"]["seed"] = SEED + 1
    rec_path.write_text(json.dumps(rec))
    _one_line_error(lambda: merge_set(mismatched, progress=False), "another set .*seed")

    _one_line_error(lambda: merge_set(tmp_path / "nothing", progress=False), "no sample-set shards")
    merge_set(out, log=lambda s: None, progress=False)  # the untouched copy merges
    assert _npz_bytes(out) == _npz_bytes(three_shards)

    r = subprocess.run(
        _cli("sample-set", "--out", str(missing), "--merge"), capture_output=True, text=True, env=_env()
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing" in r.stderr


def test_resume_refuses_other_settings_other_shard_counts_and_a_held_lock(engines, tmp_path):
    from filelock import FileLock

    out = tmp_path / "set"
    run_shard(engines, SET, out, Shard(0, 2), progress=False, log=lambda s: None)
    other = SetRequest(num_images=N, seed=SEED, cfg_scale=4.0, steps=10, sampler="ddim", chunk=CHUNK)
    _one_line_error(
        lambda: run_shard(engines, other, out, Shard(0, 2), progress=False, log=lambda s: None),
        "steps was 25, now 10",
    )
    _one_line_error(
        lambda: run_shard(engines, other, out, Shard(1, 2), progress=False, log=lambda s: None), "another set"
    )
    _one_line_error(
        lambda: run_shard(engines, SET, out, Shard(1, 3), progress=False, log=lambda s: None),
        "started with 2 shards",
    )
    _one_line_error(
        lambda: run_shard(engines, SET.__class__(num_images=N, chunk=3), out, Shard(1, 2), progress=False),
        "not a multiple of the engine batch 4",
    )
    with FileLock(str(out / "shards" / Shard(0, 2).name / ".lock")):
        _one_line_error(
            lambda: run_shard(engines, SET, out, Shard(0, 2), progress=False, log=lambda s: None),
            "being written by another process",
        )
    res = run_shard(engines, SET, out, Shard(0, 2), progress=False, log=lambda s: None)
    assert res.generated == 0 and res.images == 8  # chunks 0 and 2 of 4 were done


def test_resume_with_other_engines_names_the_model_or_manifest_first(reference, tmp_path, tmp_path_factory):
    """Another folder differs in batch, size, classes… too: the line names the model (or the manifest)."""
    from folders import s8_folder

    from dit_export.sets.records import first_difference

    old = {"model": "a", "manifest_sha256": "1" * 64, "batch": 4, "backend": "ort", "steps": 25}
    assert first_difference(old, {**old, "model": "b", "batch": 2}) == 'model was "a", now "b"'
    assert first_difference(old, {**old, "manifest_sha256": "2" * 64, "batch": 2}) == (
        "the engines' manifest.json was sha256 111111111111…, now 222222222222…"
    )
    assert first_difference(old, {**old, "steps": 10, "backend": "trt"}) == 'backend was "ort", now "trt"'

    out = tmp_path / "set"
    shutil.copytree(reference / "shards", out / "shards")
    other = s8_folder(tmp_path_factory)  # S/8, 256 px, 1000 classes, batch 2 (the runtime tests' folder)
    msg = _one_line_error(
        lambda: run_shard(other, SET, out, Shard(0, 1), progress=False, log=lambda s: None), "model was"
    )
    assert "batch" not in msg and "use another --out, or the same settings and engines" in msg
