"""TensorRT backend: fresh plans from the folder, device buffers allocated once, one stream.

- Plans are found through their artifact records (`plans/<graph>.trt<M>.<m>.sm<cc>.plan.json`,
  `dit_export.engine.plans.find_plan`) for this TensorRT release and GPU, hash-checked,
  deserialized, and their I/O checked against the manifest.
- I/O is name-based: `set_tensor_address` for every input and output, `execute_async_v3` on a
  non-blocking stream. Addresses are re-set only when a binding changes (the latent ping-pong).
- One scratch block sized max(engine.device_memory_size_v2) is shared by every context
  (TensorRT ≥ 10.1: `ExecutionContextAllocationStrategy.USER_MANAGED` + `set_device_memory`, in
  10.x and 11.x alike; 10.0 has neither, so there each context keeps its own scratch). The
  contexts never run concurrently: one stream orders them.
- Rows of tables (timestep, coefficients, noise) are never bound in place: a row starts at
  k × row-bytes, which is not 256-byte aligned (TensorRT requires it). Each run copies the
  step's rows device-to-device into fixed staging inputs of their own cudaMalloc (256-byte
  aligned), with CUDA graphs on or off.
- Optional CUDA graphs for `dit_step` and the forecast cache's `dit_step_full` /
  `dit_step_forecast`: the first run of an address set executes uncaptured, then it is captured
  and replayed. The two latent buffers give two graphs (x→x' and x'→x); the staging inputs keep
  every other address fixed, except the cache's two buffers, which swap after every full step:
  each cached graph gets up to four address sets (latent side × cache side), each captured once.

The TensorRT and CUDA calls go through `dit_export.engine.trt_api` and `dit_export.engine.cuda`,
which import `tensorrt` and cuda-python at first use (tests/runtime/test_trt_sim.py replaces both there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dit_export.engine import cuda, trt_api
from dit_export.engine.plans import Target, find_plan
from dit_export.errors import UserError
from dit_export.export.manifest import GraphSpec
from dit_export.runtime.backend import Backend, Buffer
from dit_export.sampling.cache import CACHE_GRAPHS

CUDA_GRAPH_GRAPHS = ("dit_step", *CACHE_GRAPHS)
ALIGNMENT = 256  # bytes: TensorRT's I/O address alignment (cudaMalloc gives at least this)


class TrtBuffer(Buffer):
    def __init__(
        self, ptr: int, shape: Sequence[int], dtype: np.dtype, owner=None, view: bool = False
    ) -> None:
        self.ptr, self.shape, self.dtype = int(ptr), tuple(int(d) for d in shape), np.dtype(dtype)
        self.owner, self.view = owner, view  # owner: the DeviceMemory (None for views)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def row(self, k: int) -> TrtBuffer:
        sub = TrtBuffer(self.ptr, self.shape[1:], self.dtype, view=True)
        sub.ptr = self.ptr + int(k) * sub.nbytes
        return sub


class TrtBackend(Backend):
    name = "trt"

    def __init__(
        self,
        folder: Path,
        manifest,
        graphs: Sequence[str],
        cuda_graph: bool = True,
        shared_scratch: bool = True,
    ) -> None:
        super().__init__(folder, manifest, graphs)
        self._cuda = cuda
        self.target = Target.current()
        paths = {g: find_plan(self.folder, self.manifest, g, self.target) for g in self.graphs}
        loaded = trt_api.load_plans((paths[g].name, paths[g].read_bytes()) for g in self.graphs)
        self.engines = dict(zip(self.graphs, loaded))
        for g, eng in self.engines.items():
            self.check_loaded_io(
                g, {t.name: (t.is_input, t.shape, t.dtype) for t in eng.tensors()}, eng.label
            )
        self._memory: list = []
        self.scratch = None
        self._staging: dict[tuple[str, str], TrtBuffer] = {}
        self._captured: dict[tuple, cuda.Graph] = {}
        self.stream = cuda.Stream()
        try:
            sizes = [e.scratch_bytes() for e in self.engines.values()]
            if shared_scratch and trt_api.shared_scratch_supported() and all(s is not None for s in sizes):
                size = max(int(s or 0) for s in sizes)
                self.scratch = cuda.DeviceMemory(size)
                for eng in self.engines.values():
                    eng.create_context(self.scratch.ptr, size)
            else:
                for eng in self.engines.values():
                    eng.create_context(None, 0)
        except BaseException:  # a context TensorRT refused (out of memory): free the scratch and stream
            self.close()
            raise
        self.cuda_graph = bool(cuda_graph)
        self._bound: dict[str, dict[str, int]] = {g: {} for g in self.graphs}
        self._warm: set[str] = set()
        self._capture_failed: str | None = None

    # -- buffers -------------------------------------------------------------------------------
    def alloc_impl(self, shape, dtype, table: bool) -> TrtBuffer:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        mem = self._cuda.DeviceMemory(nbytes)
        self._memory.append(mem)
        return TrtBuffer(mem.ptr, shape, dtype, owner=mem)

    def write_impl(self, buf: Buffer, a: np.ndarray) -> None:
        assert isinstance(buf, TrtBuffer)
        # Pageable host memory: the copy is staged before this returns, so `a` may go away.
        self._cuda.copy_h2d(buf.ptr, int(a.ctypes.data), a.nbytes, self.stream)

    def read_impl(self, buf: Buffer) -> np.ndarray:
        assert isinstance(buf, TrtBuffer)
        out = np.empty(buf.shape, dtype=buf.dtype)
        self._cuda.copy_d2h(int(out.ctypes.data), buf.ptr, buf.nbytes, self.stream)
        self.stream.synchronize()
        return out

    # -- running -------------------------------------------------------------------------------
    def run_impl(self, graph: str, io: GraphSpec, bindings: Mapping[str, Buffer]) -> None:
        use_graph = self.cuda_graph and graph in CUDA_GRAPH_GRAPHS and self._capture_failed is None
        addrs = []
        for spec in io.inputs + io.outputs:
            b = bindings[spec.name]
            assert isinstance(b, TrtBuffer)
            ptr = b.ptr
            if b.view:  # a table row: copy into a fixed, aligned input of its own
                st = self._staging.get((graph, spec.name))
                if st is None:
                    st = self.alloc_impl(spec.shape, spec.np_dtype, False)
                    self._staging[(graph, spec.name)] = st
                self._cuda.copy_d2d(st.ptr, b.ptr, b.nbytes, self.stream)
                ptr = st.ptr
            if ptr % ALIGNMENT:
                raise UserError(
                    f"{graph}: {spec.name} would be bound at {ptr:#x}, not {ALIGNMENT}-byte aligned"
                )
            addrs.append((spec.name, ptr))
        eng = self.engines[graph]
        if not use_graph:
            self._set_addresses(graph, addrs)
            eng.execute(self.stream.handle)
            return
        key = (graph, tuple(addrs))
        g = self._captured.get(key)
        if g is None:
            self._set_addresses(graph, addrs)
            if graph not in self._warm:  # TensorRT's first enqueue may allocate: never inside a capture
                eng.execute(self.stream.handle)
                self._warm.add(graph)
            try:
                g = self._cuda.Graph(self.stream, lambda: eng.execute(self.stream.handle))
            except UserError as e:  # run on without graphs rather than fail the request
                self._capture_failed = str(e)
                eng.execute(self.stream.handle)
                return
            self._captured[key] = g
        g.launch(self.stream)

    def _set_addresses(self, graph: str, addrs: list[tuple[str, int]]) -> None:
        bound, eng = self._bound[graph], self.engines[graph]
        for name, ptr in addrs:
            if bound.get(name) != ptr:
                eng.set_address(name, ptr)
                bound[name] = ptr

    def free_bytes(self) -> int | None:
        return self._cuda.mem_free()

    def describe(self) -> str:
        parts = [self.target.describe()]
        if self.scratch is not None:
            parts.append(f"shared scratch {self.scratch.nbytes / 2**20:.0f} MiB")
        if self.cuda_graph:
            parts.append("CUDA graph off (capture failed)" if self._capture_failed else "CUDA graph on")
        return ", ".join(parts)

    def close(self) -> None:
        """Wait for the stream, then free graphs, contexts and engines, memory, the stream.

        Work enqueued by `run` may still be executing (a caller need not read a result first):
        a graph exec, a context or the memory it uses must not go away under it. The resources
        are freed even when the wait reports an error (which is raised afterwards).
        """
        if self.stream.stream is None:  # closed already
            return
        try:
            self.stream.synchronize()
        finally:
            for g in self._captured.values():
                g.close()
            self._captured.clear()
            for eng in self.engines.values():
                eng.close()
            self.engines.clear()
            for mem in self._memory:
                mem.close()
            self._memory.clear()
            self._staging.clear()
            if self.scratch is not None:
                self.scratch.close()
                self.scratch = None
            self.stream.close()
