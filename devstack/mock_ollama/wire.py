"""The mock's response encoding: JSON bodies, NDJSON lines and SSE events as Ollama writes them."""

from __future__ import annotations

import json
import time
from typing import Any, Final

from aiohttp import web

JSONObj = dict[str, Any]

JSON_CT: Final = "application/json; charset=utf-8"
NDJSON_CT: Final = "application/x-ndjson"
SSE_CT: Final = "text/event-stream"


def rfc3339(ns: int | None = None) -> str:
    """Go's ``time.Time`` JSON form (RFC 3339, nanoseconds with trailing zeros trimmed, UTC)."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if frac:
        base += f".{frac:09d}".rstrip("0")
    return base + "Z"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(obj: Any, status: int = 200, newline: bool = False) -> web.Response:
    """gin's ``c.JSON`` (native API), or with ``newline`` the compatibility layers'
    ``json.NewEncoder`` (trailing newline, no charset)."""
    if newline:
        return web.Response(
            body=_dumps(obj) + b"\n", status=status, headers={"Content-Type": "application/json"}
        )
    return web.Response(body=_dumps(obj), status=status, headers={"Content-Type": JSON_CT})


def ndjson(obj: Any) -> bytes:
    return _dumps(obj) + b"\n"


def sse(obj: Any, event: str | None = None, sort_keys: bool = False) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    return head + b"data: " + data.encode() + b"\n\n"
