"""PyTorch backend: the fp32 reference modules behind the backend interface.

The graphs are rebuilt from what the manifest records: the DiT checkpoint (or the model name and
weights seed of a random-weight export) and the VAE. `dit` is the DiT itself, `dit_step` the
`SamplerStep` (guided, exactly as exported) and `vae_decoder` the `VAEDecode` module, so `verify`
compares every backend against the very modules the graphs were traced from. TF32 is turned off
on CUDA: this is the fp32 reference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from dit_export.errors import UserError
from dit_export.runtime.backend import Backend, Buffer

_RANDOM_DIT = re.compile(r"^random weights \(seed (\d+)")
_RANDOM_VAE = re.compile(r"^random-(sd|small|tiny) \(seed (\d+)\)")
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class TorchBuffer(Buffer):
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.shape = tuple(tensor.shape)
        self.dtype = np.dtype(str(tensor.dtype).removeprefix("torch."))

    def row(self, k: int) -> TorchBuffer:
        return TorchBuffer(self.tensor[k])


def dit_weights(manifest: dict) -> dict:
    """{"kind": "random", "seed": s} or {"kind": "checkpoint", "path": p} from the manifest.

    Reads the structured `model.weights` when the export wrote one, else parses `model.source`.
    """
    m = manifest["model"]
    w = m.get("weights")
    if isinstance(w, dict) and w.get("kind") in ("random", "checkpoint"):
        return w
    src = m["source"]
    hit = _RANDOM_DIT.match(src)
    if hit:
        return {"kind": "random", "seed": int(hit.group(1))}
    return {"kind": "checkpoint", "path": src}


def vae_weights(manifest: dict) -> dict | None:
    v = manifest.get("vae")
    if v is None:
        return None
    w = v.get("weights")
    if isinstance(w, dict) and w.get("kind") in ("random", "pretrained"):
        return w
    hit = _RANDOM_VAE.match(v["source"])
    if hit:
        return {"kind": "random", "variant": hit.group(1), "seed": int(hit.group(2))}
    return {"kind": "pretrained", "source": v["source"]}


def load_reference(manifest: dict, folder: Path, want_vae: bool = True):
    """(DiT, VAEDecode | None) in fp32 eval mode, as recorded by the manifest."""
    from dit_export.models.checkpoints import load_dit, random_dit
    from dit_export.models.configs import DiTConfig

    m = manifest["model"]
    cfg_expected = DiTConfig.from_dict(m["config"])
    w = dit_weights(manifest)
    if w["kind"] == "random":
        model, cfg = random_dit(
            m["name"],
            manifest["image_size"],
            num_classes=cfg_expected.num_classes,
            flavor=cfg_expected.flavor,
            seed=int(w["seed"]),
        )
    else:
        path = Path(w["path"])
        if not path.is_absolute() and (folder / path).exists():
            path = folder / path
        model, cfg = load_dit(
            str(path),
            model=None if m["name"] == "custom" else m["name"],
            image_size=manifest["image_size"],
            flavor=cfg_expected.flavor,
            num_classes=cfg_expected.num_classes,
            num_heads=cfg_expected.num_heads,
        )
    if cfg.to_dict() != cfg_expected.to_dict():
        raise UserError(
            f"the weights recorded in the manifest ({m['source']}) no longer give the exported model config"
        )
    decode = None
    vw = vae_weights(manifest) if want_vae else None
    if vw is not None:
        from dit_export.models.vae import VAEDecode, load_vae, random_vae

        vae = random_vae(vw["variant"], int(vw["seed"])) if vw["kind"] == "random" else load_vae(vw["source"])
        decode = VAEDecode(vae).eval()
    return model.eval().requires_grad_(False), decode


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self, folder: Path, manifest: dict, graphs: Sequence[str], device: str | None = None
    ) -> None:
        super().__init__(folder, manifest, graphs)
        from dit_export.sampling.step import SamplerStep

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":  # the reference computes in true fp32
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        model, decode = load_reference(manifest, self.folder, want_vae="vae_decoder" in self.graphs)
        model = model.to(self.device)
        self.modules: dict[str, torch.nn.Module] = {}
        if "dit" in self.graphs:
            self.modules["dit"] = model
        if "dit_step" in self.graphs:
            self.modules["dit_step"] = SamplerStep(model, guided=True).eval()
        if "vae_decoder" in self.graphs:
            assert decode is not None
            self.modules["vae_decoder"] = decode.to(self.device)

    def alloc(self, shape, dtype, *, table: bool = False) -> TorchBuffer:
        return TorchBuffer(
            torch.zeros(tuple(shape), dtype=_TORCH_DTYPES[np.dtype(dtype).name], device=self.device)
        )

    def write(self, buf: Buffer, array: np.ndarray) -> None:
        assert isinstance(buf, TorchBuffer)
        a = self.check_write(buf, array)
        buf.tensor[: a.shape[0]].copy_(torch.from_numpy(a))

    def read(self, buf: Buffer) -> np.ndarray:
        assert isinstance(buf, TorchBuffer)
        return buf.tensor.detach().cpu().numpy().copy()

    @torch.inference_mode()
    def run(self, graph: str, bindings: Mapping[str, Buffer]) -> None:
        io = self.check_bindings(graph, bindings)
        args = []
        for t in io.inputs:
            b = bindings[t.name]
            assert isinstance(b, TorchBuffer)
            args.append(b.tensor)
        out = self.modules[graph](*args)
        (spec,) = io.outputs
        dst = bindings[spec.name]
        assert isinstance(dst, TorchBuffer)
        dst.tensor.copy_(out)

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"torch {torch.__version__} fp32 reference ({where})"

    def close(self) -> None:
        self.modules.clear()
