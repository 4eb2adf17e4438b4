"""Sample sets at scale: one set of N images split over any number of processes, bit-identical for any split.

    set = SetRequest(num_images=50_000, seed=0, cfg_scale=1.5, steps=250)
    run_shard("engines/DiT-XL-2-256-fp16-b32", set, "fid50k", Shard(3, 8), backend="trt")  # on each GPU
    merge_set("fid50k")                                    # once, anywhere: fid50k/samples.npz

What an image is depends only on its global index i: its label is `classes[i % len(classes)]`
(all classes of the model by default: 0, 1, …, C−1, 0, 1, …, so N = K·C gives K per class), its
Philox noise is keyed by (seed, i), and it is always computed at row i mod B of the engine batch B
with the same batch-mates (the images of i // B). The set is cut into chunks of `chunk` consecutive
images (a multiple of B); chunk c is one file, and shard I of N owns the chunks c with
c mod N == I (round-robin over chunks, so every shard gets the same mix of classes and the
last, shorter chunk does not unbalance the first shard). Nothing a shard computes depends on N,
which is why one process, three processes and a torchrun launch write the same bytes.

Layout of SETDIR (every file written atomically: temp file + rename):

    shards/00003-of-00008/request.json     the set's identity + this shard (refused if it differs on resume)
    shards/00003-of-00008/.lock            held while the shard runs (filelock): one writer per shard
    shards/00003-of-00008/chunk-000011.npy uint8 (chunk, H, W, 3) images of global chunk 11
    shards/00003-of-00008/chunk-000011.json its record: first index, count, sha256, seconds, set key
    samples.npz                            after merge: arr_0 uint8 N×H×W×3 in global order, arr_1 int64 labels

A chunk counts as done only when its record exists, names this set and the `.npy` has the
recorded size and SHA-256; a restarted shard redoes every other chunk. The merge checks every
shard of the recorded count is present with the same identity and every chunk is done, then
streams the chunks into the ADM evaluator's npz layout (deterministic zip: same images → same bytes).

Modules: `launcher` (which shard: flags, torchrun, Slurm; GPU pinning), `records` (the request and
the identity every shard records), `store` (chunk files and the shard lock), `run` (one shard's
loop), `merge` (samples.npz). A consumer of the runtime (the verify/bench/serve stage): numpy and
the runtime only, no torch at import time (the torch backend imports it when used).
"""

from dit_export.sets.launcher import Shard, parse_shard, pin_gpu, shard_from_env
from dit_export.sets.merge import SAMPLES_FILE, MergeResult, merge_set
from dit_export.sets.records import SCHEMA, SetRequest, set_labels
from dit_export.sets.run import ShardResult, run_shard

__all__ = [
    "SAMPLES_FILE",
    "SCHEMA",
    "MergeResult",
    "SetRequest",
    "Shard",
    "ShardResult",
    "merge_set",
    "parse_shard",
    "pin_gpu",
    "run_shard",
    "set_labels",
    "shard_from_env",
]
