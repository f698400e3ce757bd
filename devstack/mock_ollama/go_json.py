"""Request bodies read as Ollama's Go ``encoding/json`` reads them: key folding, type names and
syntax error messages."""

from __future__ import annotations

import json
from typing import Any


def go_type_name(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "object"


# Go's encoding/json matches a key to a struct field case-insensitively (U+017F folds with s,
# U+212A with k) and the last match wins. Every field name of Ollama's request structs is
# lower-case ASCII, so a key names the field its lower-cased, unfolded spelling names. Maps
# (``options``) and raw JSON (``format``, tool schemas) keep their keys exactly.
_GO_FOLD = str.maketrans({"\u017f": "s", "\u212a": "k"})
_EXACT_KEYS = frozenset({"options", "format", "tools", "parameters", "properties", "metadata"})


def as_go_reads(value: Any) -> Any:
    """A request body with its struct keys spelled as Ollama's Go decoder matches them."""
    if isinstance(value, list):
        return [as_go_reads(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = key.translate(_GO_FOLD).lower()
        out.pop(name, None)  # the last match wins
        out[name] = item if name in _EXACT_KEYS else as_go_reads(item)
    return out


def go_json_error(raw: bytes, exc: ValueError) -> str:
    """Approximate Go's ``encoding/json`` syntax errors (``invalid character 'x' ...``)."""
    if not isinstance(exc, json.JSONDecodeError):
        return "invalid character looking for beginning of value"
    doc, pos = exc.doc, exc.pos
    if pos >= len(doc.rstrip()):
        return "unexpected EOF"
    char = doc[pos]
    if exc.msg.startswith("Expecting property name"):
        where = "looking for beginning of object key string"
    elif exc.msg.startswith("Expecting ':'"):
        where = "after object key"
    elif exc.msg.startswith("Expecting ','"):
        where = "after object key:value pair" if "{" in doc[:pos] else "after array element"
    elif exc.msg.startswith("Extra data"):
        where = "after top-level value"
    else:
        where = "looking for beginning of value"
    return f"invalid character {char!r} {where}"
