"""The text of every error body the gateway sends, per status and surface: authz's, the RLS's,
and the ones Envoy answers itself (``envoy/envoy.yaml`` spells them out inline — its 401 and
403 routes, ``local_reply_config``, the upstream Lua filter — and
``tests/unit/test_envoyconf.py`` fails unless each is byte for byte the one built here).

One body per status, whatever the reason: a caller learns nothing about which check failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorText:
    """What an error body says: OpenAI's message, type and code; Ollama's body is the message."""

    message: str
    type: str
    code: str


_BY_STATUS = {
    400: ErrorText("invalid request", "invalid_request_error", "invalid_request"),
    401: ErrorText("invalid or missing API key", "invalid_request_error", "invalid_api_key"),
    403: ErrorText("forbidden", "permission_denied", "forbidden"),
    404: ErrorText("not found", "invalid_request_error", "not_found"),
    # Envoy's own: the request did not arrive in time (request_timeout).
    408: ErrorText("request timeout", "invalid_request_error", "request_timeout"),
    413: ErrorText("request body too large", "invalid_request_error", "request_too_large"),
    415: ErrorText("request body must be JSON", "invalid_request_error", "unsupported_media_type"),
    429: ErrorText("too many requests", "rate_limit_exceeded", "rate_limit_exceeded"),
    502: ErrorText("upstream error", "server_error", "bad_gateway"),
    503: ErrorText("service unavailable", "server_error", "service_unavailable"),
}
_OTHER = ErrorText("error", "api_error", "error")

# Envoy's own answer when the model server cannot be reached (refused, reset, no healthy host,
# overflow, timeout): one body, whichever of 502, 503 or 504 Envoy answers.
UPSTREAM_UNAVAILABLE = ErrorText("model server unavailable", "server_error", "upstream_unavailable")


def error_body(status: int, surface: str) -> bytes:
    """The body of an error ``status`` in the surface's shape (``openai`` or ``ollama``)."""
    return body_for(_BY_STATUS.get(status, _OTHER), surface)


def body_for(text: ErrorText, surface: str) -> bytes:
    if surface == "openai":
        error = {"message": text.message, "type": text.type, "code": text.code}
        return json.dumps({"error": error}).encode()
    return json.dumps({"error": text.message}).encode()
