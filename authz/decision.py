"""What authz answers: allow (with headers and metadata) or a local reply in the surface's shape.

Denials are deliberately uninformative: one body per status, whatever the reason, so a caller
learns nothing about which check failed (a wrong key and a revoked key look the same; a
blocked endpoint and an unknown model look the same).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_MESSAGES = {
    400: ("invalid request", "invalid_request_error", "invalid_request"),
    401: ("invalid or missing API key", "invalid_request_error", "invalid_api_key"),
    403: ("forbidden", "permission_denied", "forbidden"),
    404: ("not found", "invalid_request_error", "not_found"),
    413: ("request body too large", "invalid_request_error", "request_too_large"),
    415: ("request body must be JSON", "invalid_request_error", "unsupported_media_type"),
    429: ("too many requests", "rate_limit_exceeded", "rate_limit_exceeded"),
    502: ("upstream error", "server_error", "bad_gateway"),
    503: ("service unavailable", "server_error", "service_unavailable"),
}


@dataclass(frozen=True, slots=True)
class Allow:
    upstream_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: tuple[str, ...] = ()
    response_headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """A local reply: a denial, or an answer authz gives itself (listings)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


Decision = Allow | Reply


def error_body(status: int, surface: str, message: str | None = None) -> bytes:
    default, kind, code = _MESSAGES.get(status, ("error", "api_error", "error"))
    text = message or default
    if surface == "openai":
        return json.dumps({"error": {"message": text, "type": kind, "code": code}}).encode()
    return json.dumps({"error": text}).encode()


def deny(
    status: int,
    surface: str,
    headers: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Reply:
    return Reply(
        status=status,
        body=error_body(status, surface),
        headers={"content-type": "application/json", **(headers or {})},
        metadata=metadata or {},
    )


def json_reply(
    payload: Any, headers: dict[str, str] | None = None, metadata: dict[str, Any] | None = None
) -> Reply:
    return Reply(
        status=200,
        body=json.dumps(payload).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        metadata=metadata or {},
    )
