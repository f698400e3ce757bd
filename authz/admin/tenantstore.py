"""Creating and changing tenants in Postgres. The admin API calls this; so do the dev stack's
bootstrap and the tests' fixtures.

A change that affects a tenant's keys NOTIFYs ``key_changed`` with each active key's prefix so
that every authz replica drops its cached copy; disabling a tenant sends ``key_revoked``
instead (without marking the keys revoked): they must stop working at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from authz.admin.columns import TENANT_COLUMNS, TENANT_DEFAULTED, TENANT_SETTING_COLUMNS
from authz.admin.errors import AlreadyExists, InvalidArgument, NotFound
from authz.admin.sql import (
    Conn,
    Connection,
    assignments,
    db_error,
    insert_limits,
    update_limits,
)
from authz.admin.validation import check_limits, check_models, check_tenant_name
from gateway.signals import KEY_CHANGED_CHANNEL, KEY_REVOKED_CHANNEL


async def create_tenant(
    conn: Conn,
    name: str,
    *,
    allow_all: bool = False,
    allowed_models: Iterable[str] = (),
    allow_cloud: bool = False,
    **limits: Any,
) -> str:
    check_tenant_name(name)
    models = check_models(allowed_models)
    values = check_limits(limits, TENANT_SETTING_COLUMNS)
    values = {k: v for k, v in values.items() if v is not None or k not in TENANT_DEFAULTED}
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            return await create_tenant(
                acquired,
                name,
                allow_all=allow_all,
                allowed_models=models,
                allow_cloud=allow_cloud,
                **values,
            )
    try:
        async with conn.transaction():
            tenant_id: str = await conn.fetchval(
                "INSERT INTO gateway.tenants (name, allow_all, allowed_models, allow_cloud)"
                " VALUES ($1, $2, $3, $4) RETURNING id::text",
                name,
                allow_all,
                models,
                allow_cloud,
            )
            await insert_limits(conn, "tenant_limits", "tenant_id", tenant_id, values)
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"tenant {name!r} already exists") from None
    except asyncpg.PostgresError as exc:
        raise db_error(exc) from None
    return tenant_id


async def update_tenant(conn: Connection, tenant_id: str, changes: Mapping[str, Any]) -> None:
    """Write ``changes`` (column → value; None clears to NULL or the column's default)."""
    unknown = sorted(set(changes) - {*TENANT_COLUMNS, *TENANT_SETTING_COLUMNS})
    if unknown:
        raise InvalidArgument(f"cannot change {unknown} on a tenant")
    row_changes = {k: v for k, v in changes.items() if k in TENANT_COLUMNS}
    if row_changes.get("allowed_models") is not None:
        row_changes["allowed_models"] = check_models(row_changes["allowed_models"])
    limit_changes = check_limits(
        {k: v for k, v in changes.items() if k in TENANT_SETTING_COLUMNS}, TENANT_SETTING_COLUMNS
    )
    try:
        async with conn.transaction():
            sets, args = assignments(row_changes, TENANT_DEFAULTED)
            found = await conn.fetchval(
                f"UPDATE gateway.tenants SET {sets} WHERE id = $1 RETURNING id",  # noqa: S608
                tenant_id,
                *args,
            )
            if found is None:
                raise NotFound("tenant not found")
            if limit_changes:
                await update_limits(
                    conn, "tenant_limits", "tenant_id", tenant_id, limit_changes, TENANT_DEFAULTED
                )
            await _notify_tenant_keys(conn, tenant_id)
    except asyncpg.PostgresError as exc:
        raise db_error(exc) from None


async def set_tenant_status(conn: Connection, tenant_id: str, status: str) -> None:
    if status not in ("active", "disabled"):
        raise InvalidArgument(f"invalid tenant status {status!r}")
    async with conn.transaction():
        found = await conn.fetchval(
            "UPDATE gateway.tenants SET status = $2, updated_at = now() WHERE id = $1 RETURNING id",
            tenant_id,
            status,
        )
        if found is None:
            raise NotFound("tenant not found")
        channel = KEY_REVOKED_CHANNEL if status == "disabled" else KEY_CHANGED_CHANNEL
        await _notify_tenant_keys(conn, tenant_id, channel)


async def _notify_tenant_keys(
    conn: Connection, tenant_id: str, channel: str = KEY_CHANGED_CHANNEL
) -> None:
    await conn.execute(
        "SELECT pg_notify($2, prefix) FROM gateway.api_keys"
        " WHERE tenant_id = $1 AND status = 'active'",
        tenant_id,
        channel,
    )
