"""accounting's in-flight snapshot in the stack's Redis: what an accounting that dies leaves
for the next one of its instance (accounting/inflight.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from accounting import inflight
from accounting.inflight import InFlight, orphan_outcome
from accounting.stream import RequestInfo
from tests.gateway_client import Gateway
from tests.redisclient import async_client

META: dict[str, Any] = {
    "tenant": "acme",
    "tenant_id": "00000000-0000-0000-0000-000000000001",
    "key_id": "00000000-0000-0000-0000-000000000002",
    "endpoint": "/api/chat",
    "model": "llama3.2:latest",
    "reserved": 150,
    "prompt_estimate": 50,
    "max_tokens": 100,
    "slot": True,
    "rl": {"key_tpm": {"requests_per_unit": 3000, "unit": "MINUTE"}},
}


def info(request_id: str) -> RequestInfo:
    return RequestInfo.from_metadata(request_id, META)


def run(gw: Gateway, work: Any, redis_url: str = "") -> Any:
    async def go() -> Any:
        redis = (
            aioredis.Redis.from_url(redis_url, decode_responses=True)
            if redis_url
            else async_client(gw.stack)
        )
        try:
            return await work(redis, f"test-{uuid.uuid4()}")
        finally:
            await redis.aclose()

    return asyncio.run(go())


def test_the_next_accounting_of_an_instance_finds_what_was_open(gw: Gateway) -> None:
    async def work(redis: aioredis.Redis, instance: str) -> None:
        dead = InFlight(redis, instance)
        for rid in ("a", "b", "c"):
            dead.add(info(rid))
        await dead.snapshot()
        dead.remove(info("b"))  # ended: gone from the next snapshot
        await dead.snapshot()
        dead.remove(info("c"))  # ended after the last snapshot: still there
        orphans = await InFlight(redis, instance).orphans()
        assert sorted(o.info.request_id for o in orphans) == ["a", "c"]
        assert orphans[0].info == info(orphans[0].info.request_id)  # all it knew, intact
        assert await InFlight(redis, instance).orphans() == []  # read once
        assert await InFlight(redis, f"{instance}-other").orphans() == []

    run(gw, work)


def test_a_request_that_ends_while_its_snapshot_is_written_is_not_left_behind(
    gw: Gateway,
) -> None:
    async def work(redis: aioredis.Redis, instance: str) -> None:
        live = InFlight(redis, instance)
        live.add(info("r"))
        writing = asyncio.create_task(live.snapshot())
        await asyncio.sleep(0)  # the write is under way
        live.remove(info("r"))
        await writing
        await live.snapshot()
        assert await InFlight(redis, instance).orphans() == []

    run(gw, work)


def test_an_orphan_is_charged_its_reservation() -> None:
    outcome = orphan_outcome(info("r"))
    counts = outcome.counts
    assert (counts.tokens_in, counts.tokens_out, counts.estimated) == (50, 100, True)
    assert outcome.cut and counts.error == "accounting restarted mid-stream"
    unbudgeted = orphan_outcome(RequestInfo.from_metadata("r", {**META, "reserved": 0}))
    assert (unbudgeted.counts.tokens_in, unbudgeted.counts.tokens_out) == (50, 100)


def test_a_silent_instance_s_snapshot_is_adopted_once_and_a_live_one_s_never(
    gw: Gateway,
) -> None:
    # Beside the stack's own accountings, which adopt too: they must not take this one (a
    # Redis Cluster has one database: there, only the millisecond between the heartbeat's end
    # and the takers' call is left to them).
    aside = "" if gw.stack.config.redis_cluster else gw.stack.redis_url.rsplit("/", 1)[0] + "/1"

    async def work(redis: aioredis.Redis, instance: str) -> None:
        dead, live = InFlight(redis, f"{instance}-dead"), InFlight(redis, f"{instance}-live")
        before = time.time()
        dead.add(info("d1"))
        live.add(info("l1"))
        await dead.snapshot()
        await live.snapshot()
        # The dead one has said nothing for longer than ADOPT_AFTER_S; the live one just spoke.
        silent_since = time.time() - inflight.ADOPT_AFTER_S - 0.1
        await redis.zadd(inflight.REGISTRY, {dead.instance: silent_since})
        takers = await asyncio.gather(
            inflight.adopt(redis, f"{instance}-a"), inflight.adopt(redis, f"{instance}-b")
        )
        found = [entries for taken in takers for entries in taken.get(dead.instance, [])]
        assert [e.info for e in found] == [info("d1")]  # by exactly one of the two takers
        assert before <= found[0].started <= time.time()
        assert all(live.instance not in taken for taken in takers)
        assert await redis.zscore(inflight.REGISTRY, dead.instance) is None
        assert await redis.hlen(inflight.key(live.instance)) == 1
        # Back from the dead: listed again, its (now empty) snapshot its own.
        await dead.snapshot()
        assert await redis.zscore(inflight.REGISTRY, dead.instance) is not None
        assert await dead.orphans() == []

    run(gw, work, aside)
