"""The manifest's contract rules beyond its JSON schema: the schema version, the one path rule,
the graphs' I/O against batch / latent size / classes (and against the ONNX files themselves).

The C++ reader (cpp/src/manifest.cpp) states the same rules; tests/data/bad_manifests/ holds the
cases both readers must refuse with the same words.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from dit_export.errors import UserError
from dit_export.export.manifest.dtypes import DTYPE_NAMES
from dit_export.export.manifest.records import FILENAME, SCHEMA, TensorSpec
from dit_export.sampling.cache import (
    CACHE_COEF,
    CACHE_INPUT,
    CACHE_OUTPUT,
    DEFAULT_ORDER,
    FIRST_FULL,
    FORECAST_GRAPH,
    FULL_GRAPH,
    cache_shape,
)
from dit_export.sampling.schedule import STATE_NAMES, state_output

if TYPE_CHECKING:
    from dit_export.export.manifest.core import Manifest

PATH_RULE = "a relative path inside the folder"


def inside_path(name: str) -> bool:
    """THE path rule of manifests and artifact records (C++: dit::is_inside_path): a relative,
    '/'-separated path whose every part is non-empty and not hidden ('.', '..', '.x'), with no
    backslash, ':' (drive or stream), NUL, and at most 4096 bytes. Subfolders are allowed: the
    folder's own layout has them (plans/, aoti/). Symlinks inside the folder are the folder's own."""
    if not name or len(name.encode()) > 4096 or any(c in name for c in "\\:\0"):
        return False
    return all(part and not part.startswith(".") for part in name.split("/"))


def check_path(name: str, label: str, where: str = FILENAME) -> str:
    if not inside_path(name):
        raise UserError(f"{where}: field {label!r} must be {PATH_RULE}, got {name!r}")
    return name


def check_schema_version(raw: object, where: str) -> None:
    """Before the schema: a JSON object of our family and this version (older: re-export)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: not a JSON object")
    if "schema" not in raw:
        raise UserError(f"{where}: missing field 'schema' (not a dit_export manifest)")
    schema = raw["schema"]
    if not isinstance(schema, str):
        raise UserError(f"{where}: field 'schema' should be str, got {type(schema).__name__}")
    family, _, version = schema.partition("/")
    if family != SCHEMA.split("/")[0]:
        raise UserError(f"{where}: field 'schema' is {schema!r}, not a dit_export manifest")
    ours = int(SCHEMA.rpartition("/")[2])
    if version.isdigit() and int(version) < ours:
        raise UserError(
            f"{where}: {schema} was exported by an older dit_export (this one reads {SCHEMA}); re-export"
        )
    if schema != SCHEMA:
        raise UserError(f"{where}: schema {schema!r} is not supported (this one reads {SCHEMA}); re-export")


def vi_spec(vi) -> dict:
    """An ONNX ValueInfo as a manifest tensor record (dynamic dims are -1)."""
    t = vi.type.tensor_type
    dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return {"name": vi.name, "shape": dims, "dtype": DTYPE_NAMES.get(int(t.elem_type), str(t.elem_type))}


def consistency_problems(m: Manifest) -> Iterator[str]:
    """What the schema cannot say, in the order and words of the C++ reader (check_contract)."""
    if (m.vae is None) != (m.graphs["vae_decoder"] is None):
        yield "field 'vae' and 'graphs.vae_decoder' must both be set or both null"
    cfg = m.model.config
    c, size = m.latent_channels, m.latent_size
    if cfg["input_size"] != size or cfg["in_channels"] != c:
        yield f"field 'latent_size'/'latent_channels' ({c}×{size}²) disagree with model.config ({cfg['in_channels']}×{cfg['input_size']}²)"
    if m.model.null_class != m.num_classes:
        yield f"field 'model.null_class' is {m.model.null_class}, the model has {m.num_classes} classes (null = num_classes)"
    if m.model.cfg_channels not in (3, c):
        yield f"field 'model.cfg_channels' is {m.model.cfg_channels}; expected 3 or the latent channels {c}"
    factor = m.vae.factor if m.vae is not None else 8
    if m.image_size != size * factor:
        yield f"field 'image_size' {m.image_size} is not latent_size {size} × VAE factor {factor}"
    yield from io_problems(m)  # the cached graphs' I/O against the model (shape from max_order) first,
    yield from cache_problems(m)  # then the cache record's own fields


def no_cache_message(folder=None, order: int = DEFAULT_ORDER) -> str:
    """The one line for caching asked of a folder without the forecast graphs (exported before
    issue 21, or with --max-cache-order none)."""
    where = f"{folder}: " if folder is not None else ""
    return (
        f"{where}this export has no forecast graphs ({FULL_GRAPH}, {FORECAST_GRAPH}): re-export with "
        f"--max-cache-order {order} to sample with --cache-interval > 1"
    )


def expected_cache_shape(m: Manifest, slots: int) -> tuple[int, ...]:
    """(depth, 2, slots, 2N, tokens, hidden) of this export's model and batch."""
    cfg = m.model.config
    tokens = (int(cfg["input_size"]) // int(cfg["patch_size"])) ** 2
    return cache_shape(int(cfg["depth"]), m.batch, tokens, int(cfg["hidden_size"]), slots)


def cache_problems(m: Manifest) -> Iterator[str]:
    """The cache record against its graphs and the model (words shared with the C++ reader)."""
    have = [m.graphs.get(FULL_GRAPH) is not None, m.graphs.get(FORECAST_GRAPH) is not None]
    if any(have) != all(have) or (m.cache is not None) != all(have):
        yield f"field 'cache' and 'graphs.{FULL_GRAPH}', 'graphs.{FORECAST_GRAPH}' must all be set or all absent"
        return
    c = m.cache
    if c is None:
        return
    if c.first_full != FIRST_FULL:
        yield f"field 'cache.first_full' is {c.first_full}; the {c.schedule} schedule runs the first {FIRST_FULL} steps in full"
        return
    if c.slots != c.max_order + 1:
        yield f"field 'cache.slots' is {c.slots}; max_order {c.max_order} needs {c.max_order + 1}"
        return
    want = expected_cache_shape(m, c.slots)
    if tuple(c.shape) != want:
        cfg = m.model.config
        yield (
            f"field 'cache.shape' is {list(c.shape)}; depth {cfg['depth']}, batch {m.batch}, "
            f"patch {cfg['patch_size']} and hidden {cfg['hidden_size']} need {list(want)}"
        )
        return
    per_image = cache_bytes_per_image(c.shape, c.dtype, m.batch)
    if c.bytes_per_image != per_image:
        yield f"field 'cache.bytes_per_image' is {c.bytes_per_image}; the shape and dtype need {per_image}"


def cache_bytes_per_image(shape, dtype: str, batch: int) -> int:
    """Bytes of one cache tensor for one image (its rows are 2·batch)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n // int(batch) * TensorSpec("cache", (), dtype).np_dtype.itemsize


def _spec(name: str, shape: tuple[int, ...], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, shape, dtype)


def expected_io(m: Manifest) -> dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
    """{graph: (inputs, outputs)} the runtimes feed and read: the step graph (its 6 inputs, then
    the multistep solvers' state), the cached step graphs (the step's I/O, then the cache and its
    coefficient row; the full step also writes the refreshed cache) and the VAE decoder exactly;
    the dit graph by shape only."""
    n, c, size, img, k = m.batch, m.latent_channels, m.latent_size, m.image_size, len(m.schedule.coef_names)
    lat = (n, c, size, size)
    out_c = 2 * c if m.model.learn_sigma else c
    step_in = (
        _spec("x", lat),
        _spec("t", (n,), "int64"),
        _spec("y", (n,), "int64"),
        _spec("noise", lat),
        _spec("guidance", (1,)),
        _spec("coef", (k,)),
        *(_spec(s, lat) for s in STATE_NAMES),
    )
    step_out = (_spec("x_next", lat), *(_spec(state_output(s), lat) for s in STATE_NAMES))
    dit = m.graphs["dit"]
    dit_shapes = [(2 * n, c, size, size), (2 * n,), (2 * n,), (2 * n, out_c, size, size)]
    dit_io = (
        tuple(TensorSpec(t.name, s, t.dtype) for t, s in zip(dit.inputs + dit.outputs, dit_shapes))
        if dit
        else ()
    )
    io: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {}
    if m.cache is not None:
        slots = m.cache.max_order + 1
        shape, dtype = expected_cache_shape(m, slots), m.cache.dtype
        cache_in = (_spec(CACHE_INPUT, shape, dtype), _spec(CACHE_COEF, (slots,)))
        io[FULL_GRAPH] = (step_in + cache_in, (*step_out, _spec(CACHE_OUTPUT, shape, dtype)))
        io[FORECAST_GRAPH] = (step_in + cache_in, step_out)
    return {
        "dit_step": (step_in, step_out),
        "vae_decoder": ((_spec("latent", lat),), (_spec("image", (n, 3, img, img)),)),
        "dit": (dit_io[:3], dit_io[3:]),
        **io,
    }


def io_problems(m: Manifest) -> Iterator[str]:
    """The graphs' declared I/O against batch, latent size/channels, image size and coef_names."""
    why = f"batch {m.batch}, latent {m.latent_channels}×{m.latent_size}² and image {m.image_size} need"
    for name, (ins, outs) in expected_io(m).items():
        g = m.graphs[name]
        if g is None:
            continue
        for side, have, want in (("inputs", g.inputs, ins), ("outputs", g.outputs, outs)):
            if name == "dit" and len(have) != len(want):
                want = ()  # the dit graph: shapes only, of the 3 inputs and 1 output it has
            if len(have) != len(want):
                names = ", ".join(t.name for t in want)
                yield f"graphs.{name} has {len(have)} {side}, this runtime feeds {len(want)} ({names})"
                break
            for i, (h, w) in enumerate(zip(have, want)):
                if h != w:
                    yield f"graphs.{name}.{side}[{i}] is {_describe(h)}; {why} {_describe(w)}"


def _describe(t: TensorSpec) -> str:
    return f"{t.name} {t.dtype} {list(t.shape)}"


def graph_file_problems(m: Manifest, onnx) -> Iterator[str]:
    """The manifest's I/O of each graph against the ONNX file's own (names, shapes, dtypes)."""
    for name, g in m.graphs.items():
        if g is None:
            continue
        try:
            proto = onnx.load(str(m.path(g.file)), load_external_data=False)
        except Exception as e:  # a corrupt or non-ONNX file: one line, whatever protobuf says
            yield f"{m.folder}: {g.file.file} is not a readable ONNX file ({first_line(e)})"
            return
        have = [vi_spec(v) for v in list(proto.graph.input) + list(proto.graph.output)]
        want = [t.to_dict() for t in g.inputs + g.outputs]
        if have != want:
            diff = next(((w, h) for w, h in zip(want, have) if w != h), (want, have))
            yield (
                f"{m.folder / FILENAME}: graphs.{name} I/O disagrees with {g.file.file}: "
                f"manifest says {diff[0]}, the graph has {diff[1]}"
            )


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
