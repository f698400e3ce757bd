"""A store that does not answer is one exception in every service (gateway/storeerrors.py):
authz's key check and admission and the RLS's windows raise the same ``StoreUnavailable``,
which authz and the RLS answer with a 503 (tests/e2e: test_authz_keys, test_authz_budgets,
test_ratelimit)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from authz.admission import Admitter
from authz.keys import KeyStore
from devstack.processes import free_port
from gateway import apikeys
from gateway.storage import redis_client
from gateway.storeerrors import StoreUnavailable
from ratelimit.windows import Hit, Mode, Windows


@pytest.fixture
async def no_redis() -> AsyncIterator[aioredis.Redis]:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.5)  # nothing listens there
    try:
        yield client
    finally:
        await client.aclose()


def _keys(pool: asyncpg.Pool, redis: aioredis.Redis) -> KeyStore:
    return KeyStore(pool, redis, apikeys.hasher(time_cost=1, memory_kib=8), 5.0)


def _key() -> str:
    return apikeys.generate(apikeys.hasher(time_cost=1, memory_kib=8)).full


async def test_key_check_with_redis_down(
    no_redis: aioredis.Redis, no_postgres: asyncpg.Pool
) -> None:
    with pytest.raises(StoreUnavailable):
        await _keys(no_postgres, no_redis).lookup(_key(), "192.0.2.1")


async def test_key_check_with_postgres_down(redis_url: str, no_postgres: asyncpg.Pool) -> None:
    redis = redis_client(redis_url, 0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await _keys(no_postgres, redis).lookup(_key(), "192.0.2.1")
    finally:
        await redis.aclose()


async def test_admission_with_redis_down(
    no_redis: aioredis.Redis, no_postgres: asyncpg.Pool
) -> None:
    with pytest.raises(StoreUnavailable):
        await Admitter(no_redis, no_postgres).deny_mode()


async def test_rate_limit_windows_with_redis_down(no_redis: aioredis.Redis) -> None:
    hit = Hit(key="nz:rl:{t}:k", limit=10, period_ms=60_000, hits=1, mode=Mode.ADMIT)
    with pytest.raises(StoreUnavailable):
        await Windows(no_redis, deadline_s=0.5).apply([hit])
