"""Deny mode: while accounting cannot keep up its record (an audit or ledger buffer is full,
typically because Postgres is down), the gateway refuses new requests — unaudited traffic is
not allowed. The flag is the Redis key ``nz:deny_mode`` with a short TTL, refreshed while the
condition lasts and deleted once the buffers have drained; authz answers 503 while it exists.
If accounting dies with the flag set, the TTL clears it (and Envoy's ext_proc then fails
closed on its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import Gauge

from gateway import logs
from gateway.signals import DENY_MODE_KEY
from gateway.storage import Store
from gateway.storeerrors import REDIS_ERRORS

DENY_MODE = Gauge(
    "accounting_deny_mode", "1 while the gateway is in deny mode", multiprocess_mode="max"
)
_log = logs.get("accounting")


class Buffer(Protocol):
    table: str
    capacity: int

    def __len__(self) -> int: ...


class DenyMode:
    def __init__(
        self, redis: Store, buffers: Sequence[Buffer], ttl_s: int, interval_s: float
    ) -> None:
        self._redis = redis
        self._buffers = buffers
        self._ttl = max(1, ttl_s)
        self._interval = interval_s
        self.on = False

    def wanted(self) -> bool:
        """On when any buffer is full; off again once every buffer is below half its size."""
        if any(len(b) >= b.capacity for b in self._buffers):
            return True
        if self.on:
            return any(len(b) > b.capacity // 2 for b in self._buffers)
        return False

    async def check_once(self) -> None:
        wanted = self.wanted()
        try:
            if wanted:
                await self._redis.set(DENY_MODE_KEY, "audit buffer full", ex=self._ttl)
            elif self.on:
                await self._redis.delete(DENY_MODE_KEY)
        except REDIS_ERRORS as exc:
            _log.warning("deny mode flag not updated", error=type(exc).__name__)
            return
        if wanted != self.on:
            _log.warning(
                "deny mode on" if wanted else "deny mode off",
                buffered={b.table: len(b) for b in self._buffers},
            )
        self.on = wanted
        DENY_MODE.set(1 if wanted else 0)

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)
