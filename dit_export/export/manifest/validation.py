"""JSON-Schema validation of a parsed manifest against the committed manifest.schema.json.

The validator is fastjsonschema (pure Python, no dependencies, compiled once per process: a
manifest with its tables validates in a few ms). Its first error becomes one line naming the
field, in the words the C++ reader uses for the same fault ("missing field 'model.spec'",
"field 'batch' should be int, got str", "unknown field 'graphs.unet'", ...).

Integers follow JSON Schema: 2.0 is an integer (the typed records cast it); both readers agree.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from dit_export.errors import UserError
from dit_export.export.manifest.records import FILENAME
from dit_export.lazy import optional_import

SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
# JSON Schema type → the Python name both readers print ("should be int, got str").
_TYPE_NAMES = {
    "object": "dict",
    "array": "list",
    "string": "str",
    "integer": "int",
    "number": "float/int",
    "boolean": "bool",
    "null": "NoneType",
}


@cache
def schema() -> dict:
    """The committed JSON schema (manifest.schema.json)."""
    return json.loads(SCHEMA_FILE.read_text())


@cache
def _validator():
    fastjsonschema = optional_import("fastjsonschema")
    return fastjsonschema.compile(schema()), fastjsonschema.JsonSchemaValueException


def validate_schema(raw: object, where: str = FILENAME) -> None:
    """Check `raw` against manifest.schema.json; a one-line UserError naming the first bad field."""
    validate, invalid = _validator()
    try:
        validate(raw)
    except invalid as e:
        raise UserError(f"{where}: {message(e)}") from None


def message(e) -> str:  # noqa: C901  (one branch per JSON Schema keyword the schema uses)
    """fastjsonschema's error as the readers' one line."""
    label = _label(e.name)
    d, v, rule = e.definition, e.value, e.rule
    if rule == "required":
        missing = next(k for k in d["required"] if k not in v)
        return f"missing field {_join(label, missing)!r}"
    if rule == "additionalProperties":
        extra = next(k for k in v if k not in d.get("properties", {}))
        return f"unknown field {_join(label, extra)!r}"
    if rule == "propertyNames":
        pattern = d["propertyNames"]["pattern"]
        bad = next(k for k in v if not re.search(pattern, k))
        return f"field {label!r} has key {bad!r}, not {d['propertyNames'].get('description', pattern)}"
    if rule == "type":
        kinds = d["type"] if isinstance(d["type"], list) else [d["type"]]
        want = "/".join(_TYPE_NAMES[k] for k in kinds)
        return f"field {label!r} should be {want}, got {type(v).__name__}"
    if rule == "enum":
        return f"field {label!r} is {v!r}, not one of {', '.join(map(str, d['enum']))}"
    if rule in ("minimum", "exclusiveMinimum"):
        bound, hint = d[rule], f" ({d['description']})" if "description" in d else ""
        if (rule, bound) in (("minimum", 1), ("exclusiveMinimum", 0)):
            return f"field {label!r} must be positive{hint}"
        if (rule, bound) == ("minimum", 0):
            return f"field {label!r} must be non-negative{hint}"
        return f"field {label!r} is {v}, {'below' if rule == 'minimum' else 'not above'} {bound}{hint}"
    if rule in ("minItems", "minLength"):
        return f"field {label!r} is empty"
    if rule == "pattern":
        return f"field {label!r} must be {d.get('description', 'of the form ' + d['pattern'])}, got {v!r}"
    return (
        f"field {label!r}: {e.message.removeprefix(e.name).strip()}"  # a keyword the schema does not use yet
    )


def _label(name: str) -> str:
    """fastjsonschema's 'data.graphs.dit.inputs[0]' → 'graphs.dit.inputs[0]'."""
    return name.removeprefix("data").removeprefix(".") or "<manifest>"


def _join(label: str, key: str) -> str:
    return key if label == "<manifest>" else f"{label}.{key}"
