"""One multi-row INSERT for a batch; a row Postgres rejects must not block the others.

A batch that fails because of its data (a constraint or a malformed value) is retried row by
row and the rejected rows are dropped and counted; connection errors propagate (the caller
keeps the batch and retries later).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncpg
from prometheus_client import Counter

from gateway import logs

T = TypeVar("T")

REJECTED = Counter("accounting_rejected_rows_total", "rows Postgres refused (dropped)", ["table"])
_DATA_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)
_log = logs.get("accounting")


async def insert(
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
