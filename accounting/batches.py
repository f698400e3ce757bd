"""A bounded in-memory buffer written to Postgres in batches, off the hot path.

Rows are appended without waiting; a background task writes them in batches and removes a
batch only once Postgres has it. While Postgres is down rows wait (and the writer retries with
a capped backoff); past ``capacity`` the buffer reports ``full`` (the gateway goes into deny
mode); past ``capacity + overflow`` rows are dropped and counted — the overflow is room for
the requests already in flight when deny mode starts. Writes are idempotent on the row's
request id, so a batch retried after an unclear failure is never written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

from gateway import logs

T = TypeVar("T")

BUFFERED = Gauge(
    "accounting_buffered_rows", "rows waiting to be written", ["table"], multiprocess_mode="livesum"
)
WRITTEN = Counter("accounting_written_rows_total", "rows written to Postgres", ["table"])
DROPPED = Counter("accounting_dropped_rows_total", "rows dropped (buffer overflow)", ["table"])
WRITE_ERRORS = Counter("accounting_write_errors_total", "failed batch writes", ["table"])

_log = logs.get("accounting")


class Batcher(Generic[T]):
    def __init__(
        self,
        table: str,
        write: Callable[[list[T]], Awaitable[None]],
        *,
        capacity: int,
        overflow: int,
        batch_max: int,
        interval_s: float,
        ready: Callable[[T], bool] | None = None,
        eager: bool = False,
    ) -> None:
        self.table = table
        self._write = write
        # This table's series exist from the start, at 0: ``increase(...) > 0`` sees the first
        # drop or failed write, and the dashboard shows 0 rather than nothing.
        for counter in (WRITTEN, DROPPED, WRITE_ERRORS):
            counter.labels(table)
        BUFFERED.labels(table).set(0)
        self.capacity = capacity
        self._limit = capacity + overflow
        self._batch_max = batch_max
        self._interval = interval_s
        self._ready = ready
        # eager: write as soon as a row arrives (group commit: rows that arrive while a write
        # is in flight form the next batch); otherwise every interval or when a batch is full.
        self._eager = eager
        self._rows: deque[T] = deque()
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self.healthy = True  # the last write attempt succeeded

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def full(self) -> bool:
        return len(self._rows) >= self.capacity

    def add(self, row: T) -> bool:
        """Queue a row (never waits). False when it had to be dropped."""
        if len(self._rows) >= self._limit:
            DROPPED.labels(self.table).inc()
            return False
        self._rows.append(row)
        BUFFERED.labels(self.table).set(len(self._rows))
        if self._eager or len(self._rows) >= self._batch_max:
            self._wake.set()
        return True

    def _take(self, force: bool) -> list[T]:
        batch: list[T] = []
        while self._rows and len(batch) < self._batch_max:
            if not force and self._ready is not None and not self._ready(self._rows[0]):
                break
            batch.append(self._rows.popleft())
        return batch

    async def flush_once(self, force: bool = False) -> int:
        """Write one batch; returns the rows written (0 when nothing was ready). One write at a
        time: :meth:`drain` at shutdown waits for the write :meth:`run` has in flight, rather
        than finding the buffer empty while that batch is neither written nor buffered."""
        async with self._writing:
            return await self._flush(force)

    async def _flush(self, force: bool) -> int:
        batch = self._take(force)
        if not batch:
            return 0
        try:
            await self._write(batch)
        except asyncio.CancelledError:
            # Back in the buffer (to be drained or spooled): the writes are idempotent, a
            # batch that did reach Postgres is not written twice.
            self._rows.extendleft(reversed(batch))
            raise
        except Exception as exc:
            self._rows.extendleft(reversed(batch))
            WRITE_ERRORS.labels(self.table).inc()
            if self.healthy:
                _log.warning("batch write failed", table=self.table, error=type(exc).__name__)
            self.healthy = False
            raise
        if not self.healthy:
            _log.info("batch writes recovered", table=self.table, buffered=len(self._rows))
        self.healthy = True
        WRITTEN.labels(self.table).inc(len(batch))
        BUFFERED.labels(self.table).set(len(self._rows))
        return len(batch)

    async def run(self) -> None:
        """Write batches forever: every ``interval_s`` (at once when a batch is full, or when
        a row arrives if eager); after a failure, retry with a capped backoff."""
        backoff = self._interval
        failing = False
        while True:
            if failing:
                await asyncio.sleep(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                while self._rows and await self.flush_once() > 0:
                    pass
                failing = False
                backoff = self._interval
            except Exception:
                backoff = min(backoff * 2, 2.0) if failing else self._interval
                failing = True

    async def drain(self, timeout_s: float, attempts: int = 3) -> bool:
        """Write everything that is buffered (at shutdown); True when nothing is left. Gives
        up after ``attempts`` failed writes in a row (Postgres is down: spool instead)."""
        deadline = time.monotonic() + timeout_s
        failures = 0
        while time.monotonic() < deadline and failures < attempts:
            try:
                # Waits for a write in flight first: its batch is back here if it failed.
                if await self.flush_once(force=True) == 0:
                    if not self._rows:
                        break
                    await asyncio.sleep(0.05)
                failures = 0
            except Exception:
                failures += 1
                await asyncio.sleep(0.2)
        return not self._rows

    def take_all(self) -> list[T]:
        """Every buffered row, removed from the buffer (to spool them)."""
        rows = list(self._rows)
        self._rows.clear()
        BUFFERED.labels(self.table).set(0)
        return rows
