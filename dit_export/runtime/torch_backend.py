"""PyTorch backend: the reference modules behind the backend interface, in the bench's modes.

The graphs are rebuilt from what the manifest records (the model spec: checkpoint or model name
and weights seed, and the VAE): `dit` is the DiT itself, `dit_step` the `SamplerStep` (guided,
exactly as exported), `dit_step_full` / `dit_step_forecast` the `CachedSamplerStep` of the forecast
cache, and `vae_decoder` the `VAEDecode` module, so `verify` compares every backend against the
very modules the graphs were traced from.

Modes (`mode=`), the precision settings a user of the official code would pick:

- `fp32` (default): the fp32 reference; TF32 off on CUDA.
- `tf32`: fp32 storage, TF32 matmul and cuDNN (as the official sample.py sets); CUDA only.
- `fp16`: `torch.autocast(float16)` over fp32 weights.
- `compile`: `torch.compile` (inductor, `compile_mode`) of the DiT and the VAE; with fp16
  autocast and TF32 on a GPU, fp32 on a CPU.

Outputs are written back in the buffer's dtype (fp32), whatever the mode computed in. This module
is torch code: the runtime imports it only when the torch backend is asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.export.manifest import GraphSpec, Manifest
from dit_export.lazy import optional_import
from dit_export.models.configs import DiTConfig
from dit_export.models.spec import ModelSpec
from dit_export.models.vae import VAEDecode
from dit_export.runtime.backend import Backend, Buffer
from dit_export.sampling.cache import FORECAST_GRAPH, FULL_GRAPH
from dit_export.sampling.step import CachedSamplerStep, SamplerStep

torch = optional_import("torch", "the torch backend")

MODES = ("fp32", "tf32", "fp16", "compile")
MODE_TEXT = {
    "fp32": "fp32 reference",
    "tf32": "fp32 with TF32 matmul/cuDNN",
    "fp16": "torch.autocast float16",
    "compile": "torch.compile",
}


class TorchBuffer(Buffer):
    def __init__(self, tensor) -> None:
        self.tensor = tensor
        self.shape = tuple(tensor.shape)
        self.dtype = np.dtype(str(tensor.dtype).removeprefix("torch."))

    def row(self, k: int) -> TorchBuffer:
        return TorchBuffer(self.tensor[k])


# ------------------------------------------------------------------------------ reference modules


def load_reference(manifest: Manifest, folder: Path, want_vae: bool = True):
    """(DiT, VAEDecode | None) in fp32 eval mode, from the model spec the manifest records."""
    d = dict(manifest.model.spec)
    ckpt = d.get("ckpt")
    if ckpt and not Path(ckpt).is_absolute() and (folder / ckpt).exists():  # shipped inside the folder
        d["ckpt"] = str(folder / ckpt)
    spec = ModelSpec.from_dict(d)
    model, cfg = spec.load_dit()
    if cfg.to_dict() != DiTConfig.from_dict(dict(manifest.model.config)).to_dict():
        raise UserError(
            f"the weights recorded in the manifest ({manifest.model.source}) no longer give the exported "
            "model config"
        )
    vae = spec.load_vae() if want_vae else None
    decode = VAEDecode(vae).eval() if vae is not None else None
    return model.eval().requires_grad_(False), decode


# ------------------------------------------------------------------------------ the backend


class TorchBackend(Backend):
    """options: `device` (default cuda when available), `mode` (MODES), `compile_mode`, `sdpa`
    (fused attention in the DiT, eager speed only), `modules` (preloaded (DiT, VAEDecode | None),
    shared between backends, e.g. by bench)."""

    name = "torch"

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        graphs: Sequence[str],
        device: str | None = None,
        mode: str = "fp32",
        compile_mode: str = "default",
        sdpa: bool = False,
        modules: tuple | None = None,
    ) -> None:
        super().__init__(folder, manifest, graphs)
        if mode not in MODES:
            raise UserError(f"unknown torch backend mode {mode!r}; choose one of {', '.join(MODES)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.gpu = self.device.type == "cuda"
        if mode == "tf32" and not self.gpu:
            raise UserError(
                f"torch mode tf32 is a CUDA tensor-core math mode; torch {torch.__version__} runs on CPU here"
            )
        self.mode, self.compile_mode = mode, compile_mode
        self.fp16 = mode == "fp16" or (mode == "compile" and self.gpu)
        self.tf32 = mode == "tf32" or (mode == "compile" and self.gpu)
        if self.gpu:  # fp32 is the true-fp32 reference
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
        if modules is None:
            modules = load_reference(self.manifest, self.folder, want_vae="vae_decoder" in self.graphs)
        model, decode = modules
        model = model.to(self.device)
        model.set_fused_attention(bool(sdpa))
        if mode == "compile":
            model = torch.compile(model, mode=compile_mode, dynamic=False)
            decode = (
                None
                if decode is None
                else torch.compile(decode.to(self.device), mode=compile_mode, dynamic=False)
            )
        self.modules: dict = {}
        self._model = model
        if "vae_decoder" in self.graphs:
            if decode is None:
                raise UserError("the torch backend has no VAE decoder for this export")
            self.modules["vae_decoder"] = decode.to(self.device)
        self.add_graphs_impl([g for g in self.graphs if g != "vae_decoder"])

    def add_graphs_impl(self, names: Sequence[str]) -> None:
        """The DiT graphs are modules around the one loaded model (no second copy of the weights)."""
        model = self._model
        for g in names:
            if g == "dit":
                self.modules[g] = model
            elif g == "dit_step":
                # An export with the solver-state I/O (multistep samplers) gets the stateful step.
                stateful = len(self.graphs[g].outputs) > 1
                self.modules[g] = SamplerStep(model, guided=True, with_state=stateful).eval()
            elif g in (FULL_GRAPH, FORECAST_GRAPH):  # the forecast step cache
                self.modules[g] = CachedSamplerStep(model, "full" if g == FULL_GRAPH else "forecast").eval()
            else:
                raise UserError(f"the torch backend cannot add {g} after it was created")

    @contextlib.contextmanager
    def _math(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.fp16:
                with torch.autocast(device_type=self.device.type, dtype=torch.float16):
                    yield
            else:
                yield

    def alloc_impl(self, shape, dtype, table: bool) -> TorchBuffer:
        return TorchBuffer(torch.zeros(tuple(shape), dtype=getattr(torch, dtype.name), device=self.device))

    def write_impl(self, buf: Buffer, a: np.ndarray) -> None:
        assert isinstance(buf, TorchBuffer)
        buf.tensor[: a.shape[0]].copy_(torch.from_numpy(a))

    def read_impl(self, buf: Buffer) -> np.ndarray:
        assert isinstance(buf, TorchBuffer)
        return buf.tensor.detach().cpu().numpy().copy()

    def run_impl(self, graph: str, io: GraphSpec, bindings: Mapping[str, Buffer]) -> None:
        args = []
        for t in io.inputs:
            b = bindings[t.name]
            assert isinstance(b, TorchBuffer)
            args.append(b.tensor)
        with self._math():
            out = self.modules[graph](*args)
            for spec, value in zip(io.outputs, out if isinstance(out, tuple) else (out,), strict=True):
                dst = bindings[spec.name]
                assert isinstance(dst, TorchBuffer)
                dst.tensor.copy_(value)

    def free_bytes(self) -> int | None:
        return int(torch.cuda.mem_get_info(self.device)[0]) if self.gpu else super().free_bytes()

    def sync(self) -> None:
        """Wait for queued GPU work (for timing)."""
        if self.gpu:
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.gpu else "CPU"
        what = MODE_TEXT[self.mode] + (f" ({self.compile_mode})" if self.mode == "compile" else "")
        if self.mode == "compile":
            what += ", fp16 autocast + TF32" if self.gpu else ", fp32"
        return f"torch {torch.__version__} {what} ({where})"

    def close(self) -> None:
        self.modules.clear()
