"""The Postgres plumbing both stores (:mod:`authz.admin.tenantstore`,
:mod:`authz.admin.keystore`) share: the connection type, the limits row of a new tenant or key
and its updates, ``SET`` clauses, and database errors as provisioning errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from authz.admin.errors import AlreadyExists, InvalidArgument, NotFound, ProvisioningError

# A connection, or one borrowed from a pool; functions that take a Pool acquire one.
Connection = asyncpg.Connection | PoolConnectionProxy
Conn = Connection | asyncpg.Pool


def db_error(exc: asyncpg.PostgresError) -> ProvisioningError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return AlreadyExists("already exists")
    if isinstance(exc, asyncpg.CheckViolationError | asyncpg.NotNullViolationError):
        constraint = getattr(exc, "constraint_name", None) or "a constraint"
        return InvalidArgument(f"rejected by {constraint}")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return NotFound("tenant not found")
    if isinstance(exc, asyncpg.DataError):
        return InvalidArgument(f"invalid value: {exc.__class__.__name__}")
    raise exc


async def insert_limits(
    conn: Connection, table: str, owner_column: str, owner_id: str, values: dict[str, Any]
) -> None:
    """The limits row of a new tenant or key; ``values`` are already checked column names."""
    cols = [owner_column, *values]
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    await conn.execute(
        f"INSERT INTO gateway.{table} ({', '.join(cols)}) VALUES ({params})",  # noqa: S608
        owner_id,
        *values.values(),
    )


async def update_limits(
    conn: Connection,
    table: str,
    owner_column: str,
    owner_id: str,
    changes: Mapping[str, Any],
    defaulted: frozenset[str],
) -> None:
    """Set checked limit columns of a tenant or key, creating its limits row if it has none."""
    await conn.execute(
        f"INSERT INTO gateway.{table} ({owner_column}) VALUES ($1)"  # noqa: S608
        f" ON CONFLICT ({owner_column}) DO NOTHING",
        owner_id,
    )
    sets, args = assignments(changes, defaulted)
    await conn.execute(
        f"UPDATE gateway.{table} SET {sets} WHERE {owner_column} = $1",  # noqa: S608
        owner_id,
        *args,
    )


def assignments(changes: Mapping[str, Any], defaulted: frozenset[str]) -> tuple[str, list[Any]]:
    """``col = $2, col2 = DEFAULT, …`` for an UPDATE whose $1 is the row id."""
    parts: list[str] = []
    args: list[Any] = []
    for column, value in changes.items():
        if value is None and column in defaulted:
            parts.append(f"{column} = DEFAULT")
        else:
            args.append(value)
            parts.append(f"{column} = ${len(args) + 1}")
    return ", ".join([*parts, "updated_at = now()"]), args
