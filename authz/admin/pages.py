"""Opaque page tokens for list calls: the last item's sort key, base64url-encoded JSON.

A token comes back from the client, so it is input like any other: one that is not exactly
what this server issues (garbled, forged, another list's, a position of the wrong types) is
INVALID_ARGUMENT, never a query with what it holds."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from authz.admin.errors import InvalidArgument
from authz.admin.validation import check_text

_FORGED = "page_token is not one this server issued"

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(kind: str, position: list[Any]) -> str:
    raw = json.dumps({"k": kind, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(kind: str, token: str) -> list[Any] | None:
    """The position a token names; None for the first page; InvalidArgument when garbled."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidArgument(_FORGED) from None
    if not isinstance(data, dict) or data.get("k") != kind or not isinstance(data.get("p"), list):
        raise InvalidArgument(_FORGED)
    position: list[Any] = data["p"]
    return position


def tenants_after(token: str) -> str | None:
    """The tenant name a ListTenants token continues after; None for the first page."""
    position = decode("tenants", token)
    if position is None:
        return None
    if len(position) != 1 or not isinstance(position[0], str) or not position[0]:
        raise InvalidArgument(_FORGED)
    try:
        return check_text("page_token", position[0], 200)
    except InvalidArgument:
        raise InvalidArgument(_FORGED) from None


def keys_after(token: str) -> tuple[datetime, str] | None:
    """The (created_at, id) a ListKeys token continues after; None for the first page."""
    position = decode("keys", token)
    if position is None:
        return None
    if len(position) != 2 or not all(isinstance(p, str) for p in position):
        raise InvalidArgument(_FORGED)
    try:
        created = datetime.fromisoformat(position[0])
        key_id = str(uuid.UUID(position[1]))
    except ValueError:
        raise InvalidArgument(_FORGED) from None
    if created.tzinfo is None:
        raise InvalidArgument(_FORGED)
    return created, key_id
