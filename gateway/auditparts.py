"""The partitions of ``gateway.audit_log``: one per UTC day, created ahead, dropped after the
retention period. The only place that knows the rule.

``migrations/0002_audit_partitions.sql`` makes ``gateway.audit_log`` range-partitioned on
``ts`` with a DEFAULT partition (``gateway.audit_log_default``), so an insert never fails for
lack of a partition. :func:`maintain` (run by accounting every
``NZ_AUDIT_MAINTENANCE_INTERVAL_S`` and by ``neuronetz-gateway audit retention``) then

* drops the day partitions older than the retention (``NZ_AUDIT_RETENTION_DAYS``) — a day
  ``D`` goes once ``D < today - retention``, so no row younger than the retention is dropped —
  and deletes the DEFAULT partition's rows that old;
* creates the partitions of today and the next ``NZ_AUDIT_PARTITIONS_AHEAD_DAYS`` days, and
  of every retained day that has rows in the DEFAULT partition (the rows migration 0002
  copied, rows written while no partition existed): those rows move into their day.

Idempotent, and one run at a time (an advisory lock). Its DDL locks ``gateway.audit_log``
briefly, one step per transaction; ``lock_timeout`` keeps it from queueing the audit writer
behind a long query (the run fails and is retried at the next interval).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import asyncpg
from asyncpg.pool import PoolConnectionProxy

SCHEMA = "gateway"
PARENT = "audit_log"  # gateway.audit_log (spelled out in the SQL below)
DEFAULT_PARTITION = "audit_log_default"  # gateway.audit_log_default, likewise
_PREFIX = "audit_log_p"
_NAME = re.compile(r"^audit_log_p(\d{8})$")
_LOCK_ID = 0x6E7A_6170  # "nzap"
_LOCK_TIMEOUT = "2s"


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What one run did (``ran`` False: another run held the lock, nothing was done)."""

    ran: bool = True
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved_rows: int = 0  # from the DEFAULT partition into the partitions created
    purged_rows: int = 0  # DEFAULT partition rows older than the retention, deleted


def partition_name(day: date) -> str:
    return f"{_PREFIX}{day:%Y%m%d}"


def day_of(name: str) -> date | None:
    """The day a partition holds, from its name (None: not a day partition)."""
    found = _NAME.match(name)
    if found is None:
        return None
    try:
        return datetime.strptime(found.group(1), "%Y%m%d").replace(tzinfo=UTC).date()
    except ValueError:
        return None


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def first_kept_day(today: date, retention_days: int) -> date:
    """The oldest day whose rows are kept: every row of an older day is at least
    ``retention_days`` days old."""
    return today - timedelta(days=retention_days)


async def _partitions(conn: asyncpg.Connection | PoolConnectionProxy) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT c.relname FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_class p ON p.oid = i.inhparent
          JOIN pg_namespace n ON n.oid = p.relnamespace
         WHERE n.nspname = $1 AND p.relname = $2
        """,
        SCHEMA,
        PARENT,
    )
    return [r["relname"] for r in rows]


def _qualified(name: str) -> str:
    return f'{SCHEMA}."{name}"'


async def _create(conn: asyncpg.Connection | PoolConnectionProxy, day: date) -> int:
    """Create ``day``'s partition; rows of that day in the DEFAULT partition move into it.
    Returns how many moved."""
    start, end = day_start(day), day_start(day + timedelta(days=1))
    # A partition cannot be created while the DEFAULT partition holds rows of its range: set
    # them aside (the temporary table goes at commit), create, put them back through the parent.
    await conn.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS audit_moving (LIKE gateway.audit_log) ON COMMIT DROP"
    )
    moved_status = await conn.execute(
        "WITH moved AS (DELETE FROM gateway.audit_log_default WHERE ts >= $1 AND ts < $2"
        " RETURNING *) INSERT INTO audit_moving SELECT * FROM moved",
        start,
        end,
    )
    moved = int(moved_status.rsplit(" ", 1)[-1])
    # Bounds are literals (DDL takes no parameters); both come from a date, never from input.
    await conn.execute(
        f"CREATE TABLE {_qualified(partition_name(day))} PARTITION OF {_qualified(PARENT)}"
        f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )
    if moved:
        await conn.execute("INSERT INTO gateway.audit_log SELECT * FROM audit_moving")
        await conn.execute("TRUNCATE audit_moving")
    return moved


async def _locked(conn: asyncpg.Connection | PoolConnectionProxy) -> None:
    """This transaction waits at most ``_LOCK_TIMEOUT`` for a lock (never queues the audit
    writer behind a long query for longer)."""
    await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")


async def maintain(
    conn: asyncpg.Connection | PoolConnectionProxy,
    *,
    retention_days: int,
    ahead_days: int,
    now: datetime | None = None,
    wait: bool = False,
) -> Maintenance:
    """One maintenance run (see the module's doc) under a session advisory lock. ``wait``:
    wait for a run in progress elsewhere instead of skipping this one. The drops, the purge
    and each partition created are transactions of their own, so the table is locked for one
    step at a time (a day's rows moved out of the DEFAULT partition, not all of them)."""
    if retention_days < 1:
        raise ValueError("the audit retention must be at least one day")
    if ahead_days < 0:
        raise ValueError("the days of partitions created ahead cannot be negative")
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    keep_from = first_kept_day(today, retention_days)
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_ID):
        return Maintenance(ran=False)
    try:
        existing = {day: name for name in await _partitions(conn) if (day := day_of(name))}
        dropped = [name for day, name in sorted(existing.items()) if day < keep_from]
        if dropped:
            async with conn.transaction():
                await _locked(conn)
                for name in dropped:
                    await conn.execute(f"DROP TABLE {_qualified(name)}")
        async with conn.transaction():
            await _locked(conn)
            purged_status = await conn.execute(
                "DELETE FROM gateway.audit_log_default WHERE ts < $1", day_start(keep_from)
            )
        purged = int(purged_status.rsplit(" ", 1)[-1])

        wanted = {today + timedelta(days=n) for n in range(ahead_days + 1)}
        stray = await conn.fetch(
            "SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS day FROM gateway.audit_log_default"
        )
        wanted.update(r["day"] for r in stray)
        created, moved = [], 0
        for day in sorted(wanted):
            if day in existing or day < keep_from:
                continue
            async with conn.transaction():
                await _locked(conn)
                moved += await _create(conn, day)
            created.append(partition_name(day))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return Maintenance(created=created, dropped=dropped, moved_rows=moved, purged_rows=purged)
