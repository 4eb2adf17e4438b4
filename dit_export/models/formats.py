"""Read a DiT checkpoint in any format a user is likely to have into official key names.

Formats: the released flat state dict (``DiT-XL-2-256x256.pt``), ``train.py`` checkpoints
(``{"model", "ema", "opt", "args"}``, EMA preferred), safetensors with official keys, and diffusers
(``DiTTransformer2DModel`` folder, pipeline root with ``transformer/``, or its weights file).

Pickles are opened with ``torch.load(weights_only=True)`` only, with exactly one extra allowed
class (``argparse.Namespace``, the ``args`` of a training checkpoint): a file that wants to run
code is refused before anything runs, and the message says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dit_export.errors import UserError
from dit_export.lazy import optional_import
from dit_export.models import sniff
from dit_export.models.configs import canonical_name
from dit_export.models.diffusers_keys import (
    from_diffusers_state_dict,
    is_diffusers_state_dict,
    read_diffusers_config,
)

Tensors = dict[str, torch.Tensor]


@dataclass
class RawWeights:
    """A checkpoint read into official key names, plus what its container says about the model."""

    state: Tensors
    fmt: str  # human-readable format, for `describe`
    flavor: str = "official"  # numerics the weights were trained/converted for
    num_heads: int | None = None  # from a diffusers config.json or a meta.json beside the weights
    input_size: int | None = None  # latent side from a diffusers config.json (no pos_embed stored)
    model_hint: str | None = None  # from a released file name or a training checkpoint's args
    image_hint: int | None = None
    notes: list[str] = field(default_factory=list)


def read_weights(path: Path) -> RawWeights:
    """Dispatch on the container: folder → diffusers; safetensors (by suffix or content); else a pickle."""
    if path.is_dir():
        return _read_diffusers_folder(path)
    if path.suffix == ".safetensors" or sniff.looks_like_safetensors(path):
        raw = _classify(path, load_safetensors(path), "safetensors")
        if raw.flavor == "diffusers" and (path.parent / "config.json").is_file():
            raw.num_heads, raw.input_size = read_diffusers_config(path.parent / "config.json")
    else:
        raw = _read_torch(path)
    side = sniff.sidecar_config(path)  # a training script's meta.json: the heads of a custom width
    if raw.num_heads is None and side and isinstance(side.get("num_heads"), int):
        raw.num_heads = side["num_heads"]
        raw.notes.append(f"attention heads {raw.num_heads} from {path.parent / 'meta.json'}")
    return raw


def _read_torch(path: Path) -> RawWeights:
    """A .pt/.pth/.bin: flat state dict, training checkpoint (EMA preferred), or diffusers .bin."""
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and _is_tensor_dict(obj):
        return _classify(path, obj, f"state dict ({path.suffix or 'pickle'})")
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict"):
            if isinstance(obj.get(key), dict) and _is_tensor_dict(obj[key]):
                raw = _classify(path, obj[key], f"training checkpoint ({key} weights)")
                if isinstance(obj.get("args"), argparse.Namespace):
                    _apply_training_args(raw, obj["args"])
                return raw
        keys = ", ".join(map(str, list(obj)[:5]))
        raise UserError(f"{path} is not a DiT checkpoint: a dict with keys {keys} but no weights")
    raise UserError(f"{path} is not a DiT checkpoint: it holds a {type(obj).__name__}, not a dict of tensors")


def _read_diffusers_folder(path: Path) -> RawWeights:
    """A `DiTTransformer2DModel.save_pretrained` folder, or a pipeline root holding one in transformer/."""
    config = sniff.diffusers_config_path(path)
    if config is None:
        raise UserError(f"{path} is not a diffusers DiT folder: no config.json or transformer/config.json")
    raw = _classify(config.parent, _load_diffusers_weights(config.parent), "folder")
    raw.num_heads, raw.input_size = read_diffusers_config(config)
    return raw


def _load_diffusers_weights(folder: Path) -> Tensors:
    """diffusion_pytorch_model.safetensors, its sharded form, or the older .bin."""
    single = folder / "diffusion_pytorch_model.safetensors"
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    legacy = folder / "diffusion_pytorch_model.bin"
    if single.is_file():
        return load_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index} is not a safetensors index ({e})") from None
        if any(Path(shard).name != shard for shard in shards):
            raise UserError(f"{index} names shards outside its folder")
        state: Tensors = {}
        for shard in shards:
            state.update(load_safetensors(folder / shard))
        return state
    if legacy.is_file():
        obj = safe_torch_load(legacy)
        if not (isinstance(obj, dict) and _is_tensor_dict(obj)):
            raise UserError(f"{legacy} is not a state dict")
        return obj
    raise UserError(f"{folder} has a config.json but no diffusion_pytorch_model.safetensors (or .bin)")


def _classify(path: Path, state: Tensors, fmt: str) -> RawWeights:
    """Official or diffusers key names? Converts diffusers to ours; anything else is refused."""
    state = _strip_prefixes(state)
    if is_diffusers_state_dict(state):
        return RawWeights(from_diffusers_state_dict(state), fmt=f"diffusers {fmt}", flavor="diffusers")
    if "x_embedder.proj.weight" in state:
        return RawWeights(state, fmt=f"official {fmt}")
    some = ", ".join(list(state)[:3]) or "none"
    raise UserError(f"{path} holds no DiT weights (keys: {some}, ...)")


def _apply_training_args(raw: RawWeights, args: argparse.Namespace) -> None:
    """train.py's args name the model and image size: use them as a cross-check."""
    name, size = getattr(args, "model", None), getattr(args, "image_size", None)
    try:
        raw.model_hint = canonical_name(name) if isinstance(name, str) else None
    except UserError:
        raw.model_hint = None
    raw.image_hint = size if isinstance(size, int) else None
    if raw.model_hint:
        raw.notes.append(f"training args: model {raw.model_hint}, image size {raw.image_hint}")


# --------------------------------------------------------------------------- safe file access


def safe_torch_load(path: Path) -> object:
    """torch.load with weights_only=True and only argparse.Namespace allowed; every failure is one line.

    A pickle that names any other Python object (a function to call, a class to build) is refused
    before it runs: plain weights never need one.
    """
    try:
        with warnings.catch_warnings(), _allow_namespace():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: our message is the one line
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise UserError(
                f"refused {path}: loading it would run code (it asks for the Python object "
                f"{refused.group(1)}, which plain weights never need; loaded with weights_only=True — "
                "re-save just its state_dict if you trust it)"
            ) from None
        raise UserError(f"{path} is not a PyTorch checkpoint (corrupt, or not a weights file)") from None
    except EOFError:
        raise UserError(f"{path} is empty or truncated") from None
    except Exception as e:  # RuntimeError from the zip reader, OSError, struct/unicode errors, ...
        first = str(e).strip().split(". ")[0].splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {first})"
        ) from None


def _allow_namespace() -> contextlib.AbstractContextManager:
    """The one extra class a training checkpoint pickles (its argparse args), allowed explicitly."""
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if scoped is not None:
        return scoped([argparse.Namespace])
    torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4: process-wide allow-list
    return contextlib.nullcontext()


def load_safetensors(path: Path) -> Tensors:
    """Lazy: random-weight and pickle checkpoints load without safetensors installed."""
    safetensors = optional_import("safetensors")
    load_file = optional_import("safetensors.torch").load_file
    try:
        return load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise UserError(
            f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:200]})"
        ) from None


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_prefixes(state: Tensors) -> Tensors:
    """Drop the wrappers DDP ('module.') and torch.compile ('_orig_mod.') add to every key."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state
