"""A request body as Ollama reads it, so the body we check is the body Ollama runs.

Ollama decodes request bodies with Go's ``encoding/json``, which matches an object key to a
struct field case-insensitively, with Unicode simple folding (U+017F long s ≡ ``s``, the Kelvin sign
U+212A ≡ ``k``), and lets the last matching key win. A reader that looks up exact key names
sees another body: ``{"model": "a", "MODEL": "b"}`` would be checked as ``a`` and run as ``b``.
So authz and accounting read bodies only through this module:

* :func:`loads` refuses (``ValueError``) any object, at any depth, with two keys that are
  equal under Go's folding — the only way "last match wins" can pick a value nobody checked —
  and numbers Go cannot hold (``NaN``, ``Infinity``, ``1e400``).
* :func:`field` reads a struct field the way Go does: the one key that folds to its name,
  whatever its spelling. :func:`put` sets it, replacing the client's spelling.

Maps in Ollama's types (``options``) are matched exactly by Go too; read those with ``dict.get``.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

_MISSING = object()


@lru_cache(maxsize=4096)
def fold(name: str) -> str:
    """``name`` folded as Go's ``encoding/json`` folds keys: ASCII letters to upper case, any
    other character to the smallest character of its simple case-folding orbit."""
    if name.isascii():
        return name.upper()
    return "".join(_fold_char(c) for c in name)


def _fold_char(c: str) -> str:
    if c.isascii():
        return c.upper()
    orbit, frontier = {c}, [c]
    while frontier:
        current = frontier.pop()
        for other in (current.lower(), current.upper()):
            if len(other) == 1 and other not in orbit:
                orbit.add(other)
                frontier.append(other)
    return min(orbit)


class AmbiguousKeys(ValueError):
    """An object with two keys Go would treat as one field."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs) or len({fold(key) for key in obj}) != len(obj):
        raise AmbiguousKeys("an object has two keys that differ only in case")
    return obj


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def loads(data: bytes | str) -> Any:
    """Parse a request body; raises ``ValueError`` (or ``UnicodeDecodeError``, ``RecursionError``)
    for anything Ollama could read differently from us."""
    return json.loads(
        data, object_pairs_hook=_object, parse_constant=_constant, parse_float=_finite
    )


def field(obj: dict[str, Any], name: str, default: Any = None) -> Any:
    """The value Go decodes into the struct field tagged ``name`` (``default`` when absent).
    Objects from :func:`loads` hold at most one key per folded name."""
    value = obj.get(name, _MISSING)
    if value is not _MISSING:
        return value
    folded = fold(name)
    for key, value in obj.items():
        if fold(key) == folded:
            return value
    return default


def key_of(obj: dict[str, Any], name: str) -> str | None:
    """The key, as the client spelled it, that Go matches to the field ``name``."""
    if name in obj:
        return name
    folded = fold(name)
    return next((key for key in obj if fold(key) == folded), None)


def put(obj: dict[str, Any], name: str, value: Any) -> None:
    """Set the field ``name``, under its canonical spelling, in place of any other spelling."""
    spelled = key_of(obj, name)
    if spelled is not None and spelled != name:
        del obj[spelled]
    obj[name] = value
