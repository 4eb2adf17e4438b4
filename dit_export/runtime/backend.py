"""The one small interface every runtime backend implements (design.md, contract 3).

A backend loads the graphs named in the manifest, allocates tensors once, runs a graph by name
on bound tensors, and says which device/provider it uses. The sampler loop, batching, padding,
noise and image conversion live once, above it (`dit_export.runtime.sampler`).

Buffers are backend-owned tensors (host or device memory). A *table* buffer holds rows that the
loop binds one at a time (`buf.row(k)`): schedule rows, noise per step. Binding a row is a view,
never arithmetic, so the loop itself computes nothing.

numpy only: the torch and TensorRT backends import their libraries when they are created.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dit_export.errors import UserError

BACKENDS = ("ort", "trt", "torch", "cpp")
ALIASES = {"onnxruntime": "ort", "tensorrt": "trt", "pytorch": "torch"}
_MODULES = {
    "ort": ("dit_export.runtime.ort_backend", "OrtBackend"),
    "trt": ("dit_export.runtime.trt_backend", "TrtBackend"),
    "torch": ("dit_export.runtime.torch_backend", "TorchBackend"),
    "cpp": ("dit_export.runtime.cpp_backend", "CppBackend"),
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as the manifest declares it (static shape)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, float16, int64, ...

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


@dataclass(frozen=True)
class GraphIO:
    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs + self.outputs)

    def spec(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(name)


def graph_io(manifest: dict, graph: str) -> GraphIO:
    """The I/O of one graph from the manifest; a one-line error when the export lacks it."""
    g = manifest["graphs"].get(graph)
    if g is None:
        what = (
            "no VAE decoder (exported with --vae none)" if graph == "vae_decoder" else f"no graph {graph!r}"
        )
        raise UserError(f"this export has {what}")

    def specs(items: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], tuple(int(d) for d in t["shape"]), t["dtype"]) for t in items)

    return GraphIO(graph, g["file"], specs(g["inputs"]), specs(g["outputs"]))


class Buffer(ABC):
    """A tensor owned by a backend, allocated once; `row(k)` views row k of a table."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @abstractmethod
    def row(self, k: int) -> Buffer: ...


class Backend(ABC):
    """Load graphs, allocate I/O once, run a graph by name on bound buffers, describe itself."""

    name: str = ""

    def __init__(self, folder: Path, manifest: dict, graphs: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.graphs: dict[str, GraphIO] = {g: graph_io(manifest, g) for g in graphs}

    def has_graph(self, graph: str) -> bool:
        return graph in self.graphs

    @abstractmethod
    def alloc(self, shape: Sequence[int], dtype: str | np.dtype, *, table: bool = False) -> Buffer:
        """A tensor in backend memory; `table=True`: only ever read row by row (may stay on the host)."""

    @abstractmethod
    def write(self, buf: Buffer, array: np.ndarray) -> None:
        """Copy host data in; a shorter first axis fills a prefix (partial table blocks)."""

    @abstractmethod
    def read(self, buf: Buffer) -> np.ndarray:
        """A host copy of the buffer (waits for pending work)."""

    @abstractmethod
    def run(self, graph: str, bindings: Mapping[str, Buffer]) -> None:
        """Run `graph` with every input and output bound to a buffer (may return before it finishes)."""

    @abstractmethod
    def describe(self) -> str:
        """One line: backend, library version, device and provider."""

    def close(self) -> None:  # noqa: B027 (optional hook: backends without resources keep it)
        """Free what the backend holds (engines, sessions, device memory)."""

    def check_bindings(self, graph: str, bindings: Mapping[str, Buffer]) -> GraphIO:
        io = self.graphs.get(graph)
        if io is None:
            raise UserError(f"{self.name} backend: graph {graph!r} was not loaded")
        if set(bindings) != set(io.names):
            raise ValueError(f"{graph}: bound {sorted(bindings)}, the graph has {sorted(io.names)}")
        return io

    @staticmethod
    def check_write(buf: Buffer, array: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(array, dtype=buf.dtype)
        if a.shape[1:] != tuple(buf.shape[1:]) or a.ndim != len(buf.shape) or a.shape[0] > buf.shape[0]:
            raise ValueError(f"cannot write {a.shape} into a buffer of shape {tuple(buf.shape)}")
        return a


def canonical_backend(name: str) -> str:
    key = ALIASES.get(name, name)
    if key not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return key


def make_backend(name: str, folder: Path, manifest: dict, graphs: Sequence[str], **options) -> Backend:
    """Create a backend by name; its heavy library is imported only here."""
    key = canonical_backend(name)
    module, cls = _MODULES[key]
    return getattr(importlib.import_module(module), cls)(folder, manifest, graphs, **options)
