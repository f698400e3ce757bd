"""Connections to PostgreSQL (asyncpg pool) and Redis (asyncio client)."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway import poolmetrics

# Pooled Redis connections per client (one client per service process).
MAX_CONNECTIONS = 64


async def pg_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=5, timeout=5
    )
    assert pool is not None
    poolmetrics.watch_pg(pool)
    return pool


def redis_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A pooled client with short timeouts (a slow Redis fails closed, fast).

    More commands at once than :data:`MAX_CONNECTIONS` wait for a pooled connection, at most
    ``timeout_s``, instead of failing at once ("Too many connections": at c=64 the RLS's two
    calls per request outnumber the pool, and requests were refused with a 503).

    A pooled connection left over from before a Redis restart fails once: the command is tried
    again at once on a fresh connection. Redis really down still fails fast (refused).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_s,  # the longest wait for a free connection
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        health_check_interval=0,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    client = aioredis.Redis.from_pool(pool)
    poolmetrics.watch_redis(client)
    return client
