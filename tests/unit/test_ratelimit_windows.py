"""Windows and decisions against a real Redis, with a controllable clock instead of sleeping."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from devstack.processes import Proc
from gateway.rls import Descriptor, Limit, RateLimitRequest, Unit
from gateway.storage import redis_client
from gateway.storeerrors import StoreUnavailable
from ratelimit import config
from ratelimit.decide import Decider, window_key
from ratelimit.windows import Windows
from tests.unit.manualclock import ManualClock

TENANT = "6a1f7d1e-0000-4000-8000-000000000001"
STATIC = config.parse(
    """
domains:
  - domain: gateway
    descriptors:
      - key: limit
        value: key_rpm
        quota: requests
        descriptors: [{key: tenant_id, descriptors: [{key: key_id}]}]
      - key: limit
        value: tenant_rpm
        quota: requests
        descriptors: [{key: tenant_id}]
      - key: limit
        value: key_tpm
        quota: tokens
        descriptors: [{key: tenant_id, descriptors: [{key: key_id}]}]
      - key: model
        value: static-model
        rate_limit: {unit: MINUTE, requests_per_unit: 2}
      - key: model
        value: shadow-model
        rate_limit: {unit: MINUTE, requests_per_unit: 1}
        shadow_mode: true
"""
)


@pytest.fixture
def decider(redis: aioredis.Redis, clock: ManualClock) -> Decider:
    return Decider(STATIC, Windows(redis, deadline_s=1.0, clock=clock))


def rpm(key: str, n: int | None, tenant: str = TENANT) -> Descriptor:
    return Descriptor(
        (("limit", "key_rpm"), ("tenant_id", tenant), ("key_id", key)),
        Limit(n, Unit.MINUTE) if n is not None else None,
    )


def tenant_rpm(n: int, tenant: str = TENANT) -> Descriptor:
    return Descriptor((("limit", "tenant_rpm"), ("tenant_id", tenant)), Limit(n, Unit.MINUTE))


def tpm(key: str, n: int, hits: int) -> Descriptor:
    return Descriptor(
        (("limit", "key_tpm"), ("tenant_id", TENANT), ("key_id", key)),
        Limit(n, Unit.MINUTE),
        hits_addend=hits,
    )


def req(*descriptors: Descriptor, hits: int = 0) -> RateLimitRequest:
    return RateLimitRequest("gateway", descriptors, hits)


async def test_limit_admits_exactly_l_then_the_window_slides(
    decider: Decider, clock: ManualClock
) -> None:
    results = [await decider.decide(req(rpm("k1", 10))) for _ in range(12)]
    assert [r.over for r in results] == [False] * 10 + [True] * 2
    first, tenth, over = results[0].statuses[0], results[9].statuses[0], results[10].statuses[0]
    assert (first.remaining, tenth.remaining, over.remaining) == (9, 0, 0)
    assert first.limit == Limit(10, Unit.MINUTE)
    # One request drains every 6 s: the 11th would fit in exactly 6 s.
    assert over.retry_ms == 6000
    assert results[10].response_headers["retry-after"] == "6"
    clock.advance(5.9)
    assert (await decider.decide(req(rpm("k1", 10)))).over
    clock.advance(0.1)
    assert not (await decider.decide(req(rpm("k1", 10)))).over
    assert (await decider.decide(req(rpm("k1", 10)))).over
    # A full minute later the whole window is free again.
    clock.advance(60)
    results = [await decider.decide(req(rpm("k1", 10))) for _ in range(11)]
    assert [r.over for r in results] == [False] * 10 + [True]


async def test_racing_requests_admit_exactly_the_limit(decider: Decider) -> None:
    results = await asyncio.gather(*(decider.decide(req(rpm("race", 10))) for _ in range(64)))
    assert sum(not r.over for r in results) == 10


async def test_two_keys_share_the_tenant_window_and_a_rejection_consumes_nothing(
    decider: Decider, redis: aioredis.Redis
) -> None:
    for key in ("a", "b", "a"):
        assert not (await decider.decide(req(rpm(key, 5), tenant_rpm(3)))).over
    rejected = await decider.decide(req(rpm("b", 5), tenant_rpm(3)))
    assert rejected.over
    assert [s.over for s in rejected.statuses] == [False, True]
    # b was admitted once: its rejected request did not count against its own window.
    level = await redis.hget(window_key("gateway", rpm("b", 5)), "l")
    assert level is not None
    assert float(level) == pytest.approx(1.0, abs=0.01)


async def test_tokens_check_records_nothing_and_a_debit_always_records(
    decider: Decider, clock: ManualClock
) -> None:
    for _ in range(3):
        assert not (await decider.decide(req(tpm("t", 100, 0)))).over  # check only
    # After the stream: 150 tokens against 100/min are debited although they overshoot.
    debit = await decider.decide(req(tpm("t", 100, 150)))
    assert not debit.over  # a debit never rejects (Envoy ignores the answer anyway)
    assert debit.statuses[0].over
    assert debit.statuses[0].remaining == 0
    # The next request's check is over until the window has room for one token again:
    # 150 - 100 + 1 = 51 tokens must drain at 100/60 000 ms → 30 600 ms.
    check = await decider.decide(req(tpm("t", 100, 0)))
    assert check.over
    assert check.statuses[0].retry_ms == 30_600
    assert check.response_headers["retry-after"] == "31"
    clock.advance(30.5)
    assert (await decider.decide(req(tpm("t", 100, 0)))).over
    clock.advance(0.1)
    assert not (await decider.decide(req(tpm("t", 100, 0)))).over


async def test_request_level_hits_addend_counts(decider: Decider) -> None:
    assert not (await decider.decide(req(rpm("h", 10), hits=7))).over
    result = await decider.decide(req(rpm("h", 10), hits=4))
    assert result.over
    assert result.statuses[0].retry_ms == 6000  # 1 unit must drain for 4 to fit


async def test_memory_per_key_is_bounded(decider: Decider, redis: aioredis.Redis) -> None:
    for _ in range(300):
        await decider.decide(req(rpm("busy", 1000)))
    keys = [k async for k in redis.scan_iter("nz:*")]
    assert keys == [window_key("gateway", rpm("busy", 1000))]
    assert await redis.hlen(keys[0]) == 2
    # Expires once drained: 300 of 1000/min drain in 18 s (+1 s slack).
    assert 0 < await redis.pttl(keys[0]) <= 19_000


async def test_windows_of_one_tenant_share_a_hash_tag() -> None:
    for d in (rpm("k", 1), tenant_rpm(1), tpm("k", 1, 0)):
        assert window_key("gateway", d).startswith(f"nz:{{{TENANT}}}:rl:gateway:")
    assert window_key("g", Descriptor((("model", "x"),))).startswith("nz:{g}:")


async def test_static_limit_without_override_and_override_wins(decider: Decider) -> None:
    static = Descriptor((("model", "static-model"),))
    assert [(await decider.decide(req(static))).over for _ in range(3)] == [False, False, True]
    overridden = Descriptor((("model", "static-model"),), Limit(100, Unit.MINUTE))
    assert not (await decider.decide(req(overridden))).over


async def test_no_limit_means_no_redis_and_ok(decider: Decider, redis: aioredis.Redis) -> None:
    result = await decider.decide(req(rpm("free", None), Descriptor((("surface", "openai"),))))
    assert not result.over
    assert [s.limit for s in result.statuses] == [None, None]
    assert [k async for k in redis.scan_iter("nz:*")] == []


async def test_shadow_mode_counts_but_never_rejects(decider: Decider) -> None:
    shadow = Descriptor((("model", "shadow-model"),))
    results = [await decider.decide(req(shadow)) for _ in range(3)]
    assert [r.over for r in results] == [False] * 3
    assert [r.outcome for r in results] == ["near_limit", "shadow_over_limit", "shadow_over_limit"]


async def test_openai_headers_and_body(decider: Decider) -> None:
    surface = Descriptor((("surface", "openai"), ("tenant", "acme")))
    ok = await decider.decide(req(surface, rpm("o", 2), tpm("o", 1000, 0)))
    assert ok.tenant == "acme"
    assert ok.response_headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-reset-tokens": "0ms",
    }
    await decider.decide(req(surface, rpm("o", 2), tpm("o", 1000, 0)))
    over = await decider.decide(req(surface, rpm("o", 2), tpm("o", 1000, 0)))
    assert over.over
    assert over.response_headers["retry-after"] == "30"
    assert over.response_headers["retry-after-ms"] == "30000"
    assert over.response_headers["x-ratelimit-remaining-requests"] == "0"
    assert b'"code": "rate_limit_exceeded"' in over.body
    native = await decider.decide(req(rpm("o", 2)))
    assert native.body == b'{"error": "too many requests"}'
    assert "retry-after-ms" not in native.response_headers
    assert "x-ratelimit-limit-requests" not in native.response_headers


async def test_redis_down_fails_closed(redis_proc: Proc, decider: Decider) -> None:
    redis_proc.stop()
    try:
        with pytest.raises(StoreUnavailable):
            await decider.decide(req(rpm("down", 10)))
    finally:
        redis_proc.start()


async def test_redis_slower_than_the_deadline_fails_closed(
    redis_proc: Proc, redis: aioredis.Redis, clock: ManualClock
) -> None:
    fast = Decider(STATIC, Windows(redis, deadline_s=0.2, clock=clock))
    assert not (await fast.decide(req(rpm("slow", 10)))).over
    other = redis_client(f"redis://127.0.0.1:{redis_proc.port}/0", 0.5)
    try:
        await other.client_pause(1500, all=False)  # writes (and scripts) wait; UNPAUSE works
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreUnavailable):
            await fast.decide(req(rpm("slow", 10)))
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        await other.client_unpause()
        await other.aclose()


async def test_a_request_refused_by_a_global_static_limit_consumes_no_tenant_window(
    decider: Decider, redis: aioredis.Redis
) -> None:
    model = Descriptor((("model", "static-model"),))  # 2/min, hash tag {gateway}
    for _ in range(2):
        assert not (await decider.decide(req(model, rpm("g", 10)))).over
    refused = await decider.decide(req(model, rpm("g", 10)))
    assert refused.over
    assert [s.over for s in refused.statuses] == [True, False]
    level = await redis.hget(window_key("gateway", rpm("g", 10)), "l")
    assert level is not None
    assert float(level) == pytest.approx(2.0, abs=0.01)


async def test_a_redis_restart_costs_no_spurious_error(redis_proc: Proc, decider: Decider) -> None:
    for _ in range(3):  # connections in the pool
        assert not (await decider.decide(req(rpm("restart", 10)))).over
    redis_proc.stop()
    redis_proc.start()
    # The pooled connection is stale now; the decision still succeeds on a fresh one.
    result = await decider.decide(req(rpm("restart", 10)))
    assert not result.over
    assert result.statuses[0].remaining == 9  # Redis lost the window with the restart


async def test_a_limit_of_zero_refuses_everything_and_says_wait_a_full_window(
    decider: Decider,
) -> None:
    result = await decider.decide(req(rpm("zero", 0)))
    assert result.over
    assert result.statuses[0].retry_ms == 60_000
    assert result.statuses[0].remaining == 0
    assert result.response_headers["retry-after"] == "60"


async def test_a_hit_larger_than_the_limit_never_fits(decider: Decider) -> None:
    result = await decider.decide(req(rpm("big", 10), hits=11))
    assert result.over
    assert result.statuses[0].retry_ms == 60_000  # the longest honest answer: a full window
