"""The one runner interface every runtime backend implements (design.md, contract 3).

A backend loads the graphs named in the manifest, allocates tensors once, runs a graph by name
on bound tensors, and says which device/provider it uses. The sampler loop, batching, padding,
noise and image conversion live once, above it (`dit_export.runtime.sampler`); verify and bench
drive the same interface.

As polygraphy's `BaseRunner`: the base class owns every check, once, in its public methods
(`alloc`, `write`, `read`, `run`: graph loaded, binding names, shapes and dtypes against the
manifest) and then calls the subclass's `*_impl` hook, which only does the work. A subclass
also cross-checks the graph it really loaded against the manifest with `check_loaded_io`.

Buffers are backend-owned tensors (host or device memory). A *table* buffer holds rows that the
loop binds one at a time (`buf.row(k)`): schedule rows, noise per step. Binding a row is a view,
never arithmetic, so the loop itself computes nothing.

numpy only: the torch, TensorRT and C++ backends import their libraries when they are created.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dit_export.backends import BACKENDS, canonical_backend
from dit_export.errors import UserError
from dit_export.export.manifest import GraphSpec, Manifest, TensorSpec
from dit_export.runtime.folder import ExportFolder

__all__ = [
    "BACKENDS",
    "Backend",
    "Buffer",
    "GraphSpec",
    "Manifest",
    "TensorSpec",
    "as_manifest",
    "make_backend",
]

_MODULES = {
    "ort": ("dit_export.runtime.ort_backend", "OrtBackend"),
    "trt": ("dit_export.runtime.trt_backend", "TrtBackend"),
    "torch": ("dit_export.runtime.torch_backend", "TorchBackend"),
    "cpp": ("dit_export.runtime.cpp_backend", "CppBackend"),
}


class Buffer(ABC):
    """A tensor owned by a backend, allocated once; `row(k)` views row k of a table."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @abstractmethod
    def row(self, k: int) -> Buffer: ...


class Backend(ABC):
    """Load graphs, allocate I/O once, run a graph by name on bound buffers, describe itself.

    Public methods check, `*_impl` hooks work. Subclasses implement `alloc_impl`, `write_impl`,
    `read_impl`, `run_impl` and `describe` (and `close` when they hold resources).
    """

    name: str = ""

    def __init__(self, folder: Path, manifest: Manifest, graphs: Sequence[str]) -> None:
        self.manifest = as_manifest(folder, manifest)
        self.folder = Path(folder)
        self.graphs: dict[str, GraphSpec] = {g: self.manifest.graph(g) for g in graphs}

    def has_graph(self, graph: str) -> bool:
        return graph in self.graphs

    def add_graphs(self, names: Sequence[str]) -> None:
        """Load more of the folder's graphs after creation (the forecast cache's step graphs, on the
        first cached request). A backend that loads everything up front (TensorRT's shared scratch
        is sized then; C++) refuses in one line."""
        new = [g for g in names if g not in self.graphs]
        if not new:
            return
        self.graphs.update({g: self.manifest.graph(g) for g in new})
        try:
            self.add_graphs_impl(new)
        except BaseException:
            for g in new:
                self.graphs.pop(g, None)
            raise

    # -- the checked public interface -----------------------------------------------------------
    def alloc(self, shape: Sequence[int], dtype: str | np.dtype, *, table: bool = False) -> Buffer:
        """A tensor in backend memory; `table=True`: only ever read row by row (may stay on the host)."""
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"cannot allocate a tensor of shape {shape}")
        return self.alloc_impl(shape, np.dtype(dtype), table)

    def write(self, buf: Buffer, array: np.ndarray) -> None:
        """Copy host data in; a shorter first axis fills a prefix (partial table blocks)."""
        a = np.ascontiguousarray(array, dtype=buf.dtype)
        if a.ndim != len(buf.shape) or a.shape[1:] != tuple(buf.shape[1:]) or a.shape[0] > buf.shape[0]:
            raise ValueError(f"cannot write {a.shape} into a buffer of shape {tuple(buf.shape)}")
        self.write_impl(buf, a)

    def read(self, buf: Buffer) -> np.ndarray:
        """A host copy of the buffer (waits for pending work)."""
        return self.read_impl(buf)

    def run(self, graph: str, bindings: Mapping[str, Buffer]) -> None:
        """Run `graph` with every input and output bound to a buffer (may return before it finishes)."""
        self.run_impl(graph, self.check_bindings(graph, bindings), bindings)

    @abstractmethod
    def describe(self) -> str:
        """One line: backend, library version, device and provider."""

    def close(self) -> None:  # noqa: B027 (optional hook: backends without resources keep it)
        """Free what the backend holds (engines, sessions, device memory)."""

    def free_bytes(self) -> int | None:
        """Memory free where `alloc` puts tensors (None: unknown). Default: the host's available
        memory; device backends override it. Asked before a large allocation (the step cache)."""
        import psutil

        return int(psutil.virtual_memory().available)

    # -- what subclasses implement --------------------------------------------------------------
    def add_graphs_impl(self, names: Sequence[str]) -> None:
        """Load `names` (already in `self.graphs`); default: this backend cannot."""
        raise UserError(
            f"the {self.name} backend loads its graphs when it is opened: {', '.join(names)} "
            "were not loaded (Sampler.load(..., cache=True) loads the forecast cache's)"
        )

    @abstractmethod
    def alloc_impl(self, shape: tuple[int, ...], dtype: np.dtype, table: bool) -> Buffer: ...

    @abstractmethod
    def write_impl(self, buf: Buffer, array: np.ndarray) -> None:
        """`array` is C-contiguous, of the buffer's dtype, and fits (a prefix of) the buffer."""

    @abstractmethod
    def read_impl(self, buf: Buffer) -> np.ndarray: ...

    @abstractmethod
    def run_impl(self, graph: str, io: GraphSpec, bindings: Mapping[str, Buffer]) -> None:
        """Bindings hold exactly the graph's inputs and outputs, each of the declared shape and dtype."""

    # -- checks ---------------------------------------------------------------------------------
    def check_bindings(self, graph: str, bindings: Mapping[str, Buffer]) -> GraphSpec:
        io = self.graphs.get(graph)
        if io is None:
            raise UserError(f"{self.name} backend: graph {graph!r} was not loaded")
        if set(bindings) != set(io.names):
            raise ValueError(f"{graph}: bound {sorted(bindings)}, the graph has {sorted(io.names)}")
        for t in io.inputs + io.outputs:
            b = bindings[t.name]
            if tuple(b.shape) != t.shape or np.dtype(b.dtype) != t.np_dtype:
                raise ValueError(
                    f"{graph}: {t.name} is bound to {np.dtype(b.dtype).name} {tuple(b.shape)}, "
                    f"the graph takes {t.dtype} {t.shape}"
                )
        return io

    def check_loaded_io(self, graph: str, actual: Mapping[str, tuple[bool, tuple, str]], what: str) -> None:
        """The I/O of the graph really loaded ({name: (is_input, shape, dtype)}) against the manifest.

        One line naming the first difference (issue 15.3), instead of a library traceback later.
        """
        io = self.graphs[graph]
        want = {t.name: (True, t.shape, t.dtype) for t in io.inputs}
        want.update({t.name: (False, t.shape, t.dtype) for t in io.outputs})
        for name in sorted(set(want) | set(actual)):
            w, a = want.get(name), actual.get(name)
            if w == a:
                continue

            def say(v) -> str:
                return "absent" if v is None else f"{'input' if v[0] else 'output'} {v[2]} {tuple(v[1])}"

            raise UserError(
                f"{what} does not match the manifest's {graph} I/O: {name} is {say(a)} in the graph, "
                f"{say(w)} in manifest.json"
            )


def as_manifest(
    folder: Path | ExportFolder, manifest: Manifest | dict | ExportFolder | None = None
) -> Manifest:
    """The typed manifest, through the folder object: a Manifest or an ExportFolder as is, a parsed
    manifest.json dict validated and typed, None read from the folder (once per ExportFolder)."""
    return ExportFolder.of(folder, manifest).manifest


def make_backend(name: str, folder: Path, manifest: Manifest, graphs: Sequence[str], **options) -> Backend:
    """Create a backend by name (`ort | trt | torch | cpp` or an alias); its library is imported here."""
    module, cls = _MODULES[canonical_backend(name)]
    return getattr(importlib.import_module(module), cls)(folder, manifest, graphs, **options)
