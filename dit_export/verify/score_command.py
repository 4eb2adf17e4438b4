"""`score`: class accuracy and Fréchet distance of generated digits, per backend and guidance scale."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dit_export.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from dit_export.models.embedded import EmbeddedModel
    from dit_export.verify.score import SampleFn

BACKENDS = ("torch", "ort", "trt")


def load_embedded_reference(name: str) -> tuple[Any, Any]:
    """(DiT, VAEDecode) of a shipped model, through the same loaders as any checkpoint."""
    from dit_export.models.checkpoints import load_dit
    from dit_export.models.embedded import resolve_embedded
    from dit_export.models.vae import VAEDecode, load_vae

    ckpt, vae_path, image_size, heads = resolve_embedded(name)
    model, _ = load_dit(ckpt, image_size=image_size, num_heads=heads)
    return model, VAEDecode(load_vae(str(vae_path))).eval()


def runtime_sampler_factory(
    args: argparse.Namespace, info: EmbeddedModel
) -> Callable[[float], tuple[SampleFn, str]]:
    """For --engines: cfg scale → (labels → uint8 images, precision) from the runtime's
    ``Sampler.load(engines, backend).sample(...)``, the path users sample with."""
    import numpy as np

    from dit_export.runtime import Sampler

    runner = Sampler.load(args.engines, args.backend)
    if (runner.num_classes, runner.image_size) != (info.num_classes, info.image_size):
        raise UserError(
            f"{args.engines} holds a {runner.num_classes}-class {runner.image_size}px model, "
            f"not {info.name} ({info.num_classes} classes, {info.image_size}px)"
        )

    def make(cfg_scale: float) -> tuple[SampleFn, str]:
        def sample(labels: Sequence[int]) -> np.ndarray:
            images = runner.sample(
                list(labels),
                seed=args.seed,
                cfg_scale=cfg_scale,
                steps=args.steps,
                sampler=args.sampler,
                progress=False,
            )
            assert isinstance(images, np.ndarray)
            return images

        return sample, runner.precision

    return make


def torch_sampler_factory(args: argparse.Namespace, name: str) -> Callable[[float], tuple[SampleFn, str]]:
    """For --backend torch: the fp32 PyTorch reference of the embedded model."""
    from dit_export.verify import score

    model, decode = load_embedded_reference(name)

    def make(cfg_scale: float) -> tuple[SampleFn, str]:
        fn = score.torch_sample_fn(
            model, decode, cfg_scale=cfg_scale, steps=args.steps, sampler=args.sampler, seed=args.seed
        )
        return fn, "fp32"

    return make


def run_score(args: argparse.Namespace) -> int:
    from dit_export.fileio import write_json
    from dit_export.models.embedded import embedded_model
    from dit_export.verify import score

    info = embedded_model(args.model)
    if args.steps < 1:
        raise UserError(f"--steps must be ≥ 1, got {args.steps}")
    if any(not s >= 1.0 for s in args.cfg_scale):
        raise UserError("--cfg-scale values must be ≥ 1 (1 = no guidance)")
    if args.engines:
        make = runtime_sampler_factory(args, info)
        label = f"{args.backend}-rt" if args.backend == "torch" else args.backend
    elif args.backend == "torch":
        make, label = torch_sampler_factory(args, info.name), "torch"
    else:
        raise UserError(f"--backend {args.backend} needs --engines DIR (a folder made by export)")
    clf = score.train_classifier(seed=0)
    results = []
    for cfg_scale in args.cfg_scale:
        fn, precision = make(cfg_scale)
        results.append(
            score.score_sampler(
                fn,
                per_class=args.per_class,
                num_classes=info.num_classes,
                classifier=clf,
                backend=label,
                precision=precision,
                cfg_scale=cfg_scale,
                steps=args.steps,
                sampler=args.sampler,
                seed=args.seed,
            )
        )
    print(
        f"model {info.name}: {args.per_class} images per class, {args.sampler} {args.steps} steps, seed {args.seed}"
    )
    print(score.format_table(results))
    if args.json:
        write_json(args.json, {"model": info.name, "results": [r.to_dict() for r in results]})
        print(f"wrote {args.json}")
    if args.min_accuracy is not None:
        worst = min(r.accuracy for r in results)
        if math.isnan(worst) or worst * 100 < args.min_accuracy:
            print(f"FAIL: accuracy {100 * worst:.1f}% is below --min-accuracy {args.min_accuracy:g}%")
            return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "score",
        help="class accuracy and Fréchet distance of generated digits (embedded model, no internet)",
        description="Generate K images per class, classify them with an MLP trained on the fly on "
        "scikit-learn's real digits, and report accuracy and a Fréchet distance on its features. "
        "Example: python -m dit_export score --per-class 20 --cfg-scale 4 1",
    )
    p.add_argument("--model", default="tiny-digits", help="embedded model (default tiny-digits)")
    p.add_argument("--per-class", type=int, default=20, help="images per class (default 20)")
    p.add_argument(
        "--cfg-scale", type=float, nargs="+", default=[4.0, 1.0], help="guidance scales (default 4 1)"
    )
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="without --engines: torch = the fp32 PyTorch reference; with --engines: the runtime backend",
    )
    p.add_argument(
        "--engines", default=None, metavar="DIR", help="an exported folder to score with the runtime"
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        metavar="PCT",
        help="exit 1 if any accuracy is below this percentage",
    )
    p.set_defaults(func=run_score)
