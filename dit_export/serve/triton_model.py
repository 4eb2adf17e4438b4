"""The Triton Python-backend model of the DiT sampler (copied as `<repo>/<name>/1/model.py`).

Runs inside Triton's Python-backend stub, one process per model instance, with `dit_export`
(runtime install: numpy < 2 for the stub, onnxruntime or TensorRT) importable there. The engines
folder and the runtime backend come from the config's parameters (written by `triton-repo`).

Request rows (Triton's batch dimension) are images: `class_label`, `seed` (+ optional
`cfg_scale`, `steps`, `sampler`, `first_index`). The rows of one request that share (seed,
cfg_scale, steps, sampler, first_index) form one `SampleRequest`, so a request is exactly
`dit_export sample --classes <its labels> --seed S …`: row i is image first_index + i of that
seed, whatever else the server is doing. Each
such group runs in chunks of the engine batch. Requests that Triton's dynamic batcher hands over
together share engine runs through `Sampler.generate_many` (each row keeps its own Philox key:
seed and image index, so each response equals its request run alone).

A bad request (unknown class, steps 0, a wrong sampler) gets a Triton error response; the model
and the other requests carry on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.images import to_uint8
from dit_export.runtime import Sampler
from dit_export.sampling.request import SampleRequest

try:  # provided by the stub; absent when this file is imported elsewhere (import checks, docs)
    import triton_python_backend_utils as pb_utils
except ModuleNotFoundError:
    pb_utils = None

OPTIONAL = ("cfg_scale", "steps", "sampler", "first_index")


def _param(config: dict, key: str, default: str | None = None) -> str | None:
    p = config.get("parameters", {}).get(key)
    return p.get("string_value", default) if isinstance(p, dict) else default


def _column(request, name: str, rows: int | None):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return None
    a = np.asarray(t.as_numpy())
    a = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    if a.shape[1] != 1:
        raise UserError(f"input {name}: one value per row, got shape {a.shape}")
    if rows is not None and a.shape[0] != rows:
        raise UserError(f"input {name} has {a.shape[0]} rows, class_label has {rows}")
    return a[:, 0]


def pin_gpu(ordinal: int, environ=os.environ) -> str:
    """One stub process per instance: show it only its GPU before CUDA initialises. `ordinal` is the
    server's device index, i.e. an index into the server's CUDA_VISIBLE_DEVICES when that is set."""
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    device = visible[ordinal] if ordinal < len(visible) else str(ordinal)
    environ["CUDA_VISIBLE_DEVICES"] = device
    return device


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _groups(request, defaults: dict) -> list[tuple[SampleRequest, list[int]]]:
    """[(request of one seed/cfg/steps/sampler, its row indices)] in first-row order."""
    labels = _column(request, "class_label", None)
    if labels is None or len(labels) == 0:
        raise UserError("input class_label is missing or empty")
    n = len(labels)
    seeds = _column(request, "seed", n)
    if seeds is None:
        raise UserError("input seed is missing")
    cols = {k: _column(request, k, n) for k in OPTIONAL}
    keys: dict[tuple, list[int]] = {}
    for i in range(n):
        key = (
            int(seeds[i]),
            float(cols["cfg_scale"][i]) if cols["cfg_scale"] is not None else defaults["cfg_scale"],
            int(cols["steps"][i]) if cols["steps"] is not None else defaults["steps"],
            _text(cols["sampler"][i]) if cols["sampler"] is not None else defaults["sampler"],
            int(cols["first_index"][i]) if cols["first_index"] is not None else 0,
        )
        keys.setdefault(key, []).append(i)
    out = []
    for (seed, cfg, steps, sampler, first), rows in keys.items():
        labs = tuple(int(labels[i]) for i in rows)
        req = SampleRequest(labs, seed=seed, cfg_scale=cfg, steps=steps, sampler=sampler, first_index=first)
        out.append((req, rows))
    return out


class TritonPythonModel:
    """One instance: a `Sampler` on the engines folder, loaded once."""

    def initialize(self, args: dict) -> None:
        if pb_utils is None:
            raise RuntimeError(
                "triton_python_backend_utils is missing: model.py runs inside Triton's Python backend"
            )
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        engines = Path(_param(config, "engines", "engines"))
        self.engines = engines if engines.is_absolute() else version_dir / engines
        backend = _param(config, "backend", "ort")
        if args.get("model_instance_kind") == "GPU" and "model_instance_device_id" in args:
            pin_gpu(int(args["model_instance_device_id"]))
        options: dict = {}
        if backend == "ort" and args.get("model_instance_kind") != "GPU":
            options["providers"] = ["CPUExecutionProvider"]  # KIND_CPU even where CUDA is there
        self.defaults = {
            "cfg_scale": float(_param(config, "default_cfg_scale", "4.0")),
            "steps": int(_param(config, "default_steps", "250")),
            "sampler": _param(config, "default_sampler", "ddpm"),
        }
        self.sampler = Sampler.load(self.engines, backend, **options)

    def _error(self, e: Exception):
        if isinstance(e, UserError):  # the client's mistake: INVALID_ARG (HTTP 400) where the stub has codes
            code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
            return pb_utils.TritonError(str(e), code) if code is not None else pb_utils.TritonError(str(e))
        return pb_utils.TritonError(f"{type(e).__name__}: {e}")

    def _generate(self, reqs: list[SampleRequest]) -> list[np.ndarray]:
        """uint8 images per request. A runtime with `generate_many` packs the rows of compatible
        requests into shared engine runs; otherwise each request runs on its own."""
        many = getattr(self.sampler, "generate_many", None)
        if many is not None and len(reqs) > 1:
            return [to_uint8(r.images) for r in many(reqs)]
        return [to_uint8(self.sampler.generate(r).images) for r in reqs]

    def execute(self, requests: list) -> list:
        """One response per request, in order; a bad request gets an error response, the rest run."""
        parsed: list = []  # per request: [(validated SampleRequest, its rows)] or the exception
        for request in requests:
            try:
                parsed.append(
                    [(self.sampler.request(req), rows) for req, rows in _groups(request, self.defaults)]
                )
            except Exception as e:  # noqa: BLE001 — a failed request must not take the model down
                parsed.append(e)
        todo = [g for p in parsed if not isinstance(p, Exception) for g in p]
        try:
            images = dict(zip(map(id, todo), self._generate([req for req, _ in todo])))
        except Exception:  # noqa: BLE001 — run alone to give the failure to its own request
            images = {}
        responses = []
        for p in parsed:
            try:
                if isinstance(p, Exception):
                    raise p
                rows = sum(len(r) for _, r in p)
                out = None
                for g in p:
                    img = images[id(g)] if id(g) in images else self._generate([g[0]])[0]
                    if out is None:
                        out = np.empty((rows, *img.shape[1:]), dtype=np.uint8)
                    out[g[1]] = img
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", out)]))
            except Exception as e:  # noqa: BLE001
                responses.append(pb_utils.InferenceResponse(error=self._error(e)))
        return responses

    def finalize(self) -> None:
        sampler = getattr(self, "sampler", None)
        if sampler is not None:
            sampler.close()
