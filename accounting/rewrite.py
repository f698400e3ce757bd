"""Request-body rewriting on inference routes, before the body reaches the backend.

* An OpenAI stream without ``stream_options.include_usage`` gets it (the backend then sends
  the counts); the caller must drop the extra usage chunk from the client's stream.
* ``keep_alive`` is clamped into the tenant's ``[min, max]`` seconds: ``keep_alive: 0`` would
  unload a model other tenants share, ``-1`` would pin it forever.
* The output cap authz reserved budget for is applied when the request sets none or a larger
  one, so the reservation is a true upper bound.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_USAGE_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})
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
    """Ollama's keep_alive (seconds as a number, or a Go duration string) in seconds."""
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
    if "keep_alive" not in body or (low is None and high is None):
        return False
    seconds = keep_alive_seconds(body["keep_alive"])
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
    body["keep_alive"] = target
    return True


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _cap(container: dict[str, Any], field: str, cap: int) -> bool:
    """Set ``container[field]`` to ``cap`` when absent, non-positive or larger."""
    value: Any = container.get(field)
    if _positive(value) and value <= cap:
        return False
    container[field] = cap
    return True


def _apply_cap(body: dict[str, Any], endpoint: str, cap: int) -> bool:
    if cap <= 0:
        return False
    if endpoint in ("/api/chat", "/api/generate"):
        options = body.get("options")
        if not isinstance(options, dict):
            options = {}
            body["options"] = options
        return _cap(options, "num_predict", cap)
    if endpoint in ("/v1/chat/completions", "/v1/completions"):
        # Either field may carry the client's limit; the backend gets one consistent value.
        fields = ("max_tokens", "max_completion_tokens")
        asked = [body[f] for f in fields if _positive(body.get(f))]
        target = min([cap, *asked])
        changed = False
        for name in fields:
            if (name == "max_tokens" or name in body) and body.get(name) != target:
                body[name] = target
                changed = True
        return changed
    if endpoint == "/v1/responses":
        return _cap(body, "max_output_tokens", cap)
    if endpoint == "/v1/messages":
        return _cap(body, "max_tokens", cap)
    return False


def _ask_for_usage(body: dict[str, Any], limits: Limits) -> bool:
    if limits.endpoint not in _USAGE_ENDPOINTS or body.get("stream") is not True:
        return False
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    body["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return True


def rewrite(raw: bytes, limits: Limits) -> Rewrite:
    """The body to send upstream. A body that is not a JSON object passes unchanged (authz
    already refused what it could not read)."""
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return Rewrite(None, False)
    if not isinstance(body, dict):
        return Rewrite(None, False)
    strip_usage = _ask_for_usage(body, limits)
    capped = _apply_cap(body, limits.endpoint, limits.max_tokens)
    clamped = _clamp_keep_alive(body, limits.keep_alive_min_s, limits.keep_alive_max_s)
    if not (strip_usage or capped or clamped):
        return Rewrite(None, False)
    return Rewrite(json.dumps(body, ensure_ascii=False).encode("utf-8"), strip_usage)
