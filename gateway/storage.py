"""Connections to PostgreSQL (asyncpg pool) and Redis (asyncio client)."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis


async def pg_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=5, timeout=5
    )
    assert pool is not None
    return pool


def redis_client(url: str, timeout_s: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        health_check_interval=0,
        max_connections=64,
    )
