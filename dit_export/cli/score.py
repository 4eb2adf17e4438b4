"""`score`: class accuracy and Fréchet distance of generated digits, per backend and guidance scale.

With `--engines DIR` the runtime samples on the backend the folder was built for (auto: TensorRT
when it holds plans, else ONNX Runtime); without, the fp32 PyTorch reference of the shipped model.
"""

from __future__ import annotations

import argparse
import math

from dit_export.cli.args import (
    BackendArgs,
    CacheArgs,
    EnginesArgs,
    check_output_file,
    count,
    engines_backend,
    fields,
    write_json_output,
)
from dit_export.errors import UserError
from dit_export.models.embedded import embedded_model
from dit_export.sampling import samplers
from dit_export.sampling.request import SampleRequest


def register(sub) -> None:
    p = sub.add_parser(
        "score",
        help="class accuracy and Fréchet distance of generated digits (embedded model, no internet)",
        description="Generate K images per class, classify them with an MLP trained on the fly on "
        "scikit-learn's real digits, and report accuracy and a Fréchet distance on its features. "
        "Example: python -m dit_export score --engines engines/tiny-digits --per-class 20 --cfg-scale 4 1",
    )
    p.add_argument("--model", default="tiny-digits", help="embedded model (default tiny-digits)")
    p.add_argument("--per-class", type=count, default=20, help="images per class (default 20)")
    p.add_argument(
        "--cfg-scale", type=float, nargs="+", default=[4.0, 1.0], help="guidance scales (default 4 1)"
    )
    p.add_argument("--steps", type=count, default=50, help="sampling steps (default 50)")
    p.add_argument("--sampler", choices=samplers.names(), default="ddpm", help=samplers.help_text())
    p.add_argument("--seed", type=count, default=0, help="noise seed (default 0)")
    CacheArgs.add_to(p)
    EnginesArgs.add_to(p, help="a built folder to score with the runtime (default: the PyTorch reference)")
    BackendArgs.add_to(
        p,
        default="auto",
        allowed=("ort", "trt", "torch"),
        help="with --engines: the runtime backend (auto: the backend the folder was built for); "
        "without: torch = the fp32 PyTorch reference",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        metavar="PCT",
        help="exit 1 if any accuracy is below this percentage",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = embedded_model(args.model)
    if args.steps < 1:
        raise UserError(f"--steps must be ≥ 1, got {args.steps}")
    for cfg_scale in args.cfg_scale:  # one validation of every request before any work
        SampleRequest(
            labels=(0,),
            seed=args.seed,
            cfg_scale=cfg_scale,
            steps=args.steps,
            sampler=args.sampler,  # its fewest steps too: before the model loads (torch)
            **CacheArgs.fields(args),
        ).validate()
    check_output_file(args.json, "--json")
    if not args.engines and args.backend not in ("torch", "auto"):
        raise UserError(f"--backend {args.backend} needs --engines DIR (a folder made by build or export)")
    from dit_export.verify import score  # sklearn + torch, after the cheap checks

    settings = score.ScoreSettings(
        cfg_scales=tuple(args.cfg_scale),
        **fields(args, "per_class", "steps", "sampler", "seed"),
        **CacheArgs.fields(args),
    )
    if args.engines:
        backend = engines_backend(args.engines, args.backend)
        opts = BackendArgs.options(args, backend)
        results = score.score_engines(args.engines, backend, info, settings, providers=args.providers, **opts)
    else:
        results = score.score_reference(info, settings)
    cache = f", cache N={args.cache_interval} O={args.cache_order}" if args.cache_interval > 1 else ""
    print(
        f"model {info.name}: {args.per_class} images per class, {args.sampler} {args.steps} steps, "
        f"seed {args.seed}{cache}"
    )
    print(score.format_table(results))
    write_json_output(args.json, {"model": info.name, "results": [r.to_dict() for r in results]})
    if args.min_accuracy is not None:
        worst = min(r.accuracy for r in results)
        if math.isnan(worst) or worst * 100 < args.min_accuracy:
            print(f"FAIL: accuracy {100 * worst:.1f}% is below --min-accuracy {args.min_accuracy:g}%")
            return 1
    return 0
