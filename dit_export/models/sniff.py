"""What a checkpoint is, read from its header and the files beside it — no torch, no weights read.

Used to name an export folder and to settle a config before anything heavy is loaded: the
safetensors header (a JSON table of tensor shapes), a diffusers ``config.json``, and the
``meta.json`` a training script writes beside its weights (``{"dit": {<DiTConfig fields>}}``,
which records what the tensors cannot say, e.g. the attention heads of a custom width).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from dit_export.errors import UserError
from dit_export.models.configs import name_of
from dit_export.models.embedded import EMBEDDED, embedded_model, is_embedded
from dit_export.models.hub import HUB_CHECKPOINTS, OFFICIAL_CHECKPOINTS

VAE_FACTOR = 8
_BLOCK = re.compile(r"^(?:blocks|transformer_blocks)\.(\d+)\.")


@dataclass(frozen=True)
class Peek:
    """What the header says: a published name ('' for a custom shape), image size, heads."""

    name: str | None = None
    image_size: int | None = None
    num_heads: int | None = None


def looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte header length and a JSON object (torch files start 'PK')."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor name → shape from a safetensors header; None when the file is not safetensors."""
    if not (path.is_file() and (path.suffix == ".safetensors" or looks_like_safetensors(path))):
        return None
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def sidecar_config(weights: Path) -> dict | None:
    """The DiT config recorded in a ``meta.json`` beside a weights file, if there is one."""
    meta = weights.parent / "meta.json"
    if not meta.is_file():
        return None
    try:
        dit = json.loads(meta.read_text()).get("dit")
    except (OSError, ValueError, AttributeError):
        return None
    return dit if isinstance(dit, dict) else None


def diffusers_config_path(folder: Path) -> Path | None:
    """config.json of a diffusers transformer folder or pipeline root (transformer/config.json)."""
    for candidate in (folder / "config.json", folder / "transformer" / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def peek(source: str) -> Peek:
    """Name, image size and heads of a checkpoint from tables, headers and configs; fields left
    None when only the pickled tensors could tell (never reads weights, never downloads)."""
    path = Path(source).expanduser()
    if not path.exists():
        if is_embedded(source):
            m = embedded_model(source)
            return Peek(m.name, m.image_size, m.num_heads)
        model, size = OFFICIAL_CHECKPOINTS.get(source) or HUB_CHECKPOINTS.get(source) or (None, None)
        return Peek(model, size)
    shipped = embedded_of_path(path)
    if shipped:
        return peek(shipped)
    if path.name in OFFICIAL_CHECKPOINTS:
        model, size = OFFICIAL_CHECKPOINTS[path.name]
        return Peek(model, size)
    if path.is_dir():
        conf = diffusers_config_path(path)
        return _peek_diffusers_config(conf) if conf else Peek()
    side = sidecar_config(path)
    if side and {"depth", "hidden_size", "patch_size", "input_size"} <= side.keys():
        name = side.get("name") or name_of(side["depth"], side["hidden_size"], side["patch_size"])
        return Peek(name, side["input_size"] * VAE_FACTOR, side.get("num_heads"))
    shapes = safetensors_shapes(path)
    if shapes is None:
        return Peek()
    if "pos_embed.proj.weight" in shapes and (path.parent / "config.json").is_file():
        return _peek_diffusers_config(path.parent / "config.json")
    return _peek_shapes(shapes)


def embedded_of_path(path: Path) -> str | None:
    """The shipped model whose DiT file `path` is, if any (so the shipped file keeps its name)."""
    resolved = path.resolve()
    return next((name for name, m in EMBEDDED.items() if m.ckpt_path.resolve() == resolved), None)


def _peek_shapes(shapes: dict[str, tuple[int, ...]]) -> Peek:
    patch = shapes.get("x_embedder.proj.weight")
    if not patch or len(patch) != 4:
        return Peek()
    hidden, p = patch[0], patch[2]
    depth = 1 + max((int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))), default=-1)
    pos = shapes.get("pos_embed")
    grid = round((pos[-2] if pos else 0) ** 0.5)
    size = grid * p * VAE_FACTOR if pos and grid * grid == pos[-2] else None
    return Peek(name_of(depth, hidden, p) or "", size)


def _peek_diffusers_config(path: Path) -> Peek:
    try:
        conf = json.loads(path.read_text())
        heads, head_dim = int(conf["num_attention_heads"]), int(conf["attention_head_dim"])
        depth, patch = int(conf["num_layers"]), int(conf["patch_size"])
        sample = conf.get("sample_size")
    except (OSError, ValueError, KeyError, TypeError):
        return Peek()
    size = int(sample) * VAE_FACTOR if isinstance(sample, int) else None
    return Peek(name_of(depth, heads * head_dim, patch) or "", size, heads)
