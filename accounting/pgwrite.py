"""One multi-row INSERT for a batch; a row Postgres rejects must not block the others.

A batch that fails because of its data (a constraint or a malformed value) is retried row by
row and the rejected rows are dropped and counted; connection errors propagate (the caller
keeps the batch and retries later).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncpg
from prometheus_client import Counter, Histogram

from gateway import logs

T = TypeVar("T")

# The tables accounting writes (audit.py, ledger.py, promptlog.py): their series exist from the
# start, at 0, so ``increase(...) > 0`` sees a table's first rejected row.
TABLES = ("audit_log", "budget_ledger", "prompt_log")
REJECTED = Counter("accounting_rejected_rows_total", "rows Postgres refused (dropped)", ["table"])
WRITE_SECONDS = Histogram(
    "accounting_pg_write_seconds",
    "Time to write one batch to Postgres (row-by-row retries of a refused batch included)",
    ["table"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
for _table in TABLES:
    REJECTED.labels(_table)
_DATA_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)
_log = logs.get("accounting")


async def insert(
    pool: asyncpg.Pool,
    table: str,
    sql: str,
    rows: Sequence[T],
    columns: Callable[[Sequence[T]], list[list[Any]]],
) -> None:
    started = time.perf_counter()
    try:
        await _insert(pool, table, sql, rows, columns)
    finally:
        WRITE_SECONDS.labels(table).observe(time.perf_counter() - started)


async def _insert(
    pool: asyncpg.Pool,
    table: str,
    sql: str,
    rows: Sequence[T],
    columns: Callable[[Sequence[T]], list[list[Any]]],
) -> None:
    try:
        await pool.execute(sql, *columns(rows))
        return
    except _DATA_ERRORS:
        if len(rows) == 1:
            REJECTED.labels(table).inc()
            _log.error("row rejected by Postgres", table=table)
            return
    for row in rows:
        try:
            await pool.execute(sql, *columns([row]))
        except _DATA_ERRORS:
            REJECTED.labels(table).inc()
            _log.error("row rejected by Postgres", table=table)
