"""Measure our reference sampler against the official facebookresearch/DiT code.

The official code (CC-BY-NC) is NOT part of this repository: pass the path of a checkout of it.
Both sides load the same (random, perturbed) weights — the official `DiT` class loads our state
dict with strict=True, which also proves key compatibility — and draw the same torch noise
stream: torch.manual_seed(seed); randn(N,4,L,L); one randn of the doubled batch per step.
The official models.py imports three layers from timm, which needs torchvision (not installable
beside the CPU torch wheel); a minimal stand-in for those three timm layers is generated in a temp
folder (PatchEmbed/Attention/Mlp as in timm 0.x: conv patchify, fused qkv attention, fc-act-fc).

    python scripts/compare_official.py --official /path/to/DiT --model S/2 --steps 250
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from dit_export.models.spec import ModelSpec
from dit_export.sampling.noise import TorchNoise
from dit_export.sampling.reference import sample_latents

TIMM_STANDIN = """
import torch
from torch import nn

class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)
    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)

class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, **kw):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3, bias=qkv_bias), nn.Linear(dim, dim)
    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))

class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer, drop=0, **kw):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(in_features, hidden_features), act_layer(), nn.Linear(hidden_features, in_features)
    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="path to a facebookresearch/DiT checkout")
    ap.add_argument("--model", default="S/2")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--steps", default="250")
    ap.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, nargs="+", default=[207, 360, 387, 974])
    args = ap.parse_args()

    ours, cfg = ModelSpec(model=args.model, image_size=args.image_size, random_weights=True).load_dit()
    standin = Path(tempfile.mkdtemp()) / "timm"
    (standin / "models").mkdir(parents=True)
    (standin / "__init__.py").write_text("")
    (standin / "models" / "__init__.py").write_text("")
    (standin / "models" / "vision_transformer.py").write_text(textwrap.dedent(TIMM_STANDIN))
    sys.path[:0] = [str(standin.parent), str(Path(args.official).resolve())]
    from diffusion import create_diffusion  # official
    from models import DiT_models  # official

    official = DiT_models[cfg.name](input_size=cfg.input_size, num_classes=cfg.num_classes)
    official.load_state_dict(ours.state_dict(), strict=True)
    official.eval()

    n, guided = len(args.classes), args.cfg_scale > 1
    spec = f"ddim{args.steps}" if args.sampler == "ddim" else args.steps
    diffusion = create_diffusion(spec)
    t0 = time.time()
    with torch.no_grad():
        torch.manual_seed(args.seed)
        z = torch.randn(n, 4, cfg.input_size, cfg.input_size)
        y = torch.tensor(args.classes)
        if guided:
            z, y = torch.cat([z, z]), torch.cat([y, torch.full_like(y, cfg.num_classes)])
            fn, kw = official.forward_with_cfg, dict(y=y, cfg_scale=args.cfg_scale)
        else:
            fn, kw = official.forward, dict(y=y)
        loop = diffusion.ddim_sample_loop if args.sampler == "ddim" else diffusion.p_sample_loop
        ref = loop(fn, z.shape, z, clip_denoised=False, model_kwargs=kw, progress=False, device="cpu")[:n]
    t1 = time.time()
    noise = TorchNoise(args.seed, n, (4, cfg.input_size, cfg.input_size), guided=guided)
    mine = sample_latents(
        ours,
        args.classes,
        noise,
        steps=int(args.steps),
        sampler=args.sampler,
        cfg_scale=args.cfg_scale,
        progress=False,
    )
    t2 = time.time()
    d = (mine - ref).abs()
    print(
        f"model {cfg.name} @{args.image_size} steps {spec} cfg {args.cfg_scale} seed {args.seed} "
        f"labels {args.classes}"
    )
    print(
        f"final latents: max|Δ| = {d.max().item():.3e}  mean|Δ| = {d.mean().item():.3e}  "
        f"max|ref| = {ref.abs().max().item():.3f}  (official {t1 - t0:.1f} s, ours {t2 - t1:.1f} s)"
    )
    return 0 if d.max().item() <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
