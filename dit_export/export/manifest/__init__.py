"""`manifest.json`: the typed record of an exported folder, and everything a runtime needs from it.

Torch-free on purpose (json, numpy, fastjsonschema, pathlib): the numpy runtime and the C++
runtime read the same file. Its shape is one committed JSON schema (`manifest.schema.json`,
validated with fastjsonschema here and held against the C++ reader by the C++ tests); then the
rules a schema cannot say: the graphs' I/O agree with batch / latent size / classes (against the
ONNX files themselves when `onnx` is importable), timesteps lie in 0..num_train_steps-1 and
coefficient rows are finite; the optional forecast-cache record (`cache`) is there exactly when
its two step graphs (`dit_step_full`, `dit_step_forecast`) are, and agrees with them and the model
(a folder exported without them still loads; caching asked of it says "re-export"). Every path
a manifest or record names follows one rule (`rules.inside_path`, the same in C++). tests/data/bad_manifests/ is the corpus of faults both
readers must refuse with the same words.

The package: `records` (typed records, to/from dict), `schedules` (the sampler tables), `dtypes`
(the one dtype table), `validation` (JSON-Schema validation), `rules` (contract rules), `core`
(`Manifest`), `disk` (read once, write once, hashes).

The manifest is written once, by `export`, and never rewritten: compiled artifacts (TensorRT
plans, AOTI packages) are separate files with their own records (engine/).
"""

from dit_export.export.manifest.core import Manifest
from dit_export.export.manifest.dtypes import DTYPE_NAMES, DTYPES
from dit_export.export.manifest.records import (
    CACHE_SCHEDULE,
    FILENAME,
    GRAPH_NAMES,
    OPTIONAL_GRAPHS,
    REQUIRED_GRAPHS,
    SCHEMA,
    CacheInfo,
    FileRecord,
    GraphSpec,
    ModelInfo,
    TensorSpec,
    VaeInfo,
)
from dit_export.export.manifest.rules import inside_path
from dit_export.export.manifest.schedules import ScheduleTable, ScheduleTables
from dit_export.export.manifest.validation import SCHEMA_FILE, schema, validate_schema

__all__ = [
    "CACHE_SCHEDULE",
    "OPTIONAL_GRAPHS",
    "REQUIRED_GRAPHS",
    "CacheInfo",
    "DTYPES",
    "DTYPE_NAMES",
    "FILENAME",
    "GRAPH_NAMES",
    "SCHEMA",
    "SCHEMA_FILE",
    "FileRecord",
    "GraphSpec",
    "Manifest",
    "ModelInfo",
    "ScheduleTable",
    "ScheduleTables",
    "TensorSpec",
    "VaeInfo",
    "inside_path",
    "schema",
    "validate_schema",
]
