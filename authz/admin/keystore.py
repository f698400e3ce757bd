"""Creating and changing API keys in Postgres. The admin API calls this; so do the dev stack's
bootstrap and the tests' fixtures. The full key exists only in the return value.

Changes that affect a key's answer NOTIFY ``key_changed`` with the key's prefix so that every
authz replica drops its cached copy; revocation goes through ``gateway.revocations``, whose
trigger marks the key and NOTIFYs ``key_revoked``. A key expired *now* also sends
``key_revoked`` (without marking it revoked): it must stop working at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from argon2 import PasswordHasher

from authz.admin.columns import KEY_COLUMNS, KEY_SETTING_COLUMNS
from authz.admin.errors import InvalidArgument, NotFound
from authz.admin.sql import (
    Conn,
    Connection,
    assignments,
    db_error,
    insert_limits,
    update_limits,
)
from authz.admin.validation import check_limits, check_models, check_scopes, check_text
from gateway import apikeys
from gateway.signals import KEY_CHANGED_CHANNEL, KEY_REVOKED_CHANNEL


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key_id: str
    prefix: str
    full_key: str


async def create_key(
    conn: Conn,
    ph: PasswordHasher,
    tenant_id: str,
    *,
    name: str = "",
    scopes: Iterable[str] | None = None,
    allow_all: bool | None = None,
    allowed_models: Iterable[str] | None = None,
    prompt_log: bool = False,
    expires_at: datetime | None = None,
    **limits: Any,
) -> CreatedKey:
    scope_list = None if scopes is None else check_scopes(scopes)
    models = None if allowed_models is None else check_models(allowed_models)
    values = check_limits(limits, KEY_SETTING_COLUMNS)
    check_text("the key name", name, 200)
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            return await create_key(
                acquired,
                ph,
                tenant_id,
                name=name,
                scopes=scope_list,
                allow_all=allow_all,
                allowed_models=models,
                prompt_log=prompt_log,
                expires_at=expires_at,
                **values,
            )
    # argon2id hashing takes tens of milliseconds: never on the event loop that serves Check.
    new = await asyncio.to_thread(apikeys.generate, ph)
    try:
        async with conn.transaction():
            key_id: str = await conn.fetchval(
                "INSERT INTO gateway.api_keys (tenant_id, prefix, key_hash, name, scopes,"
                " allow_all, allowed_models, prompt_log, expires_at)"
                " VALUES ($1, $2, $3, $4, COALESCE($5, '{chat,embeddings,models}'::text[]),"
                " $6, $7, $8, $9) RETURNING id::text",
                tenant_id,
                new.prefix,
                new.hash,
                name,
                scope_list,
                allow_all,
                models,
                prompt_log,
                expires_at,
            )
            await insert_limits(conn, "key_limits", "key_id", key_id, values)
    except asyncpg.PostgresError as exc:
        raise db_error(exc) from None
    return CreatedKey(key_id=key_id, prefix=new.prefix, full_key=new.full)


async def update_key(conn: Connection, key_id: str, changes: Mapping[str, Any]) -> None:
    """Write ``changes`` (column → value; None clears a nullable column: inherit)."""
    unknown = sorted(set(changes) - {*KEY_COLUMNS, *KEY_SETTING_COLUMNS})
    if unknown:
        raise InvalidArgument(f"cannot change {unknown} on a key")
    row_changes = {k: v for k, v in changes.items() if k in KEY_COLUMNS}
    if "scopes" in row_changes:
        row_changes["scopes"] = check_scopes(row_changes["scopes"] or ())
    if row_changes.get("allowed_models") is not None:
        row_changes["allowed_models"] = check_models(row_changes["allowed_models"])
    for column in ("name", "prompt_log"):
        if column in row_changes and row_changes[column] is None:
            raise InvalidArgument(f"{column} cannot be cleared")
    check_text("the key name", row_changes.get("name") or "", 200)
    limit_changes = check_limits(
        {k: v for k, v in changes.items() if k in KEY_SETTING_COLUMNS}, KEY_SETTING_COLUMNS
    )
    try:
        async with conn.transaction():
            sets, args = assignments(row_changes, frozenset())
            prefix = await conn.fetchval(
                f"UPDATE gateway.api_keys SET {sets} WHERE id = $1 RETURNING prefix",  # noqa: S608
                key_id,
                *args,
            )
            if prefix is None:
                raise NotFound("key not found")
            if limit_changes:
                await update_limits(
                    conn, "key_limits", "key_id", key_id, limit_changes, frozenset()
                )
            await conn.execute("SELECT pg_notify($1, $2)", KEY_CHANGED_CHANNEL, prefix)
    except asyncpg.PostgresError as exc:
        raise db_error(exc) from None


async def revoke_key(conn: Connection, key_id: str, reason: str) -> bool:
    """Revoke through the outbox (its trigger marks the key and NOTIFYs ``key_revoked``).

    Returns False when the key was already revoked (nothing is written then).
    """
    reason = reason.strip()
    if not reason:
        raise InvalidArgument("a revocation needs a reason")
    check_text("the reason", reason, 500)
    async with conn.transaction():
        status = await conn.fetchval(
            "SELECT status FROM gateway.api_keys WHERE id = $1 FOR UPDATE", key_id
        )
        if status is None:
            raise NotFound("key not found")
        if status == "revoked":
            return False
        await conn.execute(
            "INSERT INTO gateway.revocations (key_id, reason) VALUES ($1, $2)", key_id, reason
        )
    return True


async def expire_key(conn: Connection, key_id: str, at: datetime) -> None:
    if at.tzinfo is None:
        raise InvalidArgument("expires_at needs a time zone")
    async with conn.transaction():
        prefix = await conn.fetchval(
            "UPDATE gateway.api_keys SET expires_at = $2, updated_at = now()"
            " WHERE id = $1 RETURNING prefix",
            key_id,
            at,
        )
        if prefix is None:
            raise NotFound("key not found")
        channel = KEY_REVOKED_CHANNEL if at <= datetime.now(UTC) else KEY_CHANGED_CHANNEL
        await conn.execute("SELECT pg_notify($1, $2)", channel, prefix)
