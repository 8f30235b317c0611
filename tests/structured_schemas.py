"""A dozen JSON schemas for the structured-output tests. A random-weight model never chooses to
close a string or stop a list, so every string and list here is bounded: what is tested is that
the output always parses and validates, not what it says."""
from __future__ import annotations

from typing import Any

SHORT = {"type": "string", "maxLength": 6}
SMALL_INT = {"type": "integer", "minimum": 0, "maximum": 99}


def obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": False}


SCHEMAS: dict[str, dict[str, Any]] = {
    "flat": obj({"name": SHORT, "age": SMALL_INT, "admin": {"type": "boolean"}}),
    "nested": obj({"user": obj({"name": SHORT,
                                "address": obj({"city": {"enum": ["Paris", "Oslo", "Lima"]},
                                                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})})}),
    "enum": {"enum": ["red", "green", "blue", 7, None]},
    "bounded_array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                      "minItems": 2, "maxItems": 4},
    "optional_fields": obj({"a": SMALL_INT, "b": SHORT, "c": {"type": "boolean"}}, required=["a", "c"]),
    "any_of_scalars": {"anyOf": [SMALL_INT, SHORT]},
    "tagged_union": {"anyOf": [obj({"kind": {"const": "circle"}, "radius": SMALL_INT}),
                               obj({"kind": {"const": "square"}, "side": SMALL_INT})]},
    "array_of_objects": {"type": "array", "maxItems": 3, "items": obj({
        "id": SMALL_INT, "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2}})},
    "nullable": obj({"nickname": {"type": ["string", "null"], "maxLength": 4}, "score": SMALL_INT}),
    "refs": {"$defs": {"point": obj({"x": SMALL_INT, "y": SMALL_INT})},
             **obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}})},
    "const_and_pattern": obj({"version": {"const": "1.0"},
                              "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}),
    "deep": obj({"a": obj({"b": obj({"c": obj({"d": {"enum": [True, False]}})})})}),
}
