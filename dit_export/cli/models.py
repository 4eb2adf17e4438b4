"""`models`: every model name this package knows, its size and cost, and what is shipped or cached."""

from __future__ import annotations

import argparse

from dit_export.models.catalog import format_models, list_models


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the model names: parameters, GFLOPs per forward, shipped or cached weights",
        description="Every DiT size (XL/L/B/S × 2/4/8) at 256 and 512 px and the models shipped in the "
        "package, with parameters, GFLOPs of one denoiser forward, and whether the weights are shipped, "
        "already downloaded, or would be downloaded on first use.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(format_models(list_models()))
    return 0
