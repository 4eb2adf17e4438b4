"""Apply `precision.POLICY` to PyTorch modules before tracing: fp16 sub-modules with cast edges.

The reference modules are not changed: we wrap instances of them. An `Island` owns one
sub-module, converts its parameters to the island's dtype, casts floating inputs in and the
output back out. Traced, that gives exactly one Cast on each edge and a uniformly typed inside
(which is what TensorRT's strongly typed builder wants for attention).
"""

from __future__ import annotations

import torch
from torch import nn

from dit_export.export.precision import POLICY, PrecisionPolicy


class Island(nn.Module):
    """Run `inner` in `dtype`; floating tensor inputs are cast to it and the output back to `outer`."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, outer: torch.dtype):
        super().__init__()
        self.inner = inner
        self.dtype, self.outer = dtype, outer

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        cast = [a.to(self.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        return self.inner(*cast).to(self.outer)


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def _convert_params(module: nn.Module, dtype: torch.dtype, skip: tuple[nn.Module, ...] = ()) -> None:
    """Floating parameters and buffers of `module` to `dtype`, in place, except inside `skip`."""
    skipped = {id(m) for s in skip for m in s.modules()}
    for m in module.modules():
        if id(m) in skipped:
            continue
        for p in list(m.parameters(recurse=False)):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in list(m.named_buffers(recurse=False)):
            if b.is_floating_point():
                setattr(m, name, b.to(dtype))


def apply_dit_policy(model: nn.Module, policy: PrecisionPolicy = POLICY) -> list[str]:
    """Wrap the policy's fp16 sub-modules of a DiT in place; returns the wrapped module paths.

    Converting in place frees each fp32 weight as its fp16 copy is made (XL/2 never holds both).
    """
    paths: list[str] = []
    for name, _ in model.named_modules():  # parents come before children: wrap outermost matches only
        if name and policy.dit_module_is_fp16(name) and not any(name.startswith(p + ".") for p in paths):
            paths.append(name)
    for path in paths:
        inner = model.get_submodule(path)
        _convert_params(inner, torch.float16)
        _replace(model, path, Island(inner, torch.float16, torch.float32))
    return paths


def apply_vae_policy(decode: nn.Module, policy: PrecisionPolicy = POLICY) -> nn.Module:
    """An fp16 decoder with the policy's fp32 module types (GroupNorm) as fp32 islands inside.

    Returns a module with fp32 input and output; `decode`'s parameters are converted in place.
    """
    keep = [
        name
        for name, m in decode.named_modules()
        if name and type(m).__name__ in policy.vae_fp32_module_types and not isinstance(m, Island)
    ]
    islands = []
    for path in keep:
        inner = decode.get_submodule(path)
        island = Island(inner, torch.float32, torch.float16)
        _replace(decode, path, island)
        islands.append(island)
    _convert_params(decode, torch.float16, skip=tuple(islands))
    return Island(decode, torch.float16, torch.float32)
