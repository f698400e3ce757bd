"""What a scrape shows about the stores: every Redis script call (gateway/scriptmetrics.py)
lands in ``neuronetz_redis_script_seconds{script}``, a failed one too; every PostgreSQL batch
write in ``accounting_pg_write_seconds{table}``; the error counters of every table exist at 0
before the first error (so ``increase() > 0`` sees it)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.exceptions import ResponseError

from accounting import pgwrite
from accounting.batches import Batcher
from gateway import budgets, poolmetrics, scriptmetrics, storage


def _script_calls(script: str) -> float:
    return (
        REGISTRY.get_sample_value("neuronetz_redis_script_seconds_count", {"script": script}) or 0.0
    )


async def test_a_script_call_is_timed_under_its_name(redis: aioredis.Redis) -> None:
    timer = scriptmetrics.Timer("unit_echo")
    echo = redis.register_script("return ARGV[1]")
    assert await timer.run(echo(keys=[], args=["hi"])) == "hi"
    assert _script_calls("unit_echo") == 1
    seconds = REGISTRY.get_sample_value(
        "neuronetz_redis_script_seconds_sum", {"script": "unit_echo"}
    )
    assert seconds is not None and 0 < seconds < 2


async def test_a_failed_script_call_is_timed_and_still_raises(redis: aioredis.Redis) -> None:
    timer = scriptmetrics.Timer("unit_broken")
    broken = redis.register_script("return redis.call('no-such-command')")
    with pytest.raises(ResponseError):
        await timer.run(broken(keys=[], args=[]))
    assert _script_calls("unit_broken") == 1


async def test_the_services_scripts_are_timed_where_they_run(redis: aioredis.Redis) -> None:
    before = _script_calls("settle")
    await budgets.settle(redis, "tenant-a", "request-1", 10)  # no reservation: a no-op
    assert _script_calls("settle") == before + 1


class _Pool:
    """The one asyncpg call pgwrite makes; ``refuse``: the rows Postgres rejects."""

    def __init__(self, refuse: set[int]) -> None:
        self.refuse = refuse
        self.written: list[int] = []

    async def execute(self, sql: str, *columns: list[int]) -> None:
        rows = columns[0]
        if self.refuse & set(rows):
            raise asyncpg.DataError("refused")
        self.written += rows


def _rows(batch: Sequence[int]) -> list[list[Any]]:
    return [list(batch)]


def _sample(name: str, table: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"table": table})


async def test_a_batch_write_is_timed_by_table_retries_included() -> None:
    before = _sample("accounting_pg_write_seconds_count", "audit_log") or 0.0
    rejected = _sample("accounting_rejected_rows_total", "audit_log") or 0.0
    pool: Any = _Pool(refuse={2})
    await pgwrite.insert(pool, "audit_log", "INSERT", [1, 2, 3], _rows)
    assert pool.written == [1, 3]
    assert _sample("accounting_pg_write_seconds_count", "audit_log") == before + 1
    assert _sample("accounting_rejected_rows_total", "audit_log") == rejected + 1


def test_error_series_of_every_table_exist_at_zero_before_any_error() -> None:
    for table in pgwrite.TABLES:
        assert _sample("accounting_rejected_rows_total", table) is not None

    async def write(rows: list[int]) -> None:
        return None

    Batcher("unit_table", write, capacity=1, overflow=0, batch_max=1, interval_s=1)
    for name in (
        "accounting_dropped_rows_total",
        "accounting_write_errors_total",
        "accounting_written_rows_total",
        "accounting_buffered_rows",
    ):
        assert _sample(name, "unit_table") == 0.0, name


def _gauge(name: str, state: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"state": state})


class _PgPool:
    """What the gauges read of an asyncpg pool: 3 connections open, 1 idle, room for 8."""

    def is_closing(self) -> bool:
        return False

    def get_size(self) -> int:
        return 3

    def get_idle_size(self) -> int:
        return 1

    def get_max_size(self) -> int:
        return 8


async def test_pool_gauges_show_connections_in_use(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only this test's pools (every storage client of the process is watched too).
    monkeypatch.setattr(poolmetrics, "_redis", [])
    monkeypatch.setattr(poolmetrics, "_pg", [])
    poolmetrics.watch_redis(redis)
    poolmetrics.watch_redis(redis)  # watched once, however often it is handed over
    pg: Any = _PgPool()
    poolmetrics.watch_pg(pg)
    await redis.ping()
    poolmetrics.sample()
    idle = _gauge("neuronetz_redis_pool_connections", "idle")
    assert idle is not None and idle >= 1
    assert _gauge("neuronetz_redis_pool_connections", "max") == storage.MAX_CONNECTIONS
    # a blocking command holds its connection until it returns
    blocked = asyncio.ensure_future(redis.blpop(["nz:unit:never"], timeout=1))
    await asyncio.sleep(0.2)
    poolmetrics.sample()
    in_use = _gauge("neuronetz_redis_pool_connections", "in_use")
    assert in_use is not None and in_use >= 1
    await blocked
    assert (
        _gauge("neuronetz_pg_pool_connections", "in_use"),
        _gauge("neuronetz_pg_pool_connections", "idle"),
        _gauge("neuronetz_pg_pool_connections", "max"),
    ) == (2, 1, 8)
