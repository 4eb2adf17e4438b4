"""`aoti DIR`: AOTInductor packages of the step and VAE for the C++ runtime's CPU backend."""

from __future__ import annotations

import argparse
import time

from dit_export.sampling.cache import CACHE_GRAPHS

AOTI_GRAPHS = ("dit_step", "vae_decoder", *CACHE_GRAPHS)  # what engine.aoti can compile


def register(sub) -> None:
    p = sub.add_parser(
        "aoti",
        help="compile the C++ runtime's CPU packages (AOTInductor)",
        description="Compile AOTInductor packages (aoti/dit_step.pt2, aoti/vae_decoder.pt2, and the forecast "
        "cache's aoti/dit_step_full.pt2 + aoti/dit_step_forecast.pt2 when the export has those graphs) into an "
        "exported folder for the C++ runtime's CPU backend (cpp/), check them against the ONNX graphs, "
        "and write a record next to each package.",
    )
    p.add_argument(
        "engines", metavar="DIR", help="an exported folder (python -m dit_export export --out DIR)"
    )
    p.add_argument("--graphs", nargs="+", choices=AOTI_GRAPHS, default=None, help="default: all it has")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dit_export.pipeline import add_aoti_packages  # torch; takes the build lock

    t0 = time.perf_counter()
    records = add_aoti_packages(args.engines, tuple(args.graphs) if args.graphs else None)
    names = ", ".join(r["file"] for r in records.values())
    print(f"wrote {names} into {args.engines} in {time.perf_counter() - t0:.1f} s")
    return 0
