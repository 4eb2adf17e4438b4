"""The C++ runtime (`cpp/`, libdit_runtime.so) from Python, through its C API with ctypes.

Two ways in, both on the same exported folder and manifest:

- `CppSampler`: a `Sampler` whose loop is the C++ one (`dit_generate`): chunking, Philox noise,
  schedule rows, step graphs (with the forecast cache's plan and buffers when `cache_interval` > 1)
  and VAE all happen in C++. Everything else (the request and its validation, `generate`/`sample`,
  defaults, uint8 conversion) is `Sampler`'s.

      with CppSampler.load("engines/s8", backend="cpu") as s:
          images = s.sample([207, 360], seed=0, cfg_scale=4.0, steps=25)   # (2, H, W, 3) uint8

- `CppBackend`: a `dit_export.runtime.backend.Backend` whose graphs run in the C++ library
  (`dit_run_graph` on host buffers), so the Python `Sampler` loop can drive it like `ort`.

The library is loaded lazily, on first use: `DIT_RUNTIME_LIB` names it, else the build of
`scripts/build_cpp.sh` (`cpp/build/libdit_runtime.so` in a source checkout) is used; a missing
library is a one-line `UserError` that says how to build it. numpy + ctypes only.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dit_export.errors import UserError
from dit_export.export.manifest import GraphSpec, Manifest
from dit_export.runtime.backend import Backend, Buffer
from dit_export.runtime.sampler import Sampler
from dit_export.sampling.cache import CACHE_GRAPHS
from dit_export.sampling.noise import make_noise
from dit_export.sampling.request import SampleRequest

LIB_ENV = "DIT_RUNTIME_LIB"
LIB_NAME = "libdit_runtime.so"
BACKEND_KINDS = {"auto": 0, "cpu": 1, "tensorrt": 2, "trt": 2}
# what the C++ backends load (the forecast cache's step graphs when the folder has them compiled)
CPP_GRAPHS = ("dit_step", *CACHE_GRAPHS, "vae_decoder")
KIND_NAMES = {0: "auto", 1: "cpu", 2: "tensorrt"}

_NOISE_FN = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_float),
    ctypes.c_size_t,
)
_PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


class _OpenOptions(ctypes.Structure):
    _fields_ = [
        ("backend", ctypes.c_int),
        ("verify_hashes", ctypes.c_int),
        ("num_threads", ctypes.c_int),
        ("device", ctypes.c_int),
        ("cuda_graph", ctypes.c_int),
        ("load_vae", ctypes.c_int),
    ]


class _Info(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int32),
        ("image_size", ctypes.c_int32),
        ("latent_channels", ctypes.c_int32),
        ("latent_size", ctypes.c_int32),
        ("num_classes", ctypes.c_int32),
        ("has_vae", ctypes.c_int32),
        ("coef_size", ctypes.c_int32),
        ("backend", ctypes.c_int),
        ("model_name", ctypes.c_char_p),
        ("precision", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
    ]


class _Params(ctypes.Structure):
    _fields_ = [
        ("labels", ctypes.POINTER(ctypes.c_int64)),
        ("num_images", ctypes.c_size_t),
        ("seed", ctypes.c_uint64),
        ("cfg_scale", ctypes.c_float),
        ("steps", ctypes.c_int32),
        ("sampler", ctypes.c_char_p),
        ("timesteps", ctypes.POINTER(ctypes.c_int64)),
        ("coefs", ctypes.POINTER(ctypes.c_float)),
        ("noise_fn", _NOISE_FN),
        ("noise_user", ctypes.c_void_p),
        ("progress_fn", _PROGRESS_FN),
        ("progress_user", ctypes.c_void_p),
        ("cache_interval", ctypes.c_int32),
        ("cache_order", ctypes.c_int32),
    ]


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library_candidates() -> list[Path]:
    """Where the library is looked for: $DIT_RUNTIME_LIB, else the source checkout's cpp/build."""
    env = os.environ.get(LIB_ENV)
    if env:
        return [Path(env)]
    root = Path(__file__).resolve().parents[2]
    return [root / "cpp" / "build" / LIB_NAME]


def load_library() -> ctypes.CDLL:
    """The C library, loaded once; a one-line UserError when it is not built."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        candidates = library_candidates()
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            where = candidates[0]
            raise UserError(
                f"the C++ runtime library is not built ({where} is missing): run `bash scripts/build_cpp.sh`"
                f" in the dit_export checkout, or set {LIB_ENV} to a built {LIB_NAME}"
            )
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise UserError(f"cannot load the C++ runtime {path}: {str(e).splitlines()[0]}") from None
        _declare(lib)
        _lib = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    c = ctypes
    lib.dit_open_options_init.argtypes = [c.POINTER(_OpenOptions)]
    lib.dit_open_options_init.restype = None
    lib.dit_open.argtypes = [c.c_char_p, c.POINTER(_OpenOptions)]
    lib.dit_open.restype = c.c_void_p
    lib.dit_close.argtypes = [c.c_void_p]
    lib.dit_close.restype = None
    lib.dit_get_info.argtypes = [c.c_void_p, c.POINTER(_Info)]
    lib.dit_sample_params_init.argtypes = [c.POINTER(_Params)]
    lib.dit_sample_params_init.restype = None
    lib.dit_sample.argtypes = [c.c_void_p, c.POINTER(_Params), c.c_void_p]
    lib.dit_generate.argtypes = [c.c_void_p, c.POINTER(_Params), c.c_void_p, c.c_void_p]
    lib.dit_run_graph.argtypes = [
        c.c_void_p,
        c.c_char_p,
        c.c_size_t,
        c.POINTER(c.c_char_p),
        c.POINTER(c.c_void_p),
    ]
    lib.dit_images_to_uint8.argtypes = [c.c_void_p, c.c_size_t, c.c_int32, c.c_int32, c.c_void_p]
    lib.dit_philox_normal.argtypes = [c.c_uint64, c.c_uint32, c.c_uint32, c.c_void_p, c.c_size_t]
    lib.dit_last_error.argtypes = []
    lib.dit_last_error.restype = c.c_char_p
    lib.dit_last_status.argtypes = []
    lib.dit_version.argtypes = []
    lib.dit_version.restype = c.c_char_p
    for fn in (
        "dit_get_info",
        "dit_sample",
        "dit_generate",
        "dit_run_graph",
        "dit_images_to_uint8",
        "dit_philox_normal",
        "dit_last_status",
    ):
        getattr(lib, fn).restype = c.c_int


def _check(lib: ctypes.CDLL, rc: int) -> None:
    if rc != 0:
        raise UserError(lib.dit_last_error().decode("utf-8", "replace") or f"dit_runtime error {rc}")


def version() -> str:
    """'0.1.0 (backends: cpu-aoti)': the library's version and compiled-in backends."""
    return load_library().dit_version().decode()


def philox_normal(seed: int, draw: int, image: int, shape: tuple[int, ...]) -> np.ndarray:
    """The C++ Philox noise of one image (docs/noise.md), for comparing with the numpy one."""
    lib = load_library()
    out = np.empty(shape, dtype=np.float32)
    _check(lib, lib.dit_philox_normal(seed, draw, image, out.ctypes.data, out.size))
    return out


class _Handle:
    """An open dit_runtime* and its info; closed once."""

    def __init__(
        self,
        engines_dir: str | Path,
        backend: str,
        threads: int,
        verify_hashes: bool,
        load_vae: bool = True,
        device: int = 0,
        cuda_graph: bool = True,
    ) -> None:
        self.ptr: int | None = None
        if backend not in BACKEND_KINDS:
            raise UserError(f"unknown C++ backend {backend!r}; choose one of auto, cpu, tensorrt")
        self.lib = load_library()
        opts = _OpenOptions()
        self.lib.dit_open_options_init(ctypes.byref(opts))
        opts.backend = BACKEND_KINDS[backend]
        opts.verify_hashes = int(verify_hashes)
        opts.num_threads = int(threads)
        opts.device = int(device)
        opts.cuda_graph = int(cuda_graph)
        opts.load_vae = int(load_vae)
        ptr = self.lib.dit_open(os.fsencode(str(engines_dir)), ctypes.byref(opts))
        if not ptr:
            raise UserError(self.lib.dit_last_error().decode("utf-8", "replace"))
        self.ptr = ptr
        info = _Info()
        _check(self.lib, self.lib.dit_get_info(ptr, ctypes.byref(info)))
        self.batch, self.image_size = info.batch, info.image_size
        self.latent_shape = (info.latent_channels, info.latent_size, info.latent_size)
        self.num_classes, self.has_vae, self.coef_size = info.num_classes, bool(info.has_vae), info.coef_size
        self.backend = KIND_NAMES.get(info.backend, str(info.backend))
        self.description = info.description.decode()

    def close(self) -> None:
        if self.ptr:
            self.lib.dit_close(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()


class CppSampler(Sampler):
    """`Sampler` with the whole loop in C++ (`dit_generate`); the backend is a `CppBackend`."""

    backend: CppBackend

    @classmethod
    def load(  # type: ignore[override]
        cls,
        engines_dir: str | Path,
        backend: str = "cpu",
        *,
        threads: int = 0,
        verify_hashes: bool = True,
        device: int = 0,
        cuda_graph: bool = True,
    ) -> CppSampler:
        """Open the folder in C++. `backend`: the C++ library's backend, cpu (AOTInductor packages),
        tensorrt (plans for this GPU), or auto (TensorRT when built with it and fresh, else cpu)."""
        folder = Path(engines_dir)
        manifest = Manifest.read(folder)  # the Python reader's errors first, the same one-liners
        graphs = ["dit_step"] + (["vae_decoder"] if manifest.has_vae else [])
        be = CppBackend(folder, manifest, graphs, cpp_backend=backend, threads=threads,
                        verify_hashes=verify_hashes, device=device, cuda_graph=cuda_graph)  # fmt: skip
        return cls(folder, manifest, be)

    def describe(self) -> str:
        return f"{self.backend.handle.description} (C++ runtime)"

    def generate_many(self, requests, *, decode: bool = True, progress: bool = False):
        """One C++ run per request (the C API takes one seed per call): no packing of rows."""
        return [self.generate(r, decode=decode, progress=progress) for r in requests]

    def _generate(self, req: SampleRequest, decode: bool, progress: bool):
        h = self.backend.handle
        if h.ptr is None:
            raise UserError("this CppSampler is closed")
        labels = np.ascontiguousarray(req.labels, dtype=np.int64)
        m = labels.size
        p = _Params()
        h.lib.dit_sample_params_init(ctypes.byref(p))
        p.labels = labels.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
        p.num_images = m
        p.seed = req.seed
        p.cfg_scale = req.cfg_scale
        p.steps = req.steps
        p.sampler = req.sampler.encode()
        p.cache_interval, p.cache_order = req.cache_interval, req.cache_order  # the forecast cache
        keep: list = [labels]
        if self.schedules.stored_table(req.sampler, req.steps) is None:  # else C++ reads the stored one
            ts, coefs = (np.ascontiguousarray(a) for a in self.schedule(req.steps, req.sampler))
            keep += [ts, coefs]
            p.timesteps = ts.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
            p.coefs = coefs.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if req.noise == "torch" or req.first_index:
            fn = (
                self._torch_noise(req.seed, m, req.steps, req.guided)
                if req.noise == "torch"
                else self._offset_philox(req.seed, req.first_index)
            )
            keep.append(fn)
            p.noise_fn = fn
        bar = tqdm(total=None, desc=f"cpp {req.sampler} {req.steps} steps", unit="step", disable=not progress)

        def report(_user, done, total):
            bar.total = total
            bar.update(done - bar.n)
            return 0

        cb = _PROGRESS_FN(report)
        keep.append(cb)
        p.progress_fn = cb
        latents = np.empty((m, *self.latent_shape), dtype=np.float32)
        images = np.empty((m, 3, self.image_size, self.image_size), dtype=np.float32) if decode else None
        try:
            rc = h.lib.dit_generate(
                h.ptr,
                ctypes.byref(p),
                latents.ctypes.data,
                images.ctypes.data if images is not None else None,
            )
        finally:
            bar.close()
        _check(h.lib, rc)
        del keep
        return latents, images

    def _offset_philox(self, seed: int, first_index: int):
        """Philox noise keyed by global image indices first_index + j (a shard of a larger set)."""
        lib = self.backend.handle.lib

        def fill(_user, draw, image, out, n):
            return lib.dit_philox_normal(seed, draw, first_index + image, out, n)

        return _NOISE_FN(fill)

    def _torch_noise(self, seed: int, m: int, steps: int, guided: bool):
        """The official torch stream for the whole request, served through the noise callback."""
        src = make_noise("torch", seed, m, self.latent_shape, guided)
        draws = [src.initial()] + [src.step(k) for k in range(steps)]
        numel = math.prod(self.latent_shape)

        def fill(_user, draw, image, out, n):
            if n != numel or draw >= len(draws) or image >= m:
                return 1
            ctypes.memmove(out, draws[draw][image].ctypes.data, n * 4)
            return 0

        return _NOISE_FN(fill)


# --------------------------------------------------------------------------- Backend interface


class CppBuffer(Buffer):
    """Host memory (numpy); a table row is a view. The C++ side copies it in and out per run."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape, self.dtype = tuple(array.shape), array.dtype

    def row(self, k: int) -> CppBuffer:
        return CppBuffer(self.array[k])


class CppBackend(Backend):
    """Graphs run by the C++ library (`dit_run_graph`), for the Python `Sampler` loop.

    options: `cpp_backend` ("auto" | "cpu" | "tensorrt", default "cpu"), `threads`, `verify_hashes`.
    Only the step graphs (`dit_step`, the forecast cache's `dit_step_full` / `dit_step_forecast`)
    and `vae_decoder` exist in C++ (not the bare `dit` graph).
    """

    name = "cpp"

    def __init__(
        self,
        folder: Path,
        manifest,
        graphs: Sequence[str],
        cpp_backend: str = "cpu",
        threads: int = 0,
        verify_hashes: bool = True,
        device: int = 0,
        cuda_graph: bool = True,
    ) -> None:
        super().__init__(folder, manifest, graphs)
        bad = [g for g in self.graphs if g not in CPP_GRAPHS]
        if bad:
            raise UserError(
                "the C++ runtime runs dit_step and vae_decoder only (plus the forecast cache's "
                f"{' and '.join(CACHE_GRAPHS)}), not {bad[0]}"
            )
        self.handle = _Handle(folder, cpp_backend, threads, verify_hashes, load_vae="vae_decoder" in self.graphs,
                              device=device, cuda_graph=cuda_graph)  # fmt: skip

    def alloc_impl(self, shape, dtype, table: bool) -> CppBuffer:
        return CppBuffer(np.zeros(shape, dtype=dtype))

    def write_impl(self, buf: Buffer, a: np.ndarray) -> None:
        assert isinstance(buf, CppBuffer)
        buf.array[: a.shape[0]] = a

    def read_impl(self, buf: Buffer) -> np.ndarray:
        assert isinstance(buf, CppBuffer)
        return buf.array.copy()

    def run_impl(self, graph: str, io: GraphSpec, bindings: Mapping[str, Buffer]) -> None:
        names = [t.name for t in io.inputs + io.outputs]
        arrays = []
        for t in io.inputs + io.outputs:
            b = bindings[t.name]
            assert isinstance(b, CppBuffer)
            if not b.array.flags.c_contiguous:
                raise ValueError(f"{graph}: the buffer for {t.name} is not contiguous")
            arrays.append(b.array)
        c_names = (ctypes.c_char_p * len(names))(*[n.encode() for n in names])
        c_ptrs = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
        h = self.handle
        if h.ptr is None:
            raise UserError("the C++ backend is closed")
        _check(h.lib, h.lib.dit_run_graph(h.ptr, graph.encode(), len(names), c_names, c_ptrs))

    def describe(self) -> str:
        return f"C++ dit_runtime: {self.handle.description.split(' on ', 1)[-1]}"

    def close(self) -> None:
        self.handle.close()
