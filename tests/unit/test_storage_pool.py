"""The services' Redis client under a burst: more requests at once than pooled connections wait
for a connection instead of failing (at c=64 the RLS answered some requests with a 503, flag
RLSE, "Too many connections"); Redis really down still fails at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from devstack.processes import free_port
from gateway.rls import Descriptor, Limit, RateLimitRequest, Unit
from gateway.storage import MAX_CONNECTIONS, redis_client
from ratelimit import config
from ratelimit.decide import Decider
from ratelimit.windows import Windows

BURST = 3 * MAX_CONNECTIONS
STATIC = config.parse("domains: [{domain: gateway}]")


def _request(n: int) -> RateLimitRequest:
    entries = (("limit", "key_rpm"), ("tenant_id", "t-burst"), ("key_id", f"k{n}"))
    return RateLimitRequest("gateway", (Descriptor(entries, Limit(10, Unit.MINUTE)),))


async def test_a_burst_larger_than_the_pool_is_decided_not_refused(redis_url: str) -> None:
    client = redis_client(redis_url, 0.5)
    decider = Decider(STATIC, Windows(client, deadline_s=1.0))
    try:
        decisions = await asyncio.gather(
            *(decider.decide(_request(n)) for n in range(BURST)), return_exceptions=True
        )
        failed = [repr(d) for d in decisions if isinstance(d, BaseException)]
        assert failed == []
        assert sum(not d.over for d in decisions if not isinstance(d, BaseException)) == BURST
        # Each window counted its one request.
        assert (
            await client.hget(
                "nz:{t-burst}:rl:gateway:limit=key_rpm|tenant_id=t-burst|key_id=k7", "l"
            )
            == "1"
        )
    finally:
        await client.aclose()


async def test_a_burst_of_plain_commands_is_answered(redis_url: str) -> None:
    client = redis_client(redis_url, 0.5)
    try:
        answers = await asyncio.gather(
            *(client.incr("nz:burst") for _ in range(BURST)), return_exceptions=True
        )
        assert [a for a in answers if isinstance(a, BaseException)] == []
        assert await client.get("nz:burst") == str(BURST)
    finally:
        await client.aclose()


async def test_redis_down_still_fails_at_once() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    try:
        start = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await client.get("nz:anything")
        assert time.monotonic() - start < 0.5
    finally:
        await client.aclose()
