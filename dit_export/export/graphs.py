"""Trace a module to ONNX, clean it up with library passes, save it (external data when large).

Exporter: torch's `torch.export`-based ONNX exporter (`dynamo=True`, needs onnxscript). Measured
on torch 2.13 CPU against the TorchScript exporter (`dynamo=False`, deprecated since 2.9):

- graph: dynamo emits no Shape/Gather shape arithmetic at all for our static modules, `chunk` as
  one Split, and full shape/type information; TorchScript emits Shape/Constant chains that
  need folding first;
- XL/2 fp32 (2.7 GB of weights): dynamo 33 s and 3.1 GB peak RSS (weights are referenced, not
  copied, and traced with fake tensors); TorchScript 32 s and 8.8 GB (it runs the model and
  serialises a >2 GiB proto);
- numerics: both match torch to ~1e-7 rel-L2 on ORT CPU.

Clean-up uses onnx_ir's passes (the IR that torch's exporter and onnxscript's optimizer share):
they work on the in-memory model without copying weights, so they cost nothing on XL/2. onnxslim
(tried) needed 13.5 GB and 90 s on XL/2 fp32. After saving, onnx's own shape inference runs by
path in strict mode (works for > 2 GiB models) and writes the shapes of every tensor into the file.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dit_export import __version__
from dit_export.errors import UserError
from dit_export.export.precision import normalise_scope

if TYPE_CHECKING:  # torch is imported where a graph is traced (`inspect` needs only SCOPE_KEY)
    import torch

# Models whose serialised protobuf would pass this are saved with external data (protobuf caps a
# message at 2 GiB; we leave 64 MiB for the graph itself). Tests lower it with the env variable.
PROTO_LIMIT = 2**31 - 2**26
THRESHOLD_ENV = "DIT_EXPORT_EXTERNAL_DATA_THRESHOLD"
# The two DiT graphs share one external weights file once the weights pass this size (an fp16
# XL/2 is 1.36 GB: inline it would be written twice), or the threshold above when that is lower.
SHARED_MIN = 256 * 2**20
EXTERNAL_MIN_BYTES = 1024  # tensors above this go to the external file; smaller stay in the graph

# Node metadata we keep: a compact "module.path:Class" (for fp32-island reports). The exporter's
# stack traces hold absolute source paths, which would make file hashes machine-dependent.
SCOPE_KEY = "dit_export.scope"


def external_data_threshold(value: int | None = None) -> int:
    """Bytes of weights above which a graph gets external data: `value`, else env, else ~2 GiB."""
    if value is not None:
        return int(value)
    env = os.environ.get(THRESHOLD_ENV)
    if env:
        try:
            v = int(env)
        except ValueError:
            raise UserError(f"{THRESHOLD_ENV} must be a number of bytes, got {env!r}") from None
        if v < 0:
            raise UserError(f"{THRESHOLD_ENV} must be ≥ 0, got {v}")
        return v
    return PROTO_LIMIT


def shared_data_threshold(value: int | None = None) -> int:
    """Bytes of DiT weights above which dit.onnx and dit_step.onnx share one external-data file."""
    return min(external_data_threshold(value), SHARED_MIN)


@dataclass
class SavedGraph:
    path: Path
    external_data: list[str]  # file names beside `path` ([] when the weights are inline)
    param_bytes: int


EXPORTER_LOGGERS = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export", "onnxscript")


@contextlib.contextmanager
def quiet(names: tuple[str, ...] = EXPORTER_LOGGERS) -> Iterator[None]:
    """Compilers and exporters log progress and notes; keep the CLI's output ours."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


_TORCHLIB_OPS: list | None = None  # onnxscript's torch_lib functions, listed once per process


@contextlib.contextmanager
def torchlib_listed_once() -> Iterator[None]:
    """torch.onnx.export rebuilds its op registry on every call, and onnxscript's list of its
    ~500 torch_lib functions re-parses each one's source (`function_ir`): ~0.8 s of CPU per call,
    half of a small graph's export, and an export makes up to five calls. The list depends only on
    the installed onnxscript, so it is made once per process and handed to each call; with
    another torch/onnxscript layout, export runs as torch does."""
    global _TORCHLIB_OPS
    try:
        from torch.onnx._internal.exporter import _registration

        apis = _registration.onnxscript_apis
        build = apis.get_torchlib_ops
    except (ImportError, AttributeError):
        yield
        return
    if _TORCHLIB_OPS is None:
        _TORCHLIB_OPS = list(build())
    ops, own = _TORCHLIB_OPS, vars(apis).get("get_torchlib_ops")
    apis.get_torchlib_ops = lambda: list(ops)
    try:
        yield
    finally:
        if own is None:
            del apis.get_torchlib_ops  # the lazy module forwards to onnxscript's own again
        else:
            apis.get_torchlib_ops = own


def trace(
    module: torch.nn.Module,
    args: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
):
    """`torch.onnx.export(dynamo=True)` → an onnx_ir Model (nothing written yet)."""
    import torch

    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency; fail in one line)
    except ModuleNotFoundError:
        raise UserError("the ONNX exporter needs onnxscript: pip install 'dit_export[export]'") from None
    module = module.eval()
    try:
        with quiet(), torch.no_grad(), torchlib_listed_once():
            program = torch.onnx.export(
                module,
                tuple(args),
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                optimize=True,
                verbose=False,
                report=False,
            )
    except Exception as e:  # an exporter failure is not the user's; still one line unless debugging
        if os.environ.get("DIT_EXPORT_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(
            f"torch.onnx.export failed for {type(module).__name__}: {first} (DIT_EXPORT_DEBUG=1 shows the traceback)"
        ) from None
    assert program is not None  # f=None: the program is returned, not written
    return program.model


def cleanup(model) -> None:
    """Library passes on the IR, in place: constant folding, dead code, CSE, constants → initializers."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    import onnxscript.optimizer

    onnxscript.optimizer.optimize_ir(model)  # constant folding + rewrites the exporter also runs
    passes = ir.passes.Sequential(
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.IdentityEliminationPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.DeduplicateInitializersPass(),
        common.TopologicalSortPass(),
    )
    passes(model)
    _compact_metadata(model)


def _compact_metadata(model) -> None:
    for node in model.graph:
        props = node.metadata_props
        scopes = props.get("pkg.torch.onnx.name_scopes")
        classes = props.get("pkg.torch.onnx.class_hierarchy")
        scope = ""
        if scopes and classes:
            try:
                paths = _literal_list(scopes)
                types = _literal_list(classes)
            except ValueError:
                paths, types = [], []
            # The last entries name the op itself; the ones before, the module that ran it.
            if len(paths) >= 2 and len(types) >= 2:
                scope = f"{normalise_scope(paths[-2])}:{types[-2].rsplit('.', 1)[-1]}"
        props.clear()
        if scope:
            props[SCOPE_KEY] = scope
    model.graph.metadata_props.clear()
    model.metadata_props.clear()


def _literal_list(text: str) -> list[str]:
    value = ast.literal_eval(text)
    if not isinstance(value, list):
        raise ValueError(text)
    return [str(v) for v in value]


def param_bytes_of(module: torch.nn.Module) -> int:
    """Bytes of a torch module's parameters and buffers (what its graph will carry as weights)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def param_bytes(model) -> int:
    return sum(
        int(v.const_value.nbytes) for v in model.graph.initializers.values() if v.const_value is not None
    )


def save(model, path: Path, threshold: int | None = None, shared: SharedWeights | None = None) -> SavedGraph:
    """Write `model` to `path`; weights go to an external-data file beside it when above the threshold.

    With `shared`, the weights go to (or are found in) that one file, which several graphs
    reference: the first graph writes it, later graphs point at the tensors already there by
    content and only add what is new. Then shape inference by path (strict: every op must infer)
    writes all tensor shapes into the file, and the checker validates it, also by path (both
    read no weights).
    """
    import onnx
    import onnx_ir as ir

    path = Path(path)
    nbytes = param_bytes(model)
    external = nbytes > external_data_threshold(threshold)
    model.producer_name, model.producer_version = "dit_export", _version()
    if shared is not None and external:
        data = [shared.save(model, path)]
    elif external:
        data = [f"{path.name}.data"]
        ir.save(model, path, external_data=data[0], size_threshold_bytes=EXTERNAL_MIN_BYTES)
    else:
        data = []
        ir.save(model, path)
    try:
        onnx.shape_inference.infer_shapes_path(
            str(path), str(path), check_type=True, strict_mode=True, data_prop=True
        )
        onnx.checker.check_model(str(path), full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise UserError(f"exported graph {path.name} is not valid ONNX: {str(e).splitlines()[0]}") from None
    return SavedGraph(path=path, external_data=data, param_bytes=nbytes)


class SharedWeights:
    """One external-data file that several graphs of a folder reference (dit.onnx and dit_step.onnx
    hold the same DiT weights: XL/2 writes 2.7 GB once, not twice).

    Tensors are matched by content (dtype, shape, bytes), so a weight the exporter folded or
    renamed differently in the second graph is still found; anything new is appended to the file
    (offsets already written never move).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._where: dict[tuple, tuple[int, int]] = {}  # content key → (offset, length)

    def save(self, model, path: Path) -> str:
        import onnx_ir as ir

        folder = Path(path).parent
        if not self._where:  # the first graph writes the file and remembers where each tensor went
            ir.save(
                model,
                path,
                external_data=self.name,
                size_threshold_bytes=EXTERNAL_MIN_BYTES,
                callback=self._record,
            )
            return self.name
        with open(folder / self.name, "ab") as f:
            for value in model.graph.initializers.values():
                t = value.const_value
                if t is None or t.nbytes <= EXTERNAL_MIN_BYTES:
                    continue
                key = _content_key(t)
                if key not in self._where:  # new in this graph: append it
                    offset = f.seek(0, 2)
                    f.write(t.tobytes())
                    self._where[key] = (offset, t.nbytes)
                offset, length = self._where[key]
                value.const_value = ir.ExternalTensor(
                    self.name, offset, length, t.dtype, shape=t.shape, name=value.name, base_dir=folder
                )
        ir.save(model, path)  # external tensors keep their location: nothing is copied
        return self.name

    def _record(self, tensor, info) -> None:
        self._where[_content_key(tensor)] = (info.offset, tensor.nbytes)


def _content_key(t) -> tuple:
    digest = hashlib.blake2b(t.tobytes(), digest_size=20).digest()
    return (str(t.dtype), tuple(t.shape), digest)


def _version() -> str:
    return __version__
