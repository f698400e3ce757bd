"""Apply the shipped migrations (``migrations/*.sql``) in order, idempotently, under an advisory
lock; list what is applied and pending.

The SQL files ship inside the package (``gateway/migrations``, package data) and are read through
``importlib.resources``, so an installed wheel finds them from any working directory. Each
applied file is recorded with its SHA-256; a file changed after it was applied is refused
(write a new migration instead). Finding no migration at all is an error, never "up to date".

Two ``migrate`` runs at once (two rollouts, a retried Job) take turns on the advisory lock; the
wait for it is bounded (``NZ_MIGRATE_LOCK_TIMEOUT_S``), so a run stuck behind a hung one fails
with a clear error instead of hanging its Job forever.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg
from asyncpg.exceptions import LockNotAvailableError

from gateway.settings import load_settings

SHIPPED: Traversable = files("gateway") / "migrations"
_LOCK_ID = 0x6E7A_6777  # "nzgw"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    name: str
    state: str  # "applied", "pending", "changed" (edited after it was applied), "unknown"
    applied_at: datetime | None


def discover(directory: Traversable = SHIPPED) -> list[Migration]:
    """The migrations in ``directory``, in name order; none at all is an error."""
    found = (
        sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
        if directory.is_dir()
        else []
    )
    if not found:
        raise MigrationError(
            f"no migration files (*.sql) in {directory}: the package is incomplete; "
            "reinstall neuronetz-gateway"
        )
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in found]


async def _recorded(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass('gateway.schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT name, checksum, applied_at FROM gateway.schema_migrations")
    return {row["name"]: row for row in rows}


async def status(database_url: str, directory: Traversable = SHIPPED) -> list[MigrationState]:
    """Every shipped migration as applied / pending / changed, then any recorded migration
    this package does not ship (``unknown``: the database is newer than this install)."""
    migrations = discover(directory)
    conn = await asyncpg.connect(database_url)
    try:
        recorded = await _recorded(conn)
    finally:
        await conn.close()
    states = []
    for migration in migrations:
        row = recorded.pop(migration.name, None)
        if row is None:
            states.append(MigrationState(migration.name, "pending", None))
        else:
            same = row["checksum"] == migration.checksum
            states.append(
                MigrationState(migration.name, "applied" if same else "changed", row["applied_at"])
            )
    states += [MigrationState(n, "unknown", r["applied_at"]) for n, r in sorted(recorded.items())]
    return states


async def _lock(conn: asyncpg.Connection, timeout_s: float) -> None:
    """Take the migration lock, waiting at most ``timeout_s`` for another run to release it.
    The bound holds for this statement only (``SET LOCAL``): the migrations run under the
    server's own ``lock_timeout``. The session-level lock outlives the transaction."""
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('lock_timeout', $1, true)", f"{max(1, round(timeout_s * 1000))}"
            )
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    except LockNotAvailableError:
        raise MigrationError(
            f"the migration lock is still held by another migrate run after {timeout_s:g} s "
            "(NZ_MIGRATE_LOCK_TIMEOUT_S); nothing was applied. Let that run finish, or end "
            f"the session holding it (pg_locks: locktype advisory, objid {_LOCK_ID})"
        ) from None


async def apply(
    database_url: str,
    directory: Traversable = SHIPPED,
    *,
    lock_timeout_s: float | None = None,
) -> list[str]:
    """Apply pending migrations; returns the names applied by this call. Waits at most
    ``lock_timeout_s`` (default: ``NZ_MIGRATE_LOCK_TIMEOUT_S``) for a concurrent run's lock,
    then raises :class:`MigrationError`."""
    if lock_timeout_s is None:
        lock_timeout_s = load_settings().migrate_lock_timeout_s
    migrations = discover(directory)
    conn = await asyncpg.connect(database_url)
    try:
        await _lock(conn, lock_timeout_s)
        try:
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS gateway;"
                "CREATE TABLE IF NOT EXISTS gateway.schema_migrations ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {name: row["checksum"] for name, row in (await _recorded(conn)).items()}
            applied: list[str] = []
            for migration in migrations:
                if migration.name in done:
                    if done[migration.name] != migration.checksum:
                        raise MigrationError(
                            f"{migration.name} was changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO gateway.schema_migrations (name, checksum) VALUES ($1, $2)",
                        migration.name,
                        migration.checksum,
                    )
                applied.append(migration.name)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()
