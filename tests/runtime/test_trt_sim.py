"""TrtBackend + Sampler on a simulated GPU: the TensorRT path's bookkeeping, checked on a CPU.

The real `TrtBackend`, `engine.trt_api`, `engine.cuda` and `engine.plans` run unchanged; only the
two libraries they import lazily are replaced, at that seam: `tensorrt` (in `sys.modules`) and
cuda-python's runtime module (`engine.cuda._cudart`).

- Device memory is one numpy byte arena; `cudaMalloc` hands out addresses inside it (a fake base
  address plus an offset, 256-byte aligned as cudaMalloc's), every copy does real pointer
  arithmetic with `ctypes.memmove`, and every access must fall inside one live allocation.
  Fresh memory is all one bits (NaN as float32 and float16, -1 as an integer): real cudaMalloc
  memory is not zeroed, so a buffer read before it is written poisons the result.
- Streams are asynchronous: work is queued and runs at `cudaStreamSynchronize` (and before a
  copy to pageable host memory, which CUDA makes synchronous); a copy from pageable host memory
  takes its bytes when it is enqueued, as CUDA stages them. Freeing memory, destroying a graph,
  an execution context, an engine or a stream while work is queued is recorded, and the tests
  require it never to happen.
- An execution context reads its inputs from, and writes its outputs to, the addresses bound to
  it, running the real graph with ONNX Runtime; it asserts that every bound address is
  256-byte aligned (TensorRT requires it).
- A CUDA graph records what was enqueued during capture, with the addresses bound at capture
  time, and replays exactly that (a backend that moved a binding after capture would replay
  stale addresses and sample wrong images).

Plans are "built" by the real `engine.plans.build_plans` with `trt_api.build_plan` replaced by
a fake that writes which ONNX graph to run, so the real plan records and lookup are exercised.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from folders import s8_folder

from dit_export.engine import cuda, plans, trt_api
from dit_export.runtime import Sampler, SampleRequest, sampler, trt_backend

ALIGN = 256
BASE = 0x7F3A_0000_0000  # fake device addresses: never confused with host ones
TRT_VERSION = "10.13.0.35"
NP_TO_TRT = {"float32": "FLOAT", "float16": "HALF", "int64": "INT64", "int32": "INT32", "bool": "BOOL"}


# --------------------------------------------------------------------------- simulated device


class FakeDevice:
    """Device memory, streams and graphs of one simulated GPU."""

    def __init__(self, size: int = 64 << 20) -> None:
        self.arena = np.zeros(size, dtype=np.uint8)
        self.top = 0
        self.live: dict[int, int] = {}  # ptr -> bytes
        self.capturing: dict[int, list] = {}  # stream id -> ops recorded since BeginCapture
        self.queues: dict[int, list] = {}  # stream id -> ops enqueued and not yet run
        self.stream_ids = itertools.count(1)
        self.launches = 0
        self.executes = 0
        self.destroyed_busy: list[str] = []  # what was freed or destroyed while work was queued
        self.fail_capture_at: int | None = None  # the n-th EndCapture (1-based) reports an error
        self.captures = 0

    def malloc(self, n: int) -> int:
        off = -(-self.top // ALIGN) * ALIGN
        if off + n > self.arena.size:
            raise MemoryError("simulated device out of memory")
        self.top = off + max(int(n), 1)
        self.arena[off : off + max(int(n), 1)] = 0xFF  # not zeroed: NaN / -1 until written
        ptr = BASE + off
        self.live[ptr] = int(n)
        return ptr

    def free(self, ptr: int) -> None:
        assert ptr in self.live, f"cudaFree of {ptr:#x}, which is not allocated"
        self.destroying(f"cudaFree({ptr:#x})")
        del self.live[ptr]

    def destroying(self, what: str) -> None:
        """Record `what` when work is still queued on any stream (it could still use it)."""
        pending = sum(len(q) for q in self.queues.values())
        if pending:
            self.destroyed_busy.append(f"{what} with {pending} operation(s) still queued")

    def synchronize(self, stream: int) -> None:
        queue = self.queues.setdefault(int(stream), [])
        while queue:
            queue.pop(0)()

    def host(self, ptr: int, n: int) -> int:
        """The host address backing device range [ptr, ptr + n); it must lie in one live allocation."""
        for start, size in self.live.items():
            if start <= ptr and ptr + n <= start + size:
                return int(self.arena.ctypes.data) + (ptr - BASE)
        raise AssertionError(f"device access {ptr:#x}+{n} is outside every live allocation")

    def array(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        addr = self.host(ptr, n)
        return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(addr)).view(dtype).reshape(shape)

    def enqueue(self, stream: int, op) -> None:
        if stream in self.capturing:
            self.capturing[stream].append(op)
        else:
            self.queues.setdefault(stream, []).append(op)


class _Enum:
    def __init__(self, **members) -> None:
        for k, v in members.items():
            setattr(self, k, v)


class _Err:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def fake_cudart(dev: FakeDevice) -> types.ModuleType:
    """The parts of cuda-python's `cuda.bindings.runtime` that engine/cuda.py calls."""
    rt = types.ModuleType("fake_cudart")
    ok = _Err("cudaSuccess")
    invalidated = _Err("cudaErrorStreamCaptureInvalidated")
    rt.cudaError_t = _Enum(cudaSuccess=ok)
    rt.cudaStreamNonBlocking = 1
    rt.cudaMemcpyKind = _Enum(
        cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h", cudaMemcpyDeviceToDevice="d2d"
    )
    rt.cudaStreamCaptureMode = _Enum(cudaStreamCaptureModeGlobal="global")
    rt.cudaGetErrorString = lambda err: (ok, str(err).encode())
    rt.cudaGetDeviceCount = lambda: (ok, 1)
    rt.cudaGetDevice = lambda: (ok, 0)
    rt.cudaGetDeviceProperties = lambda i: (
        ok,
        types.SimpleNamespace(name=b"Simulated H200\0\0", major=9, minor=0),
    )
    rt.cudaDriverGetVersion = lambda: (ok, 12080)
    rt.cudaRuntimeGetVersion = lambda: (ok, 12080)
    rt.cudaStreamCreateWithFlags = lambda flags: (ok, next(dev.stream_ids))

    def stream_destroy(s):
        dev.destroying(f"cudaStreamDestroy({s})")
        return (ok,)

    def synchronize(s):
        dev.synchronize(int(s))
        return (ok,)

    rt.cudaStreamDestroy, rt.cudaStreamSynchronize = stream_destroy, synchronize

    def malloc(n):
        return ok, dev.malloc(n)

    def free(ptr):
        dev.free(ptr)
        return (ok,)

    def memcpy(dst, src, n, kind, stream):
        if kind == "h2d":  # pageable host memory: CUDA stages the bytes before returning
            staged = ctypes.string_at(src, n)
            dev.enqueue(int(stream), lambda: ctypes.memmove(dev.host(dst, n), staged, n))
        elif kind == "d2h":  # to pageable host memory: synchronous, after the queued work
            assert int(stream) not in dev.capturing, "a copy to pageable host memory inside a capture"
            dev.synchronize(int(stream))
            ctypes.memmove(dst, dev.host(src, n), n)
        else:
            dev.enqueue(int(stream), lambda: ctypes.memmove(dev.host(dst, n), dev.host(src, n), n))
        return (ok,)

    def begin(stream, mode):
        assert int(stream) not in dev.capturing
        dev.capturing[int(stream)] = []
        return (ok,)

    def end(stream):
        ops = list(dev.capturing.pop(int(stream)))
        dev.captures += 1
        if dev.captures == dev.fail_capture_at:  # what the recorded work was is lost, as in CUDA
            return invalidated, None
        return ok, ops

    def instantiate(graph, flags):
        return ok, tuple(graph)

    def launch(exec_, stream):
        dev.launches += 1
        for op in exec_:
            dev.enqueue(int(stream), op)
        return (ok,)

    rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = malloc, free, memcpy
    rt.cudaStreamBeginCapture, rt.cudaStreamEndCapture = begin, end
    rt.cudaGraphInstantiate, rt.cudaGraphLaunch = instantiate, launch

    def destroy(what):
        def fn(g):
            dev.destroying(what)
            return (ok,)

        return fn

    rt.cudaGraphExecDestroy, rt.cudaGraphDestroy = (
        destroy("cudaGraphExecDestroy"),
        destroy("cudaGraphDestroy"),
    )
    return rt


# --------------------------------------------------------------------------- simulated TensorRT


def _session(onnx_path: str):
    """The ONNX Runtime session a plan's "engine" runs: one per graph file (its real path, size and
    mtime) for the whole module; sessions keep no state between runs, and loading S/8's graphs
    again in every test cost ~1 s each."""
    real = Path(onnx_path).resolve()
    st = real.stat()
    return _cached_session(str(real), st.st_size, st.st_mtime_ns)


@functools.cache
def _cached_session(path: str, size: int, mtime_ns: int):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def fake_tensorrt(dev: FakeDevice) -> types.ModuleType:
    """The parts of the `tensorrt` module that engine/trt_api.py's runtime half calls."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = TRT_VERSION
    trt.Builder = object  # what trt_api's probe looks for (the module is not a stub package)
    trt.TensorIOMode = _Enum(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.ExecutionContextAllocationStrategy = _Enum(USER_MANAGED="USER_MANAGED")

    class ILogger:
        Severity = _Enum(ERROR=1, INTERNAL_ERROR=0, WARNING=2)

        def __init__(self) -> None:
            pass

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine, strategy) -> None:
            self.engine, self.strategy = engine, strategy
            self.addresses: dict[str, int] = {}
            self.scratch: tuple[int, int] | None = None

        def set_device_memory(self, ptr: int, size: int) -> None:
            assert size >= self.engine.device_memory_size_v2
            dev.host(ptr, size)
            self.scratch = (ptr, size)

        def set_input_shape(self, name: str, shape) -> bool:
            assert tuple(shape) == self.engine.io[name][1]
            return True

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            assert name in self.engine.io, name
            assert ptr % ALIGN == 0, f"{name} bound at {ptr:#x}: not {ALIGN}-byte aligned"
            self.addresses[name] = int(ptr)
            return True

        def __del__(self) -> None:
            dev.destroying("an execution context")

        def execute_async_v3(self, stream: int) -> bool:
            if self.strategy == "USER_MANAGED":
                assert self.scratch is not None, "USER_MANAGED context ran without device memory"
            assert set(self.addresses) == set(self.engine.io), "not every I/O tensor has an address"
            addrs = dict(self.addresses)  # what a capture records: the addresses bound right now
            dev.enqueue(int(stream), lambda: self.engine.compute(addrs))
            return True

    class ICudaEngine:
        device_memory_size_v2 = 4096

        def __init__(self, onnx_path: str) -> None:
            self.session = _session(onnx_path)
            self.io = {}
            for is_in, items in ((True, self.session.get_inputs()), (False, self.session.get_outputs())):
                for a in items:
                    dtype = {
                        "tensor(float)": "float32",
                        "tensor(int64)": "int64",
                        "tensor(float16)": "float16",
                    }[a.type]
                    self.io[a.name] = (is_in, tuple(a.shape), np.dtype(dtype))
            self.names = list(self.io)
            self.num_io_tensors = len(self.names)

        def __del__(self) -> None:
            dev.destroying("an engine")

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if self.io[name][0] else "OUTPUT"

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.io[name][1]

        def get_tensor_dtype(self, name: str):
            return types.SimpleNamespace(name=NP_TO_TRT[self.io[name][2].name])

        def create_execution_context(self, strategy=None) -> IExecutionContext:
            return IExecutionContext(self, strategy)

        def compute(self, addrs: dict[str, int]) -> None:
            dev.executes += 1
            feeds = {n: dev.array(addrs[n], s, d).copy() for n, (i, s, d) in self.io.items() if i}
            outs = self.session.run(None, feeds)
            for (n, (_, s, d)), value in zip([kv for kv in self.io.items() if not kv[1][0]], outs):
                dev.array(addrs[n], s, d)[...] = value

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, blob: bytes) -> ICudaEngine:
            return ICudaEngine(json.loads(blob)["onnx"])

    trt.ILogger, trt.IExecutionContext, trt.ICudaEngine, trt.Runtime = (
        ILogger,
        IExecutionContext,
        ICudaEngine,
        Runtime,
    )
    return trt


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def gpu(monkeypatch):
    """A simulated GPU with TensorRT: both fakes injected where the code imports the libraries."""
    dev = FakeDevice()
    monkeypatch.setattr(cuda, "_cudart", fake_cudart(dev))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(dev))
    yield dev
    gc.collect()  # contexts and engines dropped by close() are destroyed now at the latest
    assert dev.destroyed_busy == [], "freed or destroyed while the GPU still had work queued"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return s8_folder(tmp_path_factory, "fp32")


@pytest.fixture
def planned(folder, gpu, monkeypatch, tmp_path) -> Path:
    """A copy of the S/8 export with (fake) plans for the simulated GPU, built by the real build_plans."""
    out = tmp_path / "planned"
    out.mkdir()
    for p in folder.iterdir():
        if p.is_file():
            (out / p.name).symlink_to(p)

    def build_plan(onnx_path, shapes, options, timing_cache=None) -> bytes:
        return json.dumps(
            {"onnx": str(onnx_path), "shapes": {k: list(v) for k, v in shapes.items()}}
        ).encode()

    monkeypatch.setattr(trt_api, "build_plan", build_plan)
    plans.build_plans(out, plans.Target.current(), trt_api.BuildOptions(), log=lambda s: None)
    graphs = [g for g in plans.PLAN_GRAPHS if (out / f"{g}.onnx").exists()]  # the cached steps too
    assert {"dit", "dit_step", "vae_decoder"} <= set(graphs)
    assert sorted(p.name for p in (out / "plans").glob("*.plan")) == sorted(
        f"{g}.trt10.13.sm90.plan" for g in graphs
    )
    return out


@pytest.fixture(scope="module")
def reference(folder):
    with Sampler.load(folder, backend="ort", providers=["CPUExecutionProvider"]) as s:
        yield s


# --------------------------------------------------------------------------- tests

REQUEST = SampleRequest((207, 360, 387), seed=5, cfg_scale=4.0, steps=5)  # 3 images on batch 2: 2 chunks


@pytest.mark.parametrize("cuda_graph", [True, False], ids=["graphs", "no-graphs"])
@pytest.mark.parametrize("block", [None, 2], ids=["one-block", "noise-blocks-of-2"])
def test_trt_sampler_equals_the_ort_loop(planned, gpu, reference, monkeypatch, cuda_graph, block):
    if block is not None:  # noise tables uploaded in blocks of `block` steps (5 steps: 2 + 2 + 1)
        monkeypatch.setattr(sampler, "MAX_NOISE_TABLE_BYTES", block * 2 * 4 * 32 * 32 * 4)
    want = reference.generate(REQUEST)
    with Sampler.load(planned, backend="trt", cuda_graph=cuda_graph) as s:
        assert "TensorRT 10.13.0.35 on Simulated H200 (sm90)" in s.describe()
        got = s.generate(REQUEST)
        again = s.generate(REQUEST)  # buffers, staging and captured graphs reused
        captured = len(s.backend._captured)
        assert s.backend._capture_failed is None
    np.testing.assert_array_equal(got.latents, want.latents)
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(again.latents, want.latents)
    steps_run = 2 * 2 * REQUEST.steps  # two requests × two chunks × steps
    if cuda_graph:
        assert captured == 2  # x → x' and x' → x: the table rows go through fixed staging inputs
        assert gpu.launches == steps_run  # every step replays (the first of each set right after capture)
    else:
        assert captured == 0 and gpu.launches == 0


@pytest.mark.parametrize("cuda_graph", [True, False], ids=["graphs", "no-graphs"])
@pytest.mark.parametrize("sampler", ["dpm++2m", "unipc"])
def test_multistep_state_is_bound_and_captured(planned, gpu, reference, sampler, cuda_graph):
    """The solver-state buffers ping-pong with the latent: two captured graphs (none without
    graphs), the same latents. 3 images on batch 2: the second chunk starts from the first
    chunk's history unless it is zeroed, and fresh memory is NaN, so a missed zeroing fails."""
    req = SampleRequest((207, 360, 387), seed=5, cfg_scale=4.0, steps=4, sampler=sampler)
    want = reference.generate(req, decode=False)
    with Sampler.load(planned, backend="trt", cuda_graph=cuda_graph) as s:
        assert [i for i, _ in s.state_pairs()] == ["hist_x0", "hist_x0_prev", "hist_x"]
        got = s.generate(req, decode=False)
        captured = len(s.backend._captured)
        assert s.backend._capture_failed is None
    np.testing.assert_array_equal(got.latents, want.latents)
    assert captured == (2 if cuda_graph else 0)


@pytest.mark.parametrize("fail_at", [1, 2], ids=["first-capture-fails", "second-capture-fails"])
@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m"])
def test_capture_failure_falls_back_to_plain_execution(planned, gpu, reference, sampler, fail_at):
    """A capture that fails (cudaErrorStreamCaptureInvalidated at EndCapture: the recorded work is
    lost) is not an error: that step runs uncaptured, every later step too, the latents are the
    same, and describe() says so."""
    gpu.fail_capture_at = fail_at
    req = SampleRequest((207, 360, 387), seed=5, cfg_scale=4.0, steps=4, sampler=sampler)
    want = reference.generate(req, decode=False)
    with Sampler.load(planned, backend="trt", cuda_graph=True) as s:
        got = s.generate(req, decode=False)
        again = s.generate(req, decode=False)
        assert "cudaErrorStreamCaptureInvalidated" in (s.backend._capture_failed or "")
        assert "CUDA graph off (capture failed)" in s.backend.describe()
        assert len(s.backend._captured) == fail_at - 1  # a graph captured before the failure is kept
    np.testing.assert_array_equal(got.latents, want.latents)
    np.testing.assert_array_equal(again.latents, want.latents)
    assert gpu.captures == fail_at  # no capture is tried after a failure


def test_the_fake_cuda_runtime_uses_only_real_names():
    """Every name the fake cudart provides exists in cuda-python's runtime module (the list of
    tests/engine/test_cuda_names.py): the simulation cannot hide a misspelt CUDA call."""
    real = {
        ln.strip()
        for ln in (Path(__file__).parents[1] / "data" / "cudart_names.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    fake = fake_cudart(FakeDevice(size=1 << 12))
    names = set()
    for name in dir(fake):
        if name.startswith("cuda"):
            names.add(name)
            if isinstance(getattr(fake, name), _Enum):
                names |= {f"{name}.{m}" for m in vars(getattr(fake, name))}
    assert len(names) > 20 and names <= real, names - real


def test_fresh_device_memory_is_not_zero(planned, gpu):
    """The simulation's premise: what cudaMalloc returns reads as NaN until written."""
    with Sampler.load(planned, backend="trt") as s:
        buf = s.backend.alloc((2, 3), "float32")
        assert np.isnan(s.backend.read(buf)).all()
        s.backend.write(buf, np.ones((2, 3), np.float32))
        np.testing.assert_array_equal(s.backend.read(buf), 1.0)


def test_close_waits_for_queued_work(planned, gpu):
    """close() right after run() (nothing read back): the queued step must finish before the graph
    execs, contexts, engines and memory go (the fixture fails on anything destroyed while busy)."""
    s = Sampler.load(planned, backend="trt", cuda_graph=True)
    be = s.backend
    io = be.graphs["dit_step"]
    bindings = {}
    for spec in io.inputs + io.outputs:
        bindings[spec.name] = buf = be.alloc(spec.shape, spec.np_dtype)
        if spec in io.inputs:
            be.write(buf, np.zeros(spec.shape, spec.np_dtype))
    for _ in range(2):  # the second run replays the graph captured by the first
        be.run("dit_step", bindings)
    assert sum(map(len, gpu.queues.values())) > 0  # the work is still queued
    s.close()
    gc.collect()
    assert gpu.destroyed_busy == []
    assert sum(map(len, gpu.queues.values())) == 0


def test_other_requests_and_steps_reuse_the_backend(planned, gpu, reference):
    with Sampler.load(planned, backend="trt") as s:
        for req in (
            SampleRequest((1,), seed=0, cfg_scale=1.0, steps=3, sampler="ddim"),
            SampleRequest(
                (3, 4, 5, 6), seed=2**64 - 1, cfg_scale=1.5, steps=7
            ),  # a longer table: reallocated
            SampleRequest((9,), seed=1, steps=2),
        ):
            np.testing.assert_array_equal(
                s.generate(req, decode=False).latents, reference.generate(req, decode=False).latents
            )


def test_table_rows_are_never_bound_in_place(planned, gpu, monkeypatch):
    """Rows of a table start at k × row-bytes (16 bytes for t): binding them directly must fail here."""
    with Sampler.load(planned, backend="trt", cuda_graph=False) as s:
        table = s.backend.alloc((5, 2), "int64", table=True)
        assert table.row(1).ptr % ALIGN != 0  # what issue 14 (12) was about
        # Without the staging copy (and without the backend's own check) the simulated context refuses.
        monkeypatch.setattr(trt_backend, "ALIGNMENT", 1)
        monkeypatch.setattr(trt_backend.TrtBuffer, "row", lambda self, k: _unstaged_row(self, k))
        with pytest.raises(AssertionError, match="not 256-byte aligned"):
            s.generate(SampleRequest((1,), steps=2), decode=False)


def _unstaged_row(buf, k):
    sub = trt_backend.TrtBuffer(
        buf.ptr + int(k) * buf.nbytes // buf.shape[0], buf.shape[1:], buf.dtype, view=False
    )
    return sub


def test_stale_capture_addresses_would_be_caught(planned, gpu, reference, monkeypatch):
    """Replaying a graph captured with other addresses gives other latents: the simulation notices."""
    with Sampler.load(planned, backend="trt", cuda_graph=True) as s:
        real_key = trt_backend.TrtBackend.run_impl

        def one_graph_for_all(self, graph, io, bindings):  # a broken backend: ignores the address set
            if self._captured:
                next(iter(self._captured.values())).launch(self.stream)
                return
            real_key(self, graph, io, bindings)

        monkeypatch.setattr(trt_backend.TrtBackend, "run_impl", one_graph_for_all)
        got = s.generate(REQUEST, decode=False).latents
    assert not np.array_equal(got, reference.generate(REQUEST, decode=False).latents)


def test_without_shared_scratch_each_context_runs(planned, gpu, reference):
    with Sampler.load(planned, backend="trt", shared_scratch=False) as s:
        assert s.backend.scratch is None
        got = s.generate(REQUEST, decode=False).latents
    np.testing.assert_array_equal(got, reference.generate(REQUEST, decode=False).latents)


def test_plan_io_against_the_manifest_is_one_line(planned, gpu, monkeypatch):
    from dit_export.errors import UserError

    fake = sys.modules["tensorrt"]
    orig = fake.ICudaEngine.get_tensor_shape
    monkeypatch.setattr(
        fake.ICudaEngine, "get_tensor_shape", lambda self, n: (3,) if n == "y" else orig(self, n)
    )
    with pytest.raises(UserError) as e:
        Sampler.load(planned, backend="trt")
    assert "does not match the manifest's dit_step I/O: y is input int64 (3,) in the graph" in str(e.value)
