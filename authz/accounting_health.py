"""Is the accounting Envoy reports to answering right now? authz asks it (gRPC health, every
``interval``) and refuses inference while it is not: no stream may be delivered unaccounted.

Envoy observes responses for accounting without waiting for it (ext_proc observability mode,
envoy.yaml ``nz.accounting``), so a dead or stopped accounting no longer stops a stream by
itself. This watch is what keeps the table's "accounting down → 503" true: a request admitted
while accounting has not answered for ``stale_after_s`` gets 503 in its surface's shape, within
a second of accounting going away, and before any slot or reservation is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge

from gateway import logs

# The service Envoy's ext_proc filters call (accounting/server.py).
SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
UP = Gauge(
    "authz_accounting_up",
    "1 while accounting answers its health check, else 0",
    multiprocess_mode="min",  # several workers: 1 only while every one of them sees it
)
CHECKS = Counter(
    "authz_accounting_checks_total", "health checks of accounting, by answer", ["answer"]
)
for _answer in ("serving", "not_serving", "failed"):
    CHECKS.labels(_answer)
_log = logs.get("authz.accounting_health")
# Reconnect fast once accounting is back: gRPC's default backoff grows to two minutes.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class AccountingHealth:
    def __init__(self, target: str, stale_after_s: float = 0.6) -> None:
        self._target = target
        self._stale_after = stale_after_s
        # Ask three times per staleness period; each answer must come within one period.
        self._interval = stale_after_s / 3
        self._answered_at = -math.inf  # monotonic time of the last SERVING answer's question
        self._channel: grpc.aio.Channel | None = None
        self._answered = asyncio.Event()  # at least once

    @property
    def up(self) -> bool:
        return time.monotonic() - self._answered_at <= self._stale_after

    async def first_answer(self, timeout_s: float) -> bool:
        """Wait (at start) until accounting has answered once, at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), timeout_s)
        return self.up

    async def run(self) -> None:
        self._channel = grpc.aio.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=SERVICE)
        was_up = True
        try:
            while True:
                asked = time.monotonic()
                try:
                    reply = await stub.Check(request, timeout=self._interval)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self._answered_at = asked
                        self._answered.set()
                        CHECKS.labels("serving").inc()
                    else:
                        CHECKS.labels("not_serving").inc()
                except grpc.aio.AioRpcError:
                    CHECKS.labels("failed").inc()
                up = self.up
                UP.set(1 if up else 0)
                if up != was_up:
                    log = _log.info if up else _log.warning
                    log("accounting is " + ("back" if up else "not answering"), target=self._target)
                    was_up = up
                await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - asked)))
        finally:
            await self._channel.close()
