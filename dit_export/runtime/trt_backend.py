"""TensorRT backend: fresh plans from the folder, device buffers allocated once, one stream.

- Plans are looked up by the manifest's `"engines"` records for this TensorRT release and GPU
  (`dit_export.engine.plans`), hash-checked, deserialized, and their I/O checked against the
  manifest.
- I/O is name-based: `set_tensor_address` for every input and output, `execute_async_v3` on a
  non-blocking stream. Addresses are re-set only when a binding changes (the latent ping-pong).
- One scratch block sized max(engine.device_memory_size_v2) is shared by every context
  (TensorRT ≥ 10.1: `ExecutionContextAllocationStrategy.USER_MANAGED` + `set_device_memory`, in
  10.x and 11.x alike; 10.0 has neither, so there each context keeps its own scratch). The
  contexts never run concurrently: one stream orders them.
- Optional CUDA graphs for `dit_step`: the first run of an address set executes uncaptured, then
  it is captured and replayed. The two latent buffers give two graphs (x→x' and x'→x). Rows of
  tables (timestep, coefficients, noise) are copied device-to-device into fixed staging inputs
  before each replay, so the captured addresses never change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dit_export.errors import UserError
from dit_export.runtime.backend import Backend, Buffer

if TYPE_CHECKING:
    from dit_export.engine.cuda import Graph

CUDA_GRAPH_GRAPHS = ("dit_step",)


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
        manifest: dict,
        graphs: Sequence[str],
        cuda_graph: bool = True,
        shared_scratch: bool = True,
    ) -> None:
        super().__init__(folder, manifest, graphs)
        from dit_export.engine import cuda, trt_api
        from dit_export.engine.plans import Target, find_plan

        self._cuda = cuda
        self.target = Target.current()
        paths = {g: find_plan(self.folder, manifest, g, self.target) for g in self.graphs}
        loaded = trt_api.load_plans((paths[g].name, paths[g].read_bytes()) for g in self.graphs)
        self.engines = dict(zip(self.graphs, loaded))
        for g, eng in self.engines.items():
            self._check_io(g, eng)
        self.stream = cuda.Stream()
        self._memory: list = []
        self.scratch = None
        sizes = [e.scratch_bytes() for e in self.engines.values()]
        if shared_scratch and trt_api.shared_scratch_supported() and all(s is not None for s in sizes):
            size = max(int(s or 0) for s in sizes)
            self.scratch = cuda.DeviceMemory(size)
            for eng in self.engines.values():
                eng.create_context(self.scratch.ptr, size)
        else:
            for eng in self.engines.values():
                eng.create_context(None, 0)
        self.cuda_graph = bool(cuda_graph)
        self._bound: dict[str, dict[str, int]] = {g: {} for g in self.graphs}
        self._staging: dict[tuple[str, str], TrtBuffer] = {}
        self._captured: dict[tuple, Graph] = {}
        self._warm: set[str] = set()
        self._capture_failed: str | None = None

    def _check_io(self, graph: str, eng) -> None:
        io = self.graphs[graph]
        have = {t.name: (t.is_input, t.shape, t.dtype) for t in eng.tensors()}
        want = {t.name: (True, t.shape, t.dtype) for t in io.inputs}
        want.update({t.name: (False, t.shape, t.dtype) for t in io.outputs})
        if have != want:
            diff = sorted(set(have.items()) ^ set(want.items()))
            raise UserError(
                f"{eng.label} does not match the manifest's {graph} I/O (first difference: {diff[0]})"
            )

    # -- buffers -------------------------------------------------------------------------------
    def alloc(self, shape, dtype, *, table: bool = False) -> TrtBuffer:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        mem = self._cuda.DeviceMemory(nbytes)
        self._memory.append(mem)
        return TrtBuffer(mem.ptr, shape, dtype, owner=mem)

    def write(self, buf: Buffer, array: np.ndarray) -> None:
        assert isinstance(buf, TrtBuffer)
        a = self.check_write(buf, array)
        # Pageable host memory: the copy is staged before this returns, so `a` may go away.
        self._cuda.copy_h2d(buf.ptr, int(a.ctypes.data), a.nbytes, self.stream)

    def read(self, buf: Buffer) -> np.ndarray:
        assert isinstance(buf, TrtBuffer)
        out = np.empty(buf.shape, dtype=buf.dtype)
        self._cuda.copy_d2h(int(out.ctypes.data), buf.ptr, buf.nbytes, self.stream)
        self.stream.synchronize()
        return out

    # -- running -------------------------------------------------------------------------------
    def run(self, graph: str, bindings: Mapping[str, Buffer]) -> None:
        io = self.check_bindings(graph, bindings)
        use_graph = self.cuda_graph and graph in CUDA_GRAPH_GRAPHS and self._capture_failed is None
        addrs = []
        for spec in io.inputs + io.outputs:
            b = bindings[spec.name]
            assert isinstance(b, TrtBuffer)
            ptr = b.ptr
            if use_graph and b.view:  # table rows: copy into a fixed input the graph was captured with
                st = self._staging.get((graph, spec.name))
                if st is None:
                    st = self._staging[(graph, spec.name)] = self.alloc(spec.shape, spec.np_dtype)
                self._cuda.copy_d2d(st.ptr, b.ptr, b.nbytes, self.stream)
                ptr = st.ptr
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

    def describe(self) -> str:
        parts = [self.target.describe()]
        if self.scratch is not None:
            parts.append(f"shared scratch {self.scratch.nbytes / 2**20:.0f} MiB")
        if self.cuda_graph:
            parts.append("CUDA graph off (capture failed)" if self._capture_failed else "CUDA graph on")
        return ", ".join(parts)

    def close(self) -> None:
        for g in self._captured.values():
            g.close()
        self._captured.clear()
        for eng in self.engines.values():
            eng.close()
        self.engines.clear()
        for mem in self._memory:
            mem.close()
        self._memory.clear()
        if self.scratch is not None:
            self.scratch.close()
            self.scratch = None
        self.stream.close()
