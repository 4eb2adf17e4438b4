"""ONNX Runtime backend: the exported graphs on CPU, CUDA, or ORT's TensorRT provider.

Every run goes through an I/O binding on buffers allocated once: host numpy arrays on the CPU
provider (bound by pointer, zero copy), device OrtValues for the latents on CUDA/TensorRT
providers (the step's output stays on the GPU between steps). Tables (schedule rows, noise)
stay on the host and are bound row by row; ORT copies each row in.

Where the buffers live follows the providers the sessions really use (`get_providers()`), not
the ones asked for: when the CUDA provider fails to load, ONNX Runtime silently runs on the CPU,
and so do our buffers and `describe()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dit_export.backends import default_ort_providers, env_threads
from dit_export.errors import UserError
from dit_export.export.manifest import GraphSpec, dtypes
from dit_export.export.precision import ort_disabled_optimizers
from dit_export.lazy import optional_import
from dit_export.runtime.backend import Backend, Buffer

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ORT_TYPES = dtypes.names_by("ort")  # "tensor(float)" → "float32", from the one dtype table


class OrtBuffer(Buffer):
    """Host memory (`array`) or a device OrtValue (`value`), addressed by pointer for binding."""

    def __init__(self, shape: Sequence[int], dtype: np.dtype, array=None, value=None) -> None:
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.array: np.ndarray | None = array
        self.value = value

    @property
    def device(self) -> str:
        return "cpu" if self.array is not None else "cuda"

    @property
    def ptr(self) -> int:
        return int(self.array.ctypes.data) if self.array is not None else int(self.value.data_ptr())

    def row(self, k: int) -> OrtBuffer:
        if self.array is None:
            raise ValueError("rows of device buffers are not bound directly; allocate tables with table=True")
        return OrtBuffer(self.shape[1:], self.dtype, array=self.array[k])


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu provides it, else CPU (the rule: `backends.default_ort_providers`)."""
    return default_ort_providers()


def session_io(sess) -> dict[str, tuple[bool, tuple, str]]:
    """{name: (is_input, shape, dtype)} of a loaded session (dynamic dims stay strings)."""
    out = {}
    for is_input, items in ((True, sess.get_inputs()), (False, sess.get_outputs())):
        for a in items:
            shape = tuple(d if isinstance(d, int) else str(d) for d in a.shape)
            out[a.name] = (is_input, shape, ORT_TYPES.get(a.type, a.type))
    return out


class OrtBackend(Backend):
    name = "ort"

    def __init__(
        self,
        folder: Path,
        manifest,
        graphs: Sequence[str],
        providers: Sequence[str] | None = None,
        optimization: str = "all",
        threads: int = 0,
    ) -> None:
        super().__init__(folder, manifest, graphs)
        ort = self._ort = optional_import("onnxruntime")
        have = ort.get_available_providers()
        asked = list(providers) if providers else default_providers()
        chosen = [p for p in asked if p in have]
        if not chosen:
            raise UserError(f"onnxruntime {ort.__version__} has no {asked[0]} (available: {', '.join(have)})")
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        self.requested = asked
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        threads = threads or env_threads()
        if threads:
            so.intra_op_num_threads = threads
        self._session_args = (so, chosen, [self._provider_options(p) for p in chosen])
        self.sessions = {}
        self.bindings = {}
        self.add_graphs_impl(list(self.graphs))
        # What the sessions really run on (a provider that failed to load is silently dropped).
        in_use = [s.get_providers()[0] for s in self.sessions.values()] or [chosen[0]]
        self.active = in_use[0]
        self.providers = list(next(iter(self.sessions.values())).get_providers()) if self.sessions else chosen
        self.device = "cuda" if all(p in GPU_PROVIDERS for p in in_use) else "cpu"
        self.unused = [p for p in asked if p not in in_use and p != "CPUExecutionProvider"]

    def add_graphs_impl(self, names: Sequence[str]) -> None:
        """One session (and I/O binding) per graph, checked against the manifest."""
        ort, (so, chosen, provider_options) = self._ort, self._session_args
        for g in names:
            io = self.graphs[g]
            path = self.manifest.path(io.file)
            try:
                sess = ort.InferenceSession(
                    str(path),
                    sess_options=so,
                    providers=chosen,
                    provider_options=provider_options,
                    disabled_optimizers=ort_disabled_optimizers(self.manifest.precision),  # int8 (issue 22)
                )
            except Exception as e:  # onnxruntime raises its own pybind exception types
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise UserError(f"onnxruntime cannot load {path}: {first[:300]}") from None
            self.check_loaded_io(g, session_io(sess), io.file.file)
            self.sessions[g] = sess
            self.bindings[g] = sess.io_binding()

    def _provider_options(self, provider: str) -> dict:
        if (
            provider == "TensorrtExecutionProvider"
        ):  # ORT builds its own engines: cache them beside the graphs
            cache = self.folder / "ort_trt_cache"
            return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}
        return {}

    # -- buffers -------------------------------------------------------------------------------
    def alloc_impl(self, shape, dtype, table: bool) -> OrtBuffer:
        if self.device == "cpu" or table:
            return OrtBuffer(shape, dtype, array=np.zeros(tuple(shape), dtype=dtype))
        value = self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cuda", 0)
        return OrtBuffer(shape, dtype, value=value)

    def write_impl(self, buf: Buffer, a: np.ndarray) -> None:
        assert isinstance(buf, OrtBuffer)
        if buf.array is not None:
            buf.array[: a.shape[0]] = a
        elif a.shape[0] == buf.shape[0]:
            buf.value.update_inplace(a)
        else:
            full = buf.value.numpy()
            full[: a.shape[0]] = a
            buf.value.update_inplace(full)

    def read_impl(self, buf: Buffer) -> np.ndarray:
        assert isinstance(buf, OrtBuffer)
        return buf.array.copy() if buf.array is not None else np.asarray(buf.value.numpy())

    def free_bytes(self) -> int | None:
        """Host memory on the CPU provider; unknown on a GPU one (ONNX Runtime does not say)."""
        return super().free_bytes() if self.device == "cpu" else None

    # -- running -------------------------------------------------------------------------------
    def run_impl(self, graph: str, io: GraphSpec, bindings: Mapping[str, Buffer]) -> None:
        b = self.bindings[graph]
        for t in io.inputs:
            buf = bindings[t.name]
            assert isinstance(buf, OrtBuffer)
            b.bind_input(t.name, buf.device, 0, buf.dtype, list(buf.shape), buf.ptr)
        for t in io.outputs:
            buf = bindings[t.name]
            assert isinstance(buf, OrtBuffer)
            b.bind_output(t.name, buf.device, 0, buf.dtype, list(buf.shape), buf.ptr)
        self.sessions[graph].run_with_iobinding(b)
        if self.device != "cpu":
            b.synchronize_outputs()

    def describe(self) -> str:
        note = f"; {', '.join(self.unused)} requested, not in use" if self.unused else ""
        return f"onnxruntime {self._ort.__version__} {self.active} ({self.device}{note})"

    def close(self) -> None:
        self.bindings.clear()
        self.sessions.clear()
