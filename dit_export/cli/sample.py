"""`sample`: images from the PyTorch reference, or with `--engines DIR` from the runtime on a built folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dit_export import images as im
from dit_export.cli.args import (
    BackendArgs,
    EnginesArgs,
    ModelArgs,
    RequestArgs,
    add_progress,
    check_output_file,
    engines_backend,
)
from dit_export.errors import UserError
from dit_export.fileio import atomic_path
from dit_export.runtime.sampler import Sampler
from dit_export.runtime.step_cache import graphs_for
from dit_export.sampling.request import SampleRequest

DEFAULT_OUT = "sample.png"


def register(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="sample images: the PyTorch reference, or a built folder with --engines",
        description="Sample with the PyTorch reference (the official DiT model and IDDPM sampler), "
        "or, with --engines DIR, with the runtime on an exported/built folder. Writes a PNG grid and "
        "one PNG per image (in a folder named after the grid). Example: python -m dit_export sample "
        "--model S/8 --random-weights --vae none --steps 10 --save-latents x.npy",
    )
    ModelArgs.add_to(p)
    RequestArgs.add_to(p, steps=250)
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--out",
        default=None,
        help=f"PNG grid to write, plus one PNG per image in the folder of the same name without .png "
        f"(default {DEFAULT_OUT}; none with --vae none)",
    )
    g.add_argument(
        "--label-grid",
        action="store_true",
        help="draw each image's class under it in the grid (the default grid is torchvision's "
        "save_image layout, pixel for pixel the official sample.py's)",
    )
    g.add_argument(
        "--save-latents", default=None, metavar="NPY", help="write final latents (N,4,L,L) float32"
    )
    g.add_argument("--save-images", default=None, metavar="NPZ", help="write uint8 images (arr_0: N×H×W×3)")
    add_progress(g)
    g = p.add_argument_group("runtime (an exported or built folder instead of PyTorch)")
    EnginesArgs.add_to(
        g,
        help="sample from this folder's graphs/engines; the folder fixes the model: --model, --image-size "
        "and --num-classes must match it, --ckpt/--random-weights/--weights-seed/--flavor/--vae are refused",
    )
    BackendArgs.add_to(
        p,
        default="auto",
        help="with --engines: the runtime backend (auto: TensorRT when the folder has plans for this GPU, "
        "else ONNX Runtime); without: the PyTorch reference",
    )
    p.set_defaults(func=run)


def image_folder(out: Path) -> Path:
    """Where the per-image PNGs of grid `out` go: `digits.png` → `digits/`."""
    return out.with_suffix("") if out.suffix else out.with_name(out.name + "-images")


def check_outputs(args: argparse.Namespace, *, has_vae: bool | None) -> Path | None:
    """The grid path (None when no images), after failing on any output that cannot be written."""
    check_output_file(args.save_latents, "--save-latents")
    check_output_file(args.save_images, "--save-images")
    if has_vae is False:
        if args.out or args.label_grid:
            flag = "--out" if args.out else "--label-grid"
            raise UserError(f"{flag} needs a VAE: drop --vae none (or use a folder exported with a VAE)")
        return None
    out = check_output_file(args.out or DEFAULT_OUT, "--out")
    assert out is not None
    folder = image_folder(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: the per-image folder {folder} is an existing file")
    return out


def write_outputs(
    args: argparse.Namespace, out: Path | None, request: SampleRequest, latents, images
) -> None:
    """Save latents / images / grid + per-image PNGs; `images` is (N,3,H,W) float in [-1,1] or None."""
    if args.save_latents:
        with atomic_path(args.save_latents) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(latents, dtype=np.float32))
        print(f"wrote latents {args.save_latents} {tuple(np.shape(latents))}")
    if images is None or out is None:
        return
    uint8 = im.to_uint8(images)
    if args.save_images:
        im.save_npz(args.save_images, uint8)
        print(f"wrote images {args.save_images}")
    labels = [str(label) for label in request.labels]
    grid = im.labelled_grid(uint8, labels) if args.label_grid else im.to_uint8_grid(images)
    im.save_png(out, grid)
    folder = image_folder(out)
    im.save_labelled_pngs(folder, uint8, request.labels)
    n = len(uint8)
    print(
        f"wrote {'labelled ' if args.label_grid else ''}grid {out} and {n} image{'s' * (n != 1)} in {folder}/"
    )


def run(args: argparse.Namespace) -> int:
    # Cheap checks first: flags, request shape and outputs fail before any model loads.
    RequestArgs.parse(args, num_classes=None)  # types and ranges; labels against the model later
    if args.engines:
        return run_engines(args)
    if args.backend not in ("auto", "torch"):
        raise UserError(f"--backend {args.backend} needs --engines DIR (a folder made by build or export)")
    return run_reference(args)


def run_engines(args: argparse.Namespace) -> int:
    out = check_outputs(args, has_vae=None)
    folder = EnginesArgs.open(args, model_flags=True)  # the folder fixes the model: flags checked here
    backend = engines_backend(folder, args.backend)
    with Sampler.load(
        folder,
        backend=backend,
        providers=args.providers,
        graphs=graphs_for(folder, args.cache_interval > 1),  # cached: the two cached graphs, no dit_step
        **BackendArgs.options(args, backend),
    ) as s:
        if not s.has_vae:
            if args.out or args.label_grid:
                flag = "--out" if args.out else "--label-grid"
                raise UserError(f"{flag} needs a VAE, and this export has none (exported with --vae none)")
            out = None
        request = RequestArgs.parse(args, s.num_classes)
        print(f"sampling {len(request.labels)} image(s) with {s.describe()}")
        res = s.generate(request, decode=s.has_vae, progress=not args.no_progress)
    write_outputs(args, out, request, res.latents, res.images)
    return 0


def run_reference(args: argparse.Namespace) -> int:
    """The PyTorch reference end to end (the torch path: its stage modules are imported here,
    after the cheap checks)."""
    spec = ModelArgs.parse(args)
    out = check_outputs(args, has_vae=spec.vae != "none")
    spec = spec.check_available()  # finds (or downloads) the weights and the VAE before building anything
    import torch

    from dit_export.models.vae import VAEDecode, vae_factor
    from dit_export.sampling.reference import request_latents

    model, cfg = spec.load_dit()
    request = RequestArgs.parse(args, cfg.num_classes)
    vae = spec.load_vae()
    decode = None
    if vae is not None:
        if args.image_size and vae_factor(vae) * cfg.input_size != args.image_size:
            raise UserError("--image-size does not match the model's latent size and the VAE factor")
        decode = VAEDecode(vae).eval()
    latents = request_latents(model, request, progress=not args.no_progress)
    images = None
    if decode is not None:
        with torch.inference_mode():
            images = decode(latents).numpy()
    write_outputs(args, out, request, latents.numpy(), images)
    return 0
