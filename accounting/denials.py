"""Unauthenticated requests are audited in aggregate: one row per minute, client address,
status, method and endpoint, with the number of requests in ``count``.

A request without a tenant (no key, a wrong or revoked key: 401; or a refusal before the key
was known) costs the sender nothing, so one row each would let anyone grow ``audit_log`` at
the rate of their requests. Instead every minute (of arrival here) gets one row per
(client address, status, method, endpoint): the endpoint is an allowlisted path or ``other``
(accounting/audit.py), the method one of Envoy's few. Past ``keys_per_minute`` distinct
aggregates in a minute, requests from further addresses count under the client address
``*``: many addresses cannot grow the table either.

Rows are written as snapshots of the running count through the audit buffer. Their request
id (``denials:<uuid>``) is derived from this process's instance id and the aggregate's key, and
a snapshot only raises the stored count (``GREATEST``): a snapshot retried after an unclear
failure, or arriving after a newer one, changes nothing — nothing is counted twice. Another
replica, or this process after a restart, writes its own rows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from accounting.audit import AuditRow
from accounting.batches import DROPPED

ANY_ADDRESS = "*"
# Aggregates held at most (the audit buffer refusing them — Postgres down — keeps them held):
# this many minutes' worth of keys; a request past that is dropped and counted.
_HELD_MINUTES = 10
ID_PREFIX = "denials:"
_NAMESPACE = uuid.UUID("6e7a6777-6465-6e69-616c-730000000000")


@dataclass(frozen=True, slots=True)
class DenialKey:
    minute: int  # epoch minute of arrival
    client_ip: str
    status: int
    method: str
    endpoint: str


@dataclass(slots=True)
class _Tally:
    count: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    response_flags: str = ""


def unauthenticated(row: AuditRow) -> bool:
    """Audited in aggregate: no tenant is known for the request."""
    return row.tenant_id is None


class DenialTally:
    def __init__(
        self,
        keys_per_minute: int,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limit = keys_per_minute
        self._instance = instance or str(uuid.uuid4())
        self._clock = clock
        self._tallies: dict[DenialKey, _Tally] = {}
        self._dirty: set[DenialKey] = set()
        self._keys: dict[int, int] = {}  # distinct addressed keys per minute

    def __len__(self) -> int:
        return len(self._tallies)

    def add(self, row: AuditRow) -> None:
        minute = int(self._clock() // 60)
        key = DenialKey(minute, row.client_ip, row.status, row.method, row.endpoint)
        tally = self._tallies.get(key)
        if tally is None:
            if self._keys.get(minute, 0) >= self._limit:
                key = DenialKey(minute, ANY_ADDRESS, row.status, row.method, row.endpoint)
                tally = self._tallies.get(key)
            else:
                self._keys[minute] = self._keys.get(minute, 0) + 1
            if tally is None:
                if len(self._tallies) >= self._limit * _HELD_MINUTES:
                    DROPPED.labels("audit_log").inc()
                    return
                tally = self._tallies[key] = _Tally(response_flags=row.response_flags)
        tally.count += 1
        tally.bytes_in += row.bytes_in
        tally.bytes_out += row.bytes_out
        self._dirty.add(key)

    def request_id(self, key: DenialKey) -> str:
        name = f"{self._instance}|{key.minute}|{key.client_ip}|{key.status}|{key.method}|"
        return ID_PREFIX + str(uuid.uuid5(_NAMESPACE, name + key.endpoint))

    def _row(self, key: DenialKey, tally: _Tally) -> AuditRow:
        return AuditRow(
            request_id=self.request_id(key),
            ts=datetime.fromtimestamp(key.minute * 60, UTC),
            tenant_id=None,
            key_prefix=None,
            method=key.method,
            endpoint=key.endpoint,
            model="",
            status=key.status,
            tokens_in=None,
            tokens_out=None,
            tokens_estimated=False,
            latency_ms=None,
            bytes_in=tally.bytes_in,
            bytes_out=tally.bytes_out,
            client_ip=key.client_ip,
            response_flags=tally.response_flags,
            error=f"http {key.status}" if key.status >= 400 else None,
            count=tally.count,
        )

    def flush(self, add: Callable[[AuditRow], bool]) -> int:
        """Hand a snapshot of every aggregate that changed to ``add`` (the audit buffer); one
        it refuses (full) stays changed for the next flush. Aggregates of past minutes are
        forgotten once their last count is handed over. Returns the rows handed over."""
        handed = 0
        for key in list(self._dirty):
            if add(self._row(key, self._tallies[key])):
                self._dirty.discard(key)
                handed += 1
        current = int(self._clock() // 60)
        for key in [k for k in self._tallies if k.minute < current and k not in self._dirty]:
            del self._tallies[key]
        for minute in [m for m in self._keys if m < current]:
            del self._keys[minute]
        return handed

    async def run(self, add: Callable[[AuditRow], bool], interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.flush(add)
