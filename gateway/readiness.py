"""Readiness that tells the truth: a service is SERVING only while the stores it cannot decide
without answer (issue 15 §4).

Each dependency is probed every ``interval_s`` (Redis ``PING``, PostgreSQL ``SELECT 1``; every
``RECHECK_S`` while one is down) with a short timeout; the service's
:class:`gateway.grpcserver.Health` (gRPC health of its names and "", and ``/readyz``) goes
NOT_SERVING while any of them fails and back to SERVING once all answer again. Liveness
(``/livez``) is not touched: a store outage is not a reason to restart the process, only to
send traffic elsewhere.

Which stores a service needs is its main's choice (docs/OPERATIONS.md, "Health"): authz Redis
and PostgreSQL, the RLS Redis, accounting Redis only (it buffers rows while PostgreSQL is down
and turns deny mode on when it cannot any more; readiness tied to PostgreSQL would make authz
refuse inference at once, which the buffer exists to avoid).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import asyncpg
from prometheus_client import Gauge
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway import logs
from gateway.storage import Store

Probe = Callable[[], Awaitable[object]]
INTERVAL_S = 1.0
TIMEOUT_S = 0.5
# While a store is down, probed this often: readiness comes back within this of the store's
# return. (accounting's readiness is what authz refuses inference on: at the healthy interval a
# one-second Redis blip left everything 503 for up to a second after Redis was back.)
RECHECK_S = 0.1

DEPENDENCY_UP = Gauge(
    "neuronetz_dependency_up",
    "1 while the service's last probe of a store it needs answered (Redis PING, PostgreSQL"
    " SELECT 1), else 0; any 0: readiness NOT_SERVING",
    ["dependency"],
    multiprocess_mode="min",  # several workers: 1 only while every one of them sees it
)


class Target(Protocol):
    """What readiness drives: gateway.grpcserver.Health."""

    async def dependencies(self, ok: bool) -> None: ...


def redis_probe(redis: Store) -> Probe:
    """``PING`` on the service's own client (its pool, its timeouts).

    On a Redis Cluster every master is pinged and one answer is enough: a dead master fails
    the requests touching its slots (503) until its replica is promoted, on every replica of
    the gateway alike — taking them all out of service would refuse everyone else too.
    """

    async def probe() -> object:
        if isinstance(redis, RedisCluster):
            # A client that has sent nothing yet knows no node: read the slot map first (once;
            # a client that has, returns at once). Without it a service whose probe is its
            # first command — the RLS at start — was never ready.
            await redis.initialize()
            primaries: list[ClusterNode] = redis.get_primaries()
            answers = await asyncio.gather(
                *(redis.ping(target_nodes=node) for node in primaries), return_exceptions=True
            )
            failed = [a for a in answers if isinstance(a, BaseException)]
            if len(failed) == len(answers):
                raise failed[0] if failed else ConnectionError("no master known")
            return True
        return await redis.ping()

    return probe


def postgres_probe(pool: asyncpg.Pool, timeout_s: float = TIMEOUT_S) -> Probe:
    """``SELECT 1`` on a connection of the service's own pool: the one its decisions use."""

    async def probe() -> object:
        async with pool.acquire(timeout=timeout_s) as conn:
            return await conn.fetchval("SELECT 1", timeout=timeout_s)

    return probe


class Readiness:
    """Probe ``probes`` (name → probe) every ``interval_s``; tell ``health`` whether all
    answered within ``timeout_s``. A transition is logged once (names and error type, never a
    URL: it may carry a password)."""

    def __init__(
        self,
        health: Target,
        probes: Mapping[str, Probe],
        *,
        interval_s: float = INTERVAL_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._health = health
        self._probes = dict(probes)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._down: dict[str, str] = {}  # dependency → why, as last logged
        self._log = logs.get("readiness")
        for name in self._probes:
            DEPENDENCY_UP.labels(name).set(0)

    @property
    def down(self) -> list[str]:
        """The dependencies whose last probe failed."""
        return sorted(self._down)

    async def check(self) -> bool:
        """Probe every dependency once (concurrently); True when all answered."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._one(name) for name in names))
        for name, why in zip(names, results, strict=True):
            DEPENDENCY_UP.labels(name).set(0 if why else 1)
            if why and name not in self._down:
                self._log.warning("dependency unreachable: not ready", dependency=name, error=why)
            elif not why and name in self._down:
                self._log.info("dependency reachable again", dependency=name)
            if why:
                self._down[name] = why
            else:
                self._down.pop(name, None)
        ok = not self._down
        await self._health.dependencies(ok)
        return ok

    async def run(self) -> None:
        """Probe forever (a background task; cancelled at shutdown): every ``interval_s``, and
        every :data:`RECHECK_S` while a store is down."""
        while True:
            ok = await self.check()
            await asyncio.sleep(self._interval_s if ok else min(self._interval_s, RECHECK_S))

    async def _one(self, name: str) -> str:
        """Why the probe failed (the error's type), or "" when it answered in time."""
        try:
            await asyncio.wait_for(self._probes[name](), self._timeout_s)
        except TimeoutError:
            return "timeout"
        except Exception as exc:  # any failure (refused, reset, bad URL) means not ready
            return type(exc).__name__
        return ""
