#!/usr/bin/env python3
"""The TensorRT folders ctest's test_tensorrt runs on (scripts/test.sh, on a GPU + TensorRT machine).

    python scripts/trt_test_engines.py --out DIR    # prints DIR/s8-fp32:DIR/s8-fp16 (DIT_TEST_TRT_ENGINES)

Where TensorRT is not usable (`trt_api.probe()`), prints nothing and says why on stderr (exit 0):
the CPU path of scripts/test.sh is unchanged. Otherwise, for every precision of
`export.precision.PRECISIONS` (a precision added there is built and tested without a change
here): `build --backend tensorrt` of the tests' S/8 model (batch 2, random weights, tiny VAE)
into DIR/s8-<precision> (reused when unchanged), and the Python TensorRT runtime's images for one
request per sampler the folder records (labels 207 360 387, seed 3, cfg 4, the shortest stored
step count) into DIR/s8-<precision>.trt_reference.json + .npy files, which test_tensorrt compares
the C++ runtime with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the tests' S/8 (tests/folders.py MODEL_ARGS)
MODEL_ARGS = ["--model", "S/8", "--random-weights", "--vae", "random-tiny", "--batch", "2"]
LABELS = (207, 360, 387)
SEED = 3


def reference(folder: Path) -> Path:
    """The Python TensorRT runtime's images of one request per recorded sampler."""
    import numpy as np

    from dit_export.export.manifest import Manifest
    from dit_export.runtime import Sampler

    manifest = Manifest.read(folder)
    stored = manifest.schedule.stored()
    meta: dict = {"engines": str(folder), "requests": []}
    with Sampler.load(folder, backend="trt") as s:
        for name in manifest.schedule.samplers:
            if not stored.get(name):
                continue  # test_tensorrt fails on a recorded sampler without stored steps
            steps = min(stored[name])
            images = s.sample(
                list(LABELS), seed=SEED, cfg_scale=4.0, steps=steps, sampler=name, progress=False
            )
            npy = f"{folder.name}.{name}.{steps}.npy"
            np.save(folder.parent / npy, images)
            request = {
                "labels": list(LABELS),
                "seed": SEED,
                "cfg_scale": 4.0,
                "steps": steps,
                "sampler": name,
            }
            meta["requests"].append({**request, "images": npy})
    path = folder.parent / f"{folder.name}.trt_reference.json"
    path.write_text(json.dumps(meta, indent=1))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the exports and their reference images")
    a = p.parse_args()
    from dit_export.engine import trt_api
    from dit_export.export.precision import PRECISIONS

    ok, why = trt_api.probe()
    if not ok:
        print(
            f"trt_test_engines: TensorRT is not usable here ({why}): no TensorRT test folders",
            file=sys.stderr,
        )
        return 0
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", DIT_EXPORT_OFFLINE="1")
    folders = []
    for precision in PRECISIONS:
        folder = out / f"s8-{precision}"
        cmd = [sys.executable, "-m", "dit_export", "build", *MODEL_ARGS, "--precision", precision,
               "--backend", "tensorrt", "--out", str(folder), "--no-verify"]  # fmt: skip
        print("trt_test_engines: " + " ".join(cmd[1:]), file=sys.stderr)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=sys.stderr)
        if proc.returncode != 0:
            print(f"trt_test_engines: the {precision} build failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        print(f"trt_test_engines: wrote {reference(folder)}", file=sys.stderr)
        folders.append(str(folder))
    print(os.pathsep.join(folders))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
