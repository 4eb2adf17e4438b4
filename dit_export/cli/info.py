"""`info CKPT`: what a checkpoint (or a shipped model's name) contains, without building the model."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's detected format, config, flavor and size")
    p.add_argument("ckpt", help="checkpoint file, diffusers folder, hub id, or a shipped model (tiny-digits)")
    p.add_argument("--model", default=None, help="cross-check against this model name")
    p.add_argument("--flavor", choices=["official", "diffusers"], default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dit_export.models.checkpoints import describe  # torch

    print(describe(args.ckpt, model=args.model, flavor=args.flavor))
    return 0
