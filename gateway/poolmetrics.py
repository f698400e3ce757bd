"""Connection pool gauges: ``neuronetz_pg_pool_connections{state}`` (asyncpg: ``idle``,
``in_use``, ``max``) and ``neuronetz_redis_pool_connections{state}`` (redis-py: ``idle``,
``in_use``, ``max``).

A Redis pool with every connection in use makes the next command wait (gateway/storage.py's
blocking pool) and a PostgreSQL pool with none idle queues queries: these gauges say so before
the latency histograms do. They are sampled every few seconds by one background task per
process (started with the service's gRPC server, gateway/grpcserver.py), never on a request's
path; with ``NZ_WORKERS`` > 1 the workers' values are summed (``livesum``).

A pool is watched once it is handed to :func:`watch_pg` / :func:`watch_redis` (gateway/storage.py
does for the pools it makes); a closed pool stops counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Gauge
from redis.asyncio.cluster import RedisCluster

INTERVAL_S = 5.0

PG_CONNECTIONS = Gauge(
    "neuronetz_pg_pool_connections",
    "PostgreSQL pool connections (asyncpg) by state: idle, in_use, max",
    ["state"],
    multiprocess_mode="livesum",
)
REDIS_CONNECTIONS = Gauge(
    "neuronetz_redis_pool_connections",
    "Redis pool connections by state: idle, in_use, max",
    ["state"],
    multiprocess_mode="livesum",
)

# A closed asyncpg pool is dropped at the next sample (it takes no weak reference); a Redis
# client nobody uses any more is not kept alive by its gauge.
_pg: list[asyncpg.Pool] = []
_redis: list[weakref.ref[aioredis.Redis | RedisCluster]] = []
_tasks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def watch_pg(pool: asyncpg.Pool) -> None:
    if not any(p is pool for p in _pg):
        _pg.append(pool)


def watch_redis(client: aioredis.Redis | RedisCluster) -> None:
    if not any(c() is client for c in _redis):
        _redis.append(weakref.ref(client))


def _redis_counts(client: aioredis.Redis | RedisCluster) -> tuple[int, int, int]:
    """(idle, in use, max) of a client's pool. redis-py keeps them in attributes of its pool
    (``_available_connections``, ``_in_use_connections``) on every version we support; a
    Redis Cluster client's are the sums of its nodes' (``_free``, ``_connections``)."""
    if isinstance(client, RedisCluster):
        nodes: list[Any] = client.get_nodes()
        free = sum(len(getattr(n, "_free", ())) for n in nodes)
        made = sum(len(getattr(n, "_connections", ())) for n in nodes)
        return free, made - free, sum(int(getattr(n, "max_connections", 0) or 0) for n in nodes)
    pool: Any = client.connection_pool
    idle = len(getattr(pool, "_available_connections", ()))
    in_use = len(getattr(pool, "_in_use_connections", ()))
    return idle, in_use, int(getattr(pool, "max_connections", 0) or 0)


def sample() -> None:
    """Set the gauges from the watched pools (closed ones are forgotten)."""
    _pg[:] = [p for p in _pg if not p.is_closing()]
    _redis[:] = [ref for ref in _redis if ref() is not None]
    pools = list(_pg)
    size = sum(p.get_size() for p in pools)
    idle = sum(p.get_idle_size() for p in pools)
    PG_CONNECTIONS.labels("idle").set(idle)
    PG_CONNECTIONS.labels("in_use").set(size - idle)
    PG_CONNECTIONS.labels("max").set(sum(p.get_max_size() for p in pools))
    counts = [_redis_counts(c) for ref in _redis if (c := ref()) is not None]
    for index, state in enumerate(("idle", "in_use", "max")):
        REDIS_CONNECTIONS.labels(state).set(sum(c[index] for c in counts))


async def _run(interval_s: float) -> None:
    while True:
        with contextlib.suppress(Exception):  # a gauge is never worth a service
            sample()
        await asyncio.sleep(interval_s)


def start(interval_s: float = INTERVAL_S) -> None:
    """Sample the pools every ``interval_s`` in this event loop (once per loop)."""
    loop = asyncio.get_running_loop()
    task = _tasks.get(loop)
    if task is None or task.done():
        _tasks[loop] = loop.create_task(_run(interval_s), name="pool-metrics")
