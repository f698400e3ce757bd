"""``gateway.admin_audit``: one row per mutating admin call — the operation and its target.

Written in the same transaction as the change itself, so there is no change without its row.
Details never hold a secret: callers pass names, ids, prefixes and the fields they changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from authz.admin.sql import Connection


async def record(
    conn: Connection, operation: str, target: str, details: Mapping[str, Any] | None = None
) -> None:
    await conn.execute(
        "INSERT INTO gateway.admin_audit (operation, target, details) VALUES ($1, $2, $3::jsonb)",
        operation,
        target,
        json.dumps(dict(details or {}), default=str, sort_keys=True),
    )
