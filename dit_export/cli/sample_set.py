"""`sample-set`: a large sample set (FID-50K) split over processes, GPUs or machines; `--merge` joins it.

    torchrun --nproc_per_node=8 -m dit_export sample-set --engines E --per-class 50 --out fid50k
    python -m dit_export sample-set --out fid50k --merge          # → fid50k/samples.npz (ADM layout)

The shard comes from `--shard I/N`, else from the launcher's variables (torchrun's RANK/WORLD_SIZE,
Slurm's array or task ids). Layout, labels and resume rules: `dit_export.sets` and
docs/sample_sets.md.
"""

from __future__ import annotations

import argparse
import os

from dit_export.cli.args import (
    BackendArgs,
    CacheArgs,
    EnginesArgs,
    RequestArgs,
    add_progress,
    engines_backend,
    fields,
    positive,
    stderr_line,
)
from dit_export.errors import UserError
from dit_export.sets import (
    SetRequest,
    merge_set,
    parse_shard,
    pin_gpu,
    run_shard,
    shard_from_env,
)


def register(sub) -> None:
    p = sub.add_parser(
        "sample-set",
        help="generate a large sample set (FID-50K) in shards over any number of processes; --merge it",
        description="Generate N images (labels spread evenly over the classes, Philox noise keyed by "
        "each image's global index) as resumable chunk files under --out, split over processes by "
        "--shard I/N or the launcher's RANK/WORLD_SIZE (torchrun) or Slurm ids; the result is "
        "bit-identical for any split. `--out SETDIR --merge` then writes SETDIR/samples.npz for the "
        "ADM FID evaluator. Example: torchrun --nproc_per_node=8 -m dit_export sample-set --engines "
        "engines/xl --backend trt --num-images 50000 --cfg-scale 1.5 --out fid50k",
    )
    EnginesArgs.add_to(p, help="an exported/built folder (required unless --merge)")
    g = p.add_argument_group("set")
    g.add_argument("--num-images", type=positive, default=None, help="images in the whole set N")
    g.add_argument(
        "--per-class", type=positive, default=None, help="K images of every class: N = K × classes"
    )
    g.add_argument(
        "--chunk",
        type=positive,
        default=None,
        help="images per file, a multiple of the engine batch (default ~64)",
    )
    g = p.add_argument_group("processes")
    g.add_argument(
        "--out", required=True, metavar="SETDIR", help="the set's folder (shards, then samples.npz)"
    )
    g.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="this process writes shard I of N (default: RANK/WORLD_SIZE, Slurm ids, else 0/1)",
    )
    g.add_argument("--merge", action="store_true", help="check every shard and write SETDIR/samples.npz")
    g.add_argument("--png", action="store_true", help="with --merge: also SETDIR/png/000000.png …")
    RequestArgs.add_to(
        p,
        noise=False,
        helps={
            "--classes": "labels cycle through these ids (default: every class 0..C−1 in order)",
            "--cfg-scale": "guidance scale ≥ 1 (default 4; FID: 1.5)",
            "--seed": "Philox seed of the set, 0..2**64-1 (default 0)",
        },
    )
    BackendArgs.add_to(
        p,
        default="auto",
        help="the runtime backend, the same for every shard (auto: TensorRT when the folder has plans "
        "and TensorRT imports, else ONNX Runtime; the set records the one used)",
    )
    p.add_argument(
        "--threads",
        type=positive,
        default=None,
        help="ort/cpp: CPU threads per process (default: the library's; with P processes on one CPU "
        "machine, cores / P)",
    )
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.merge:
        merge_set(args.out, png=args.png, progress=not args.no_progress)
        return 0
    if args.png:
        raise UserError("--png goes with --merge (the shards write .npy chunks)")
    if args.engines is None:
        raise UserError("give --engines DIR (an exported or built folder), or --merge")
    shard = parse_shard(args.shard) if args.shard is not None else shard_from_env(os.environ)
    pinned = pin_gpu(os.environ)  # before any backend initialises CUDA
    if pinned:
        stderr_line(f"shard {shard}: {pinned}")
    req = SetRequest(
        classes=None if args.classes is None else tuple(args.classes),
        **fields(args, "num_images", "per_class", "seed", "cfg_scale", "steps", "sampler", "chunk"),
        **CacheArgs.fields(args),
    )
    backend = engines_backend(args.engines, args.backend)
    options = BackendArgs.options(args, backend)
    if args.threads is not None:
        if backend not in ("ort", "cpp"):
            raise UserError(f"--threads applies to the ort and cpp backends, not {backend}")
        options["threads"] = args.threads
    res = run_shard(
        args.engines,
        req,
        args.out,
        shard,
        backend=backend,
        providers=args.providers,
        progress=not args.no_progress,
        **options,
    )
    rate = (
        f" at {res.images_per_second:.2f} images/s, {res.cpu_seconds / res.generated:.3f} CPU s/image"
        if res.generated
        else ""
    )
    print(f"shard {shard}: {res.images} images done ({res.generated} generated now{rate}) in {res.folder}")
    return 0
