"""Triton serving (issues 13, 27): the model repository and its chosen sizes, its config against
Triton's schema, the Python-backend model (row scheduler) under a small fake
`triton_python_backend_utils`, and — when the server's own environment (.venv-triton) is present —
a real tritonserver: the smoke (scripts/triton_smoke.sh) and the batching checks."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from dit_export.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
TRITON_VENV = Path(os.environ.get("TRITON_VENV", ROOT / ".venv-triton"))

triton = pytest.importorskip("dit_export.serve.triton")


def _pb2():
    try:
        return triton.model_config_pb2()
    except UserError as e:
        pytest.skip(f"tritonclient is not installed ({e}); pip install --no-deps tritonclient")


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Path:
    """The shipped tiny-digits model exported for ONNX Runtime (batch 10, fp32, no verify)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from folders import tiny_digits_folder

    return tiny_digits_folder(tmp_path_factory)  # shared with tests/verify/test_verify.py; read only


@pytest.fixture(scope="module")
def repo(engines, tmp_path_factory) -> Path:
    _pb2()
    out = tmp_path_factory.mktemp("repo")
    triton.write_repository(engines, out, instances=2, workers=1, threads=1, queue_delay_us=3000)
    return out


# ------------------------------------------------------------------------------ config and layout


def test_config_parses_against_the_model_config_schema(repo):
    pb2 = _pb2()
    text = (repo / "dit_sampler" / "config.pbtxt").read_text()
    c = triton.parse_config(text)
    assert isinstance(c, pb2.ModelConfig)
    assert c.name == "dit_sampler" and c.backend == "python" and c.max_batch_size == 40
    assert [i.name for i in c.input] == [
        "class_label",
        "seed",
        "cfg_scale",
        "steps",
        "sampler",
        "first_index",
        "cache_interval",
        "cache_order",
    ]
    assert [i.optional for i in c.input] == [False, False, True, True, True, True, True, True]
    assert c.input[1].data_type == pb2.TYPE_UINT64 and c.input[4].data_type == pb2.TYPE_STRING
    assert c.output[0].name == "image" and c.output[0].data_type == pb2.TYPE_UINT8
    assert list(c.output[0].dims) == [32, 32, 3]
    assert c.HasField("dynamic_batching") and list(c.dynamic_batching.preferred_batch_size) == [10]
    assert c.dynamic_batching.max_queue_delay_microseconds == 0  # the model's scheduler fills runs
    assert c.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU and c.instance_group[0].count == 2
    params = {k: v.string_value for k, v in c.parameters.items()}
    assert params["backend"] == "ort" and params["engines"] == "engines" and params["engine_batch"] == "10"
    assert (params["threads"], params["workers"], params["fill_delay_us"]) == ("1", "1", "3000")


def test_defaults_follow_the_folder_and_the_machine(engines):
    _pb2()
    from dit_export.export.manifest import Manifest
    from dit_export.serve import sizing

    m = Manifest.read(engines, check_graphs=False)
    two = sizing.choose(m, "ort", "KIND_CPU", cores=2)  # measures one 10-row step
    assert (two.instances, two.workers, two.threads) == (1, 2, 1)
    assert two.max_batch == 40 and two.preferred == (10,) and two.step_ms > 0
    assert two.queue_delay_us == max(100, int(0.25 * two.step_ms * 1e3)), two.lines
    assert any("fill delay" in line and "measured 10-row step" in line for line in two.lines)
    big = sizing.choose(m, "ort", "KIND_CPU", cores=16, queue_delay_us=500)
    assert (big.workers, big.threads, big.queue_delay_us) == (2, 8, 500)
    assert sizing.choose(m, "ort", "KIND_CPU", cores=1, queue_delay_us=0).workers == 1
    by_threads = sizing.choose(m, "ort", "KIND_CPU", cores=4, threads=1, max_batch=25, queue_delay_us=0)
    assert (by_threads.workers, by_threads.threads, by_threads.max_batch) == (4, 1, 25)
    gpu = sizing.choose(m, "trt", "KIND_GPU", queue_delay_us=None)  # no plans: not measurable here
    assert (gpu.instances, gpu.workers) == (2, 1) and gpu.queue_delay_us == sizing.FALLBACK_DELAY_US
    assert any("not measured" in line for line in gpu.lines)


def test_config_schema_refuses_what_triton_would(repo):
    text = (repo / "dit_sampler" / "config.pbtxt").read_text()
    with pytest.raises(UserError, match="ModelConfig schema"):
        triton.parse_config(text.replace("max_batch_size", "max_batch_sizes"))
    with pytest.raises(UserError, match="ModelConfig schema"):
        triton.parse_config(text.replace("KIND_CPU", "KIND_TPU"))


def test_repository_layout_copies_what_the_runtime_opens(repo, engines):
    version = repo / "dit_sampler" / "1"
    assert (version / "model.py").read_text() == triton.MODEL_SOURCE.read_text()
    placed = sorted(p.name for p in (version / "engines").iterdir())
    assert {"manifest.json", "dit_step.onnx", "vae_decoder.onnx"} <= set(placed)
    from dit_export.export.manifest import Manifest

    Manifest.read(version / "engines", check_graphs=False).verify_hashes()


def test_gpu_kind_and_plan_model_configs_parse(engines):
    pb2 = _pb2()
    spec = triton.SamplerModel(
        name="xl", image_size=256, max_batch=16, engine_batch=8, instances=1, kind="KIND_GPU",
        backend="trt", engines="engines",
    )  # fmt: skip
    c = triton.parse_config(triton.config_text(triton.sampler_config(spec)))
    assert c.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert list(c.output[0].dims) == [256, 256, 3]
    from dit_export.export.manifest import Manifest

    graph = Manifest.read(engines, check_graphs=False).graph("dit_step")
    p = triton.parse_config(triton.config_text(triton.plan_config("xl_dit_step", graph, {"9.0": "a.plan"})))
    assert p.platform == "tensorrt_plan" and p.max_batch_size == 0
    assert [i.name for i in p.input] == list(graph.input_names)
    assert dict(p.cc_model_filenames) == {"9.0": "a.plan"}


def test_refusals(engines, tmp_path):
    _pb2()
    with pytest.raises(UserError, match="no TensorRT plans"):
        triton.write_repository(engines, tmp_path / "r", backend="trt")
    with pytest.raises(UserError, match="no TensorRT plans"):
        triton.write_repository(engines, tmp_path / "r", plan_models=True)
    with pytest.raises(UserError, match="--name"):
        triton.write_repository(engines, tmp_path / "r", name="../x")
    triton.write_repository(engines, tmp_path / "r")
    with pytest.raises(UserError, match="--force"):
        triton.write_repository(engines, tmp_path / "r")
    triton.write_repository(engines, tmp_path / "r", force=True, reference=True)
    c = triton.parse_config((tmp_path / "r" / "dit_sampler" / "config.pbtxt").read_text())
    assert c.parameters["engines"].string_value == str(engines.resolve())
    assert not (tmp_path / "r" / "dit_sampler" / "1" / "engines").exists()


def test_cli_command(engines, tmp_path, capsys):
    _pb2()
    from dit_export.cli import triton_repo

    argv = ["--engines", str(engines), "--out", str(tmp_path / "r"), "--instances", "3", "--workers", "2"]
    assert triton_repo.main([*argv, "--threads", "1", "--queue-delay-us", "700"]) == 0
    out = capsys.readouterr().out
    assert "KIND_CPU" in out and "3 instance(s) × 2 worker(s) × 1 thread(s)" in out and "700 µs" in out
    c = triton.parse_config((tmp_path / "r" / "dit_sampler" / "config.pbtxt").read_text())
    assert c.instance_group[0].count == 3 and c.max_batch_size == 40
    assert c.parameters["workers"].string_value == "2" and c.parameters["fill_delay_us"].string_value == "700"
    assert triton_repo.main(["--engines", str(tmp_path), "--out", str(tmp_path / "q")]) == 2


# ------------------------------------------------------------------------------ model.py, fake stub


def _fake_pb_utils() -> types.ModuleType:
    m = types.ModuleType("triton_python_backend_utils")
    m.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

    class Tensor:
        def __init__(self, name, data):
            self._name, self._data = name, np.asarray(data)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._data

    class TritonError(Exception):
        INVALID_ARG = 3

        def __init__(self, msg, code=None):
            super().__init__(msg)
            self.msg, self.code = msg, code

        def message(self):
            return self.msg

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    class Sender:
        """Like the stub's: a non-decoupled request takes exactly one response, with the final flag."""

        def __init__(self):
            self.sent, self.done = [], threading.Event()

        def send(self, response, flags=0):
            assert not self.done.is_set(), "a second response"
            assert flags == m.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            self.sent.append(response)
            self.done.set()

    class Request:
        def __init__(self, **inputs):
            self.inputs = {k: Tensor(k, v) for k, v in inputs.items()}
            self.sender = Sender()

        def get_response_sender(self):
            return self.sender

    m.Tensor, m.TritonError, m.InferenceResponse, m.Request = Tensor, TritonError, InferenceResponse, Request
    m.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    return m


def _load_model(repo: Path, monkeypatch):
    fake = _fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    path = repo / "dit_sampler" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("dit_sampler_model_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from google.protobuf import json_format

    config = triton.parse_config((repo / "dit_sampler" / "config.pbtxt").read_text())
    args = {
        "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
        "model_repository": str(repo / "dit_sampler"),
        "model_version": "1",
        "model_instance_kind": "CPU",
        "model_name": "dit_sampler",
    }
    m = mod.TritonPythonModel()
    m.initialize(args)
    return m, fake


@pytest.fixture
def model(repo, monkeypatch):
    """The repository's model.py, initialised as the Python backend would (model_config as JSON)."""
    m, fake = _load_model(repo, monkeypatch)
    yield m, fake
    m.finalize()


def _serve(m, requests: list, timeout: float = 300.0) -> list:
    """execute() queues and returns None; each request's one response comes through its sender."""
    assert m.execute(requests) is None
    for r in requests:
        assert r.sender.done.wait(timeout), "no response"
    return [r.sender.sent[0] for r in requests]


def _rows(*values, dtype):
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def test_model_serves_what_the_runtime_samples(model, engines):
    m, fake = model
    from dit_export.runtime import Sampler

    a = fake.Request(
        class_label=_rows(1, 2, 3, dtype=np.int64), seed=_rows(7, 7, 7, dtype=np.uint64), steps=_rows(4, 4, 4, dtype=np.int32)
    )  # fmt: skip
    # two seeds in one request: rows of each seed are one SampleRequest (row order kept)
    b = fake.Request(
        class_label=_rows(4, 5, 6, dtype=np.int64),
        seed=_rows(11, 12, 11, dtype=np.uint64),
        steps=_rows(4, 4, 4, dtype=np.int32),
        sampler=np.array([[b"ddim"]] * 3, dtype=object),
        cfg_scale=_rows(1.5, 1.5, 1.5, dtype=np.float32),
    )
    c = fake.Request(
        class_label=_rows(7, 8, dtype=np.int64), seed=_rows(7, 7, dtype=np.uint64),
        steps=_rows(4, 4, dtype=np.int32), first_index=_rows(3, 3, dtype=np.int64),
    )  # fmt: skip
    ra, rb, rc = _serve(m, [a, b, c])
    assert ra.error is None and rb.error is None and rc.error is None
    got_a, got_b = ra.output_tensors[0].as_numpy(), rb.output_tensors[0].as_numpy()
    assert got_a.dtype == np.uint8 and got_a.shape == (3, 32, 32, 3)
    with Sampler.load(engines, "ort") as s:
        np.testing.assert_array_equal(got_a, s.sample([1, 2, 3], seed=7, steps=4))
        want_11 = s.sample([4, 6], seed=11, steps=4, sampler="ddim", cfg_scale=1.5)
        want_12 = s.sample([5], seed=12, steps=4, sampler="ddim", cfg_scale=1.5)
        want_c = s.sample([1, 2, 3, 7, 8], seed=7, steps=4)[3:]  # images 3, 4 of seed 7
    np.testing.assert_array_equal(rc.output_tensors[0].as_numpy(), want_c)
    np.testing.assert_array_equal(got_b[[0, 2]], want_11)
    np.testing.assert_array_equal(got_b[[1]], want_12)
    # ddpm rows (a, c: 5) and ddim rows (b: 3) cannot share a run: two runs
    assert m.engine_runs == {5: 1, 3: 1}


def test_requests_are_split_to_fill_the_engine_runs(model, engines):
    """Requests of 7, 5 and 8 rows fill two 10-row runs (5 is split 3 + 2); a 25-row request runs as
    10 + 10 + 5, in order; every response equals `sample` of that request alone."""
    m, fake = model
    from dit_export.runtime import Sampler

    def req(labels, seed):
        n = len(labels)
        return fake.Request(
            class_label=_rows(*labels, dtype=np.int64), seed=_rows(*[seed] * n, dtype=np.uint64),
            steps=_rows(*[3] * n, dtype=np.int32),
        )  # fmt: skip

    sizes = {7: 1, 5: 2, 8: 3}
    mixed = {n: [(seed + i) % 10 for i in range(n)] for n, seed in sizes.items()}
    out = _serve(m, [req(mixed[n], seed) for n, seed in sizes.items()])
    assert m.engine_runs == {10: 2}
    large = [(3 * i) % 10 for i in range(25)]
    (big,) = _serve(m, [req(large, 42)])
    assert m.engine_runs == {10: 4, 5: 1}
    with Sampler.load(engines, "ort") as s:
        for (n, seed), r in zip(sizes.items(), out):
            np.testing.assert_array_equal(
                r.output_tensors[0].as_numpy(), s.sample(mixed[n], seed=seed, steps=3)
            )
        want = s.sample(large, seed=42, steps=3)
    got = big.output_tensors[0].as_numpy()
    assert got.shape == (25, 32, 32, 3)
    np.testing.assert_array_equal(got, want)


def test_bad_input_is_an_error_response_not_a_crash(model):
    m, fake = model
    good = [fake.Request(
        class_label=_rows(0, dtype=np.int64), seed=_rows(0, dtype=np.uint64), steps=_rows(2, dtype=np.int32)
    ) for _ in range(2)]  # fmt: skip
    bad = [
        (fake.Request(class_label=_rows(99, dtype=np.int64), seed=_rows(0, dtype=np.uint64)), "class id 99"),
        (
            fake.Request(class_label=_rows(1, dtype=np.int64), seed=_rows(0, dtype=np.uint64), steps=_rows(0, dtype=np.int32)),
            "steps 0",
        ),
        (
            fake.Request(
                class_label=_rows(1, dtype=np.int64), seed=_rows(0, dtype=np.uint64), sampler=np.array([[b"euler"]], dtype=object)
            ),
            "unknown sampler",
        ),
        (fake.Request(class_label=_rows(1, dtype=np.int64)), "seed is missing"),
        (fake.Request(class_label=_rows(1, 2, dtype=np.int64), seed=_rows(0, dtype=np.uint64)), "1 rows"),
    ]  # fmt: skip
    responses = _serve(m, [good[0]] + [r for r, _ in bad] + [good[1]])
    assert responses[0].error is None and responses[-1].error is None
    np.testing.assert_array_equal(
        responses[0].output_tensors[0].as_numpy(), responses[-1].output_tensors[0].as_numpy()
    )
    for resp, (_, needle) in zip(responses[1:-1], bad):
        assert resp.error is not None and needle in resp.error.message(), resp.error.message()
        assert resp.error.code == fake.TritonError.INVALID_ARG
        assert "\n" not in resp.error.message()


# ------------------------------------------------------------------------------ the real server


def _triton_env_reason() -> str | None:
    if not (TRITON_VENV / "bin" / "python").exists():
        return f"no {TRITON_VENV.name} (bash scripts/triton_smoke.sh --setup makes the server's environment)"
    found = list(TRITON_VENV.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        return (
            f"{TRITON_VENV.name} has no tritonserver (nvidia-pytriton); rerun scripts/triton_smoke.sh --setup"
        )
    return None


def test_real_tritonserver_smoke(request):
    """scripts/triton_smoke.sh on the tiny model: a real tritonserver on 127.0.0.1, two concurrent
    requests equal `dit_export sample`, bad input answered with errors; last line says ok."""
    reason = _triton_env_reason()
    if reason and not os.environ.get("DIT_EXPORT_TRITON"):
        pytest.skip(reason)
    assert reason is None, f"DIT_EXPORT_TRITON is set but {reason}"
    engines = request.getfixturevalue("engines")
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "triton_smoke.sh"), str(engines)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TRITON_VENV": str(TRITON_VENV), "TRITON_SMOKE_LIMIT": "300"},
    )
    last = (r.stdout.strip().splitlines() or [""])[-1]
    assert r.returncode == 0 and "ok" in last, r.stdout[-3000:] + r.stderr[-3000:]
    assert "server images equal dit_export sample" in r.stdout
    assert "[400] class id 99" in r.stdout and "steps 0" in r.stdout
    json.dumps(last)  # one printable line


@pytest.fixture(scope="module")
def served(engines, tmp_path_factory) -> dict:
    """A real tritonserver on 127.0.0.1 serving the `triton-repo` defaults, with its metrics; the
    checks of `scripts/triton_client.py batching` run in the server's environment (tritonclient.http)."""
    reason = _triton_env_reason()
    if reason and not os.environ.get("DIT_EXPORT_TRITON"):
        pytest.skip(reason)
    assert reason is None, f"DIT_EXPORT_TRITON is set but {reason}"
    _pb2()
    from dit_export.serve.launch import LocalTriton

    out = tmp_path_factory.mktemp("served")
    res = triton.write_repository(engines, out / "repo")  # the defaults, chosen for this machine
    with LocalTriton(out / "repo", TRITON_VENV, limit_s=300, metrics=True) as server:
        cmd = [str(TRITON_VENV / "bin" / "python"), str(ROOT / "scripts" / "triton_client.py")]
        cmd += ["--url", server.http_url, "batching", "--engines", str(engines)]
        cmd += ["--metrics", f"127.0.0.1:{server.metrics_port}", "--steps", "10"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:] + server.log_tail()
    return {"chosen": res.config, "checks": json.loads(r.stdout.strip().splitlines()[-1])}


def test_served_config_carries_the_chosen_sizes(served):
    """Read back through tritonclient's get_model_config: what triton-repo chose is what Triton serves."""
    chosen, cfg = served["chosen"], served["checks"]["config"]
    assert int(cfg["max_batch_size"]) == chosen.max_batch_size == 40
    assert int(cfg["instance_group"][0]["count"]) == chosen.instance_group[0].count
    params = cfg["parameters"]
    for key in ("threads", "workers", "fill_delay_us", "engine_batch"):
        assert params[key] == chosen.parameters[key].string_value, key
    from dit_export.host import usable_cpus

    used, workers = int(params["workers"]) * int(params["threads"]), int(params["workers"])
    assert usable_cpus() - workers < used * chosen.instance_group[0].count <= usable_cpus()  # all cores, rounded
    assert int(params["fill_delay_us"]) > 0 and [
        int(b) for b in cfg["dynamic_batching"]["preferred_batch_size"]
    ] == [10]


def test_served_concurrent_single_images_fill_the_engine_runs(served):
    """12 concurrent single-image clients (3 requests each): engine runs of more than 8 rows, 0
    errors, and every image equal to `Sampler.sample` of its class, seed and steps."""
    c = served["checks"]
    assert c["errors"] == [] and c["responses"] == 36
    assert max(int(rows) for rows in c["engine_runs"]) > 8, c["engine_runs"]
    assert sum(int(rows) * n for rows, n in c["engine_runs"].items()) == 36
    assert c["equal_to_sample"]


def test_served_request_larger_than_the_engine_batch(served):
    c = served["checks"]
    assert c["large_shape"] == [25, 32, 32, 3] and c["large_equal_to_sample"]


def test_gpu_pinning_follows_the_servers_visible_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("dit_sampler_model_pin", triton.MODEL_SOURCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert mod.pin_gpu(1, env) == "3" and env["CUDA_VISIBLE_DEVICES"] == "3"
    env = {}
    assert mod.pin_gpu(1, env) == "1" and env["CUDA_VISIBLE_DEVICES"] == "1"
