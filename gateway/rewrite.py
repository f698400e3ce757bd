"""Request-body rewriting on inference routes, before the body reaches the backend.

authz decides which requests need one (:func:`apply` on the body it parsed: it marks them
``rewrite`` in its metadata, and only those take Envoy's mutating ext_proc round trip);
accounting does it (:func:`rewrite` on the buffered body). One set of rules for both.

* A stream of an endpoint whose counts are opt-in (:mod:`gateway.endpoints`: ``usage_opt_in``)
  without ``stream_options.include_usage`` gets it (the backend then sends the counts); the
  caller must drop the extra usage chunk from the client's stream.
* ``keep_alive`` is clamped into the tenant's ``[min, max]`` seconds: ``keep_alive: 0`` would
  unload a model other tenants share, ``-1`` would pin it forever.
* The output cap authz reserved budget for is applied, in the endpoint's cap field
  (:mod:`gateway.endpoints`: ``output_cap``), when the request sets none or a larger one, so
  the reservation is a true upper bound.

Fields are read and written as Ollama's Go decoder matches them (:mod:`gateway.gojson`): a
``"Keep_Alive"`` is clamped like ``"keep_alive"`` and leaves under the canonical spelling.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway import endpoints, gojson
from gateway.endpoints import Endpoint, OutputCap

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Limits:
    """What authz decided for this request (from its dynamic metadata)."""

    endpoint: str
    stream: bool
    max_tokens: int  # 0: no cap
    keep_alive_min_s: int | None
    keep_alive_max_s: int | None


@dataclass(frozen=True, slots=True)
class Rewrite:
    body: bytes | None  # the new body; None when nothing changed
    strip_usage: bool  # the client did not ask for the usage chunk: drop it from its stream


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive (seconds as a number, or a Go duration string) in seconds; None
    when it is none, or no finite number (``"1e400"``, ``"NaN"``: unreadable, like garbage)."""
    seconds = _keep_alive_seconds(value)
    return seconds if seconds is None or math.isfinite(seconds) else None


def _keep_alive_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text.replace(" ", ""):
            return sum(float(n) * _UNIT_S[u] for n, u in parts)
    return None


def _clamp_keep_alive(body: dict[str, Any], low: int | None, high: int | None) -> bool:
    spelled = gojson.key_of(body, "keep_alive")
    if spelled is None or (low is None and high is None):
        return False
    seconds = keep_alive_seconds(body[spelled])
    low_s = low if low is not None else 0
    target: int
    if seconds is None or seconds < 0:  # unparseable or "forever": the tenant's maximum
        target = high if high is not None else low_s
    else:
        target = max(low_s, int(seconds))
        if high is not None:
            target = min(high, target)
        if target == seconds:
            return False
    gojson.put(body, "keep_alive", target)
    return True


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _read(container: dict[str, Any], name: str, exact: bool) -> Any:
    return container.get(name) if exact else gojson.field(container, name)


def _apply_cap(body: dict[str, Any], spec: OutputCap | None, cap: int) -> bool:
    """Set the field the backend obeys (``spec.field``, :mod:`gateway.endpoints`) to the
    smaller of ``cap`` and what the request asks in any of its cap fields, and every other cap
    field present to the same value: the backend gets one consistent limit. A field is a key
    of a map such as ``options`` (``in_options``: Go matches it exactly) or a struct field;
    another spelling of it goes (Ollama ignores it in a map, and the body stays unambiguous)."""
    if cap <= 0 or spec is None:
        return False
    container = body
    if spec.in_options:
        options = gojson.field(body, "options")
        container = options if isinstance(options, dict) else {}
        gojson.put(body, "options", container)
    exact = spec.in_options
    asked = [v for v in (_read(container, f, exact) for f in spec.fields) if _positive(v)]
    target = min([cap, *asked])
    changed = False
    for name in (spec.field, *spec.aliases):
        current = _read(container, name, exact)
        present = name in container if exact else gojson.key_of(container, name) is not None
        if (name == spec.field or present) and not (_positive(current) and current == target):
            gojson.put(container, name, target)
            changed = True
    return changed


def _ask_for_usage(body: dict[str, Any], endpoint: Endpoint | None) -> bool:
    if endpoint is None or not endpoint.usage_opt_in or gojson.field(body, "stream") is not True:
        return False
    options = gojson.field(body, "stream_options")
    if isinstance(options, dict) and gojson.field(options, "include_usage") is True:
        return False
    options = dict(options) if isinstance(options, dict) else {}
    gojson.put(options, "include_usage", True)
    gojson.put(body, "stream_options", options)
    return True


@dataclass(frozen=True, slots=True)
class Changes:
    changed: bool  # the body differs from what the client sent
    strip_usage: bool  # include_usage was added: the client's stream loses the usage chunk


def apply(body: dict[str, Any], limits: Limits) -> Changes:
    """Rewrite a parsed body in place; what changed."""
    endpoint = endpoints.for_path(limits.endpoint)
    strip_usage = _ask_for_usage(body, endpoint)
    capped = _apply_cap(body, endpoint.output_cap if endpoint else None, limits.max_tokens)
    clamped = _clamp_keep_alive(body, limits.keep_alive_min_s, limits.keep_alive_max_s)
    return Changes(strip_usage or capped or clamped, strip_usage)


def rewrite(raw: bytes, limits: Limits) -> Rewrite:
    """The body to send upstream. A body that is not a JSON object passes unchanged (authz
    already refused what it could not read)."""
    try:
        body = gojson.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Rewrite(None, False)
    if not isinstance(body, dict):
        return Rewrite(None, False)
    changes = apply(body, limits)
    if not changes.changed:
        return Rewrite(None, False)
    return Rewrite(json.dumps(body, ensure_ascii=False).encode("utf-8"), changes.strip_usage)
