"""`sample` (the PyTorch reference end to end) and `info` (what a checkpoint contains)."""

from __future__ import annotations

import argparse

from dit_export.errors import UserError

OFFICIAL_LABELS = [207, 360, 387, 974, 88, 979, 417, 279]  # the official sample.py grid


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags that pick a DiT and its weights (shared by sample, export, build, bench)."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default=None, help="DiT-XL/2 … DiT-S/8 (or XL/2); inferred from --ckpt when omitted"
    )
    g.add_argument("--ckpt", default=None, help="checkpoint: .pt, .safetensors, diffusers folder or hub id")
    g.add_argument(
        "--random-weights", action="store_true", help="seeded random weights (perturbed adaLN-Zero)"
    )
    g.add_argument("--weights-seed", type=int, default=0, help="seed for --random-weights (default 0)")
    g.add_argument(
        "--image-size", type=int, default=None, help="image side in pixels (default: from weights, else 256)"
    )
    g.add_argument("--num-classes", type=int, default=None, help="classes of a custom model (default 1000)")
    g.add_argument(
        "--flavor",
        choices=["official", "diffusers"],
        default=None,
        help="numerics: official DiT, or diffusers' port (default: from the checkpoint format)",
    )


def load_model_from_args(args: argparse.Namespace):
    """(model, config) from the shared model flags; one-line errors for inconsistent flags."""
    from dit_export.models.checkpoints import load_dit
    from dit_export.models.embedded import is_embedded, resolve_embedded

    if is_embedded(args.model) and not args.ckpt:  # a shipped model: the same loaders as XL/2
        ckpt, _, image_size, heads = resolve_embedded(args.model)
        return load_dit(
            str(ckpt), image_size=args.image_size or image_size, num_heads=heads, flavor=args.flavor
        )
    if args.ckpt and args.random_weights:
        raise UserError("give either --ckpt or --random-weights, not both")
    if args.random_weights and not args.model:
        raise UserError("--random-weights needs --model (e.g. --model S/8)")
    if not args.ckpt and not args.random_weights and not args.model:
        raise UserError("give --model, --ckpt or both (e.g. --model XL/2 downloads the official weights)")
    return load_dit(
        args.ckpt,
        model=args.model,
        image_size=args.image_size,
        flavor=args.flavor,
        random_weights=args.random_weights,
        weights_seed=args.weights_seed,
        num_classes=args.num_classes,
    )


def add_request_args(p: argparse.ArgumentParser, *, steps: int = 250) -> None:
    """What to sample (shared by the reference `sample`, the runtime and C++ example)."""
    g = p.add_argument_group("request")
    g.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=None,
        help="class ids, one image each (default: the official 8 for 1000-class models, else all)",
    )
    g.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")
    g.add_argument(
        "--sampler", choices=["ddpm", "ddim"], default="ddpm", help="ddpm (p_sample) or ddim (eta 0)"
    )
    g.add_argument(
        "--cfg-scale", type=float, default=4.0, help="guidance scale ≥ 1; 1 = no guidance (default 4)"
    )
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    g.add_argument(
        "--noise",
        choices=["philox", "torch"],
        default="philox",
        help="philox: ours, identical on every backend; torch: the official sample.py stream",
    )
    g.add_argument("--out", default=None, help="PNG grid to write (default sample.png; none with --vae none)")
    g.add_argument(
        "--save-latents", default=None, metavar="NPY", help="write final latents (N,4,L,L) float32"
    )
    g.add_argument("--save-images", default=None, metavar="NPZ", help="write uint8 images (arr_0: N×H×W×3)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_labels(num_classes: int) -> list[int]:
    return list(OFFICIAL_LABELS) if num_classes == 1000 else list(range(num_classes))


def check_steps(steps: int) -> None:
    if steps <= 0:
        raise UserError(f"--steps must be ≥ 1, got {steps}")


def write_outputs(args: argparse.Namespace, latents, images) -> None:
    """Save latents / images / grid as asked; `images` is (N,3,H,W) float in [-1,1] or None."""
    import numpy as np

    from dit_export import images as im
    from dit_export.fileio import atomic_path

    if args.save_latents:
        with atomic_path(args.save_latents) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(latents, dtype=np.float32))
        print(f"wrote latents {args.save_latents} {tuple(latents.shape)}")
    if images is None:
        return
    if args.save_images:
        im.save_npz(args.save_images, im.to_uint8(images))
        print(f"wrote images {args.save_images}")
    out = args.out or "sample.png"
    im.save_png(out, im.to_uint8_grid(images))
    print(f"wrote grid {out}")


def run_sample(args: argparse.Namespace) -> int:
    check_steps(args.steps)
    if args.engines:
        from dit_export.runtime.command import run_engine_sample

        return run_engine_sample(args)
    import torch

    from dit_export.sampling.noise import make_noise
    from dit_export.sampling.reference import sample_latents

    model, cfg = load_model_from_args(args)
    from dit_export.models.embedded import is_embedded

    if is_embedded(args.model) and args.vae == "mse":  # its own VAE unless one is named
        args.vae = args.model
    vae_decode = None
    if args.vae != "none":
        from dit_export.models.vae import VAEDecode, load_vae, vae_factor

        vae = load_vae(args.vae)
        if vae_factor(vae) * cfg.input_size != (args.image_size or vae_factor(vae) * cfg.input_size):
            raise UserError("--image-size does not match the model's latent size and the VAE factor")
        vae_decode = VAEDecode(vae).eval()
    elif args.out:
        raise UserError("--out needs a VAE (drop --vae none)")
    labels = args.classes if args.classes is not None else default_labels(cfg.num_classes)
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    noise = make_noise(args.noise, args.seed, len(labels), shape, guided=args.cfg_scale > 1.0)
    latents = sample_latents(
        model,
        labels,
        noise,
        steps=args.steps,
        sampler=args.sampler,
        cfg_scale=args.cfg_scale,
        progress=not args.no_progress,
    )
    images = None
    if vae_decode is not None:
        with torch.inference_mode():
            images = vae_decode(latents).numpy()
    write_outputs(args, latents.numpy(), images)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from dit_export.models.checkpoints import describe

    print(describe(args.ckpt, model=args.model, flavor=args.flavor))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="sample images: the PyTorch reference, or a built folder with --engines",
        description="Sample with the PyTorch reference (the official DiT model and IDDPM sampler), "
        "or, with --engines DIR, with the runtime on an exported/built folder (ort, trt, torch, cpp). "
        "Example: python -m dit_export sample --model S/8 --random-weights --vae none "
        "--steps 10 --save-latents x.npy",
    )
    add_model_args(p)
    p.add_argument("--vae", default="mse", help="VAE: folder, hub id, ema, mse (default), or none")
    add_request_args(p)
    from dit_export.runtime.command import add_engine_args

    add_engine_args(p)
    p.set_defaults(func=run_sample)

    p = sub.add_parser("info", help="print a checkpoint's detected format, config, flavor and size")
    p.add_argument("ckpt", help="checkpoint file, diffusers folder or hub id")
    p.add_argument("--model", default=None, help="cross-check against this model name")
    p.add_argument("--flavor", choices=["official", "diffusers"], default=None)
    p.set_defaults(func=run_info)
