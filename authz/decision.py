"""What authz answers: allow (with headers and metadata) or a local reply in the surface's shape.

Denials are deliberately uninformative: one body per status, whatever the reason, so a caller
learns nothing about which check failed (a wrong key and a revoked key look the same; a
blocked endpoint and an unknown model look the same). Which one did is the reply's ``reason``
(:class:`gateway.requestmeta.Reason`): metadata for the audit row and Envoy's access log only.

The text of every error body is :mod:`gateway.errorbodies`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.errorbodies import error_body
from gateway.requestmeta import Reason


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
    reason: Reason | None = None  # why it was refused (None: an answer, not a refusal)


Decision = Allow | Reply


def deny(
    status: int,
    surface: str,
    headers: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    reason: Reason | None = None,
) -> Reply:
    return Reply(
        status=status,
        body=error_body(status, surface),
        headers={"content-type": "application/json", **(headers or {})},
        metadata=metadata or {},
        reason=reason,
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
