"""The sliding windows (ratelimit/windows.py) hit by hit, against a real Redis (a redis server,
and a one-node Redis Cluster): what each hit reports (over, the level before and after it, the
clock it was decided at), when a decision is refused, what it records — and which hash tag a
key has. Every expected level is worked out by hand from the leaky bucket of ``window.lua``:
a window of L units per P ms drains L/P units per ms."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster

from devstack.processes import Proc, free_port, redis_server_bin
from gateway.storage import redis_client
from gateway.storeerrors import StoreUnavailable
from ratelimit.windows import Hit, Mode, Outcome, Windows, hash_tag
from tests.unit.manualclock import T0, ManualClock

MINUTE = 60_000


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("nz:{t1}:rl:gateway:limit=key_rpm", "t1"),
        ("{t1}:x", "t1"),  # a tag at the very start
        ("no-tag-at-all", "no-tag-at-all"),  # no tag: the whole key
        ("a{}b", "a{}b"),  # an empty tag does not count: the whole key
        ("a{b", "a{b"),  # never closed: the whole key
        ("a}b{c}", "c"),  # a "}" before the "{" does not close it
        ("a{}b}", "a{}b}"),  # the first "}" after the "{" closes it, even when empty
        ("{{a}}", "{a"),  # the first "{" opens, the first "}" after it closes
        ("{a}{b}", "a"),  # only the first tag counts
    ],
)
def test_a_key_has_the_hash_tag_redis_cluster_hashes(key: str, tag: str) -> None:
    assert hash_tag(key) == tag


def admit(key: str, limit: int, hits: int = 1, enforce: bool = True) -> Hit:
    return Hit(key, limit, MINUTE, hits, Mode.ADMIT, enforce)


async def test_each_hit_reports_its_level_before_and_after_and_the_decisions_clock(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    windows = Windows(redis, deadline_s=1.0, clock=clock)
    assert await windows.apply([admit("nz:{t}:a", 3, hits=2)]) == (
        False,
        [Outcome(over=False, before=0.0, after=2.0, now_ms=T0)],
    )
    # 2 + 2 > 3: refused, nothing recorded.
    assert await windows.apply([admit("nz:{t}:a", 3, hits=2)]) == (
        True,
        [Outcome(over=True, before=2.0, after=2.0, now_ms=T0)],
    )
    # 2 + 1 = 3 fits exactly.
    assert await windows.apply([admit("nz:{t}:a", 3, hits=1)]) == (
        False,
        [Outcome(over=False, before=2.0, after=3.0, now_ms=T0)],
    )
    # 20 s later 3/min has drained one unit: 2 left.
    clock.now_ms = T0 + 20_000
    assert await windows.apply([admit("nz:{t}:a", 3, hits=1)]) == (
        False,
        [Outcome(over=False, before=2.0, after=3.0, now_ms=T0 + 20_000)],
    )
    assert await redis.hgetall("nz:{t}:a") == {"l": "3", "t": str(T0 + 20_000)}


async def test_a_check_asks_room_for_one_unit_and_records_nothing(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    windows = Windows(redis, deadline_s=1.0, clock=clock)
    await windows.apply([Hit("nz:{t}:c", 10, MINUTE, 9, Mode.DEBIT)])
    # Its hits do not matter: one unit fits (9 + 1 = 10), whatever it says.
    assert await windows.apply([Hit("nz:{t}:c", 10, MINUTE, 50, Mode.CHECK)]) == (
        False,
        [Outcome(over=False, before=9.0, after=9.0, now_ms=T0)],
    )
    await windows.apply([Hit("nz:{t}:c", 10, MINUTE, 1, Mode.DEBIT)])
    assert await windows.apply([Hit("nz:{t}:c", 10, MINUTE, 0, Mode.CHECK)]) == (
        True,
        [Outcome(over=True, before=10.0, after=10.0, now_ms=T0)],
    )


async def test_a_debit_records_its_hits_even_over_the_limit_and_never_refuses(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    windows = Windows(redis, deadline_s=1.0, clock=clock)
    assert await windows.apply([Hit("nz:{t}:d", 100, MINUTE, 150, Mode.DEBIT)]) == (
        False,
        [Outcome(over=True, before=0.0, after=150.0, now_ms=T0)],
    )
    assert await redis.hget("nz:{t}:d", "l") == "150"


async def test_a_shadow_hit_reports_over_but_neither_refuses_nor_stops_recording(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    windows = Windows(redis, deadline_s=1.0, clock=clock)
    assert await windows.apply([admit("nz:{t}:s", 1, hits=2, enforce=False)]) == (
        False,
        [Outcome(over=True, before=0.0, after=2.0, now_ms=T0)],
    )


async def test_one_enforced_window_over_refuses_the_whole_decision_and_records_nothing(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    """On one Redis server the decision is one atomic call, whatever the hash tags."""
    windows = Windows(redis, deadline_s=1.0, clock=clock)
    await windows.apply([admit("nz:{g}:model", 1)])
    hits = [admit("nz:{t}:key", 5), admit("nz:{g}:model", 1), admit("nz:{t}:tenant", 5)]
    assert await windows.apply(hits) == (
        True,
        [
            Outcome(over=False, before=0.0, after=0.0, now_ms=T0),
            Outcome(over=True, before=1.0, after=1.0, now_ms=T0),
            Outcome(over=False, before=0.0, after=0.0, now_ms=T0),
        ],
    )
    assert [k async for k in redis.scan_iter("nz:*")] == ["nz:{g}:model"]


async def test_every_hit_of_an_admitted_decision_reports_its_own_window(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    windows = Windows(redis, deadline_s=1.0, clock=clock)
    await windows.apply([Hit("nz:{t}:b", 10, MINUTE, 3, Mode.DEBIT)])
    await windows.apply([Hit("nz:{t}:c", 10, MINUTE, 5, Mode.DEBIT)])
    hits = [admit("nz:{t}:a", 10), admit("nz:{t}:b", 10, hits=2), admit("nz:{t}:c", 10)]
    assert await windows.apply(hits) == (
        False,
        [
            Outcome(over=False, before=0.0, after=1.0, now_ms=T0),
            Outcome(over=False, before=3.0, after=5.0, now_ms=T0),
            Outcome(over=False, before=5.0, after=6.0, now_ms=T0),
        ],
    )


async def test_no_hits_decide_nothing_and_touch_no_redis(redis_url: str) -> None:
    # A client to a port nothing listens on: any call would fail.
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    try:
        assert await Windows(client, deadline_s=1.0).apply([]) == (False, [])
    finally:
        await client.aclose()


async def test_without_a_clock_the_redis_servers_clock_decides(redis: aioredis.Redis) -> None:
    before = int(time.time() * 1000)
    _, [outcome] = await Windows(redis, deadline_s=1.0).apply([admit("nz:{t}:server", 5)])
    after = int(time.time() * 1000)
    assert before - 1000 <= outcome.now_ms <= after + 1000
    assert outcome == Outcome(over=False, before=0.0, after=1.0, now_ms=outcome.now_ms)


async def test_redis_down_is_store_unavailable_with_the_reason() -> None:
    port = free_port()
    client = redis_client(f"redis://127.0.0.1:{port}/0", 0.5)
    try:
        with pytest.raises(StoreUnavailable) as error:
            await Windows(client, deadline_s=1.0).apply([admit("nz:{t}:down", 5)])
    finally:
        await client.aclose()
    assert str(error.value).startswith(f"Error 111 connecting to 127.0.0.1:{port}.")


async def test_redis_slower_than_the_deadline_is_store_unavailable_named_timeout(
    redis_url: str, redis: aioredis.Redis
) -> None:
    pauser = redis_client(redis_url, 1.0)
    try:
        await pauser.client_pause(1500, all=False)  # scripts wait
        with pytest.raises(StoreUnavailable) as error:
            await Windows(redis, deadline_s=0.1).apply([admit("nz:{t}:slow", 5)])
        await pauser.client_unpause()
    finally:
        await pauser.aclose()
    assert str(error.value) == "TimeoutError"


# A one-node Redis Cluster: every slot on one server, so a script may still touch only keys
# of one hash slot (Redis checks it), and the client sends one call per slot.


def _cluster_port() -> int:
    # The cluster bus listens on port + 10 000.
    while (port := free_port()) > 55_000:
        pass
    return port


@pytest.fixture(scope="module")
def cluster_port() -> Iterator[int]:
    port = _cluster_port()
    work = Path(tempfile.mkdtemp(prefix="nz-unit-cluster-"))
    argv = [redis_server_bin(), *("--port", str(port), "--bind", "127.0.0.1")]
    cluster = ("--cluster-enabled", "yes", "--cluster-config-file", str(work / "nodes.conf"))
    proc = Proc(
        "redis",
        [*argv, *cluster, "--save", "", "--appendonly", "no", "--dir", str(work)],
        work,
        port=port,
    )
    proc.start()
    try:
        admin = SyncRedis(port=port)
        admin.cluster("ADDSLOTS", *range(16384))
        deadline = time.monotonic() + 10
        while admin.cluster("INFO")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "the one-node cluster never came up"
            time.sleep(0.05)
        admin.close()
        yield port
    finally:
        proc.stop()


@pytest.fixture
async def cluster(cluster_port: int) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster_port, decode_responses=True)
    await client.initialize()
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


async def test_on_a_cluster_each_hash_tag_decides_on_its_own_in_the_callers_order(
    cluster: RedisCluster, clock: ManualClock
) -> None:
    windows = Windows(cluster, deadline_s=1.0, clock=clock)
    await windows.apply([admit("nz:{g}:model", 1)])
    hits = [admit("nz:{t}:key", 5), admit("nz:{g}:model", 1), admit("nz:{t}:tenant", 5, hits=2)]
    # {g} is over: the decision is refused, but {t}'s windows (another slot) were admitted.
    assert await windows.apply(hits) == (
        True,
        [
            Outcome(over=False, before=0.0, after=1.0, now_ms=T0),
            Outcome(over=True, before=1.0, after=1.0, now_ms=T0),
            Outcome(over=False, before=0.0, after=2.0, now_ms=T0),
        ],
    )
    assert await cluster.hget("nz:{t}:tenant", "l") == "2"


async def test_on_a_cluster_windows_of_one_tag_stay_one_atomic_call(
    cluster: RedisCluster, clock: ManualClock
) -> None:
    windows = Windows(cluster, deadline_s=1.0, clock=clock)
    await windows.apply([admit("nz:{t}:tenant", 1)])
    assert await windows.apply([admit("nz:{t}:key", 5), admit("nz:{t}:tenant", 1)]) == (
        True,
        [
            Outcome(over=False, before=0.0, after=0.0, now_ms=T0),
            Outcome(over=True, before=1.0, after=1.0, now_ms=T0),
        ],
    )
    assert await cluster.exists("nz:{t}:key") == 0
    # Two tags, nothing over: both admitted and recorded.
    assert await windows.apply([admit("nz:{a}:k", 2), admit("nz:{b}:k", 2)]) == (
        False,
        [
            Outcome(over=False, before=0.0, after=1.0, now_ms=T0),
            Outcome(over=False, before=0.0, after=1.0, now_ms=T0),
        ],
    )


async def test_the_deadline_holds_on_a_cluster_too(cluster_port: int, clock: ManualClock) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_port, decode_responses=True)
    await client.initialize()
    pauser = aioredis.Redis(port=cluster_port)
    try:
        await pauser.client_pause(1500, all=False)
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreUnavailable):
            await Windows(client, deadline_s=0.1, clock=clock).apply(
                [admit("nz:{a}:k", 2), admit("nz:{b}:k", 2)]
            )
        assert asyncio.get_running_loop().time() - started < 1.0
        await pauser.client_unpause()
    finally:
        await pauser.aclose()
        await client.aclose()
