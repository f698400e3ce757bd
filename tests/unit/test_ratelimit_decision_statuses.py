"""The rate-limit decision (ratelimit/decide.py) status by status, against a real Redis with a
controllable clock: what Envoy and the client are told for each descriptor (remaining, when the
window is empty, when to retry, near the limit, shadow over, which quota), the window's Redis
key, the tenant label and the metric's outcome. Expected values are worked out by hand: a limit
of L per P ms drains L/P units per ms, so u units drain in u·P/L ms."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.rls import Descriptor, Limit, RateLimitRequest, Status, Unit
from ratelimit import config
from ratelimit.decide import Decider, Decision, tenant_of, window_key
from ratelimit.windows import Windows
from tests.unit.manualclock import T0, ManualClock

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
        value: key_tpm
        quota: tokens
        descriptors: [{key: tenant_id, descriptors: [{key: key_id}]}]
      - key: model
        value: shadow-model
        rate_limit: {unit: MINUTE, requests_per_unit: 2}
        shadow_mode: true
"""
)
PER_MINUTE = Unit.MINUTE


@pytest.fixture
def decider(redis: aioredis.Redis, clock: ManualClock) -> Decider:
    return Decider(STATIC, Windows(redis, deadline_s=1.0, clock=clock))


def rpm(key: str, limit: Limit | None) -> Descriptor:
    return Descriptor((("limit", "key_rpm"), ("tenant_id", "t1"), ("key_id", key)), limit)


def tpm(key: str, limit: Limit, hits: int) -> Descriptor:
    return Descriptor(
        (("limit", "key_tpm"), ("tenant_id", "t1"), ("key_id", key)), limit, hits_addend=hits
    )


def req(*descriptors: Descriptor, hits: int = 0) -> RateLimitRequest:
    return RateLimitRequest("gateway", descriptors, hits)


@pytest.mark.parametrize(
    ("domain", "entries", "key"),
    [
        (
            "gateway",
            (("limit", "key_rpm"), ("tenant_id", "t1"), ("key_id", "k1")),
            "nz:{t1}:rl:gateway:limit=key_rpm|tenant_id=t1|key_id=k1",
        ),
        # Separators and "/" inside a value are escaped: no two descriptors share a window.
        ("gateway", (("model", "a/b|c=d"),), "nz:{gateway}:rl:gateway:model=a%2Fb%7Cc%3Dd"),
        ("gateway", (("a b", "x y"),), "nz:{gateway}:rl:gateway:a%20b=x%20y"),
        ("my/domain", (("model", "m"),), "nz:{my/domain}:rl:my%2Fdomain:model=m"),
        # An empty tenant id is no tenant: the domain is the hash tag.
        ("gateway", (("tenant_id", ""),), "nz:{gateway}:rl:gateway:tenant_id="),
    ],
)
def test_a_descriptors_window_key_escapes_its_entries(
    domain: str, entries: tuple[tuple[str, str], ...], key: str
) -> None:
    assert window_key(domain, Descriptor(entries)) == key


async def test_each_admitted_request_reports_remaining_reset_and_quota(decider: Decider) -> None:
    ten = Limit(10, PER_MINUTE)
    results = [await decider.decide(req(rpm("k", ten))) for _ in range(4)]
    # After 4 of 10/min: 6 remain, and 4 units drain in 4 x 6 s.
    assert results[3] == Decision(
        over=False,
        statuses=[Status(over=False, limit=ten, remaining=6, reset_ms=24_000, quota="requests")],
        tenant="",
        response_headers={},
        body=b"",
    )
    assert results[3].outcome == "ok"


async def test_near_the_limit_starts_at_eighty_percent(decider: Decider) -> None:
    ten = Limit(10, PER_MINUTE)
    results = [await decider.decide(req(rpm("n", ten))) for _ in range(8)]
    assert [r.statuses[0].near for r in results] == [False] * 7 + [True]
    assert [r.outcome for r in results] == ["ok"] * 7 + ["near_limit"]


async def test_a_hit_as_large_as_the_limit_waits_for_the_window_to_drain_its_overlap(
    decider: Decider,
) -> None:
    ten = Limit(10, PER_MINUTE)
    await decider.decide(req(rpm("eq", ten)))
    refused = await decider.decide(req(rpm("eq", ten), hits=10))
    # 1 + 10 > 10: 1 unit must drain (6 s), not a whole window.
    assert refused.statuses == [
        Status(over=True, limit=ten, remaining=9, reset_ms=6_000, retry_ms=6_000, quota="requests")
    ]
    assert refused.over
    assert refused.outcome == "over_limit"
    assert refused.body == b'{"error": "too many requests"}'


async def test_the_shortest_retry_is_one_millisecond(decider: Decider) -> None:
    thousand = Limit(1000, Unit.SECOND)  # one unit drains per ms
    await decider.decide(req(rpm("fast", thousand), hits=1000))
    refused = await decider.decide(req(rpm("fast", thousand)))
    assert refused.statuses == [
        Status(
            over=True,
            limit=thousand,
            remaining=0,
            reset_ms=1000,
            retry_ms=1,
            near=True,
            quota="requests",
        )
    ]
    assert refused.response_headers["retry-after"] == "1"


async def test_a_limit_of_one_half_drained_says_half_a_window(
    decider: Decider, clock: ManualClock
) -> None:
    one = Limit(1, PER_MINUTE)
    await decider.decide(req(rpm("one", one)))
    clock.now_ms = T0 + 30_000  # half of the one unit has drained
    refused = await decider.decide(req(rpm("one", one)))
    assert refused.statuses == [
        Status(
            over=True,
            limit=one,
            remaining=0,
            reset_ms=30_000,
            retry_ms=30_000,
            quota="requests",
        )
    ]


async def test_a_tokens_check_needs_room_for_one_token(decider: Decider) -> None:
    hundred = Limit(100, PER_MINUTE)
    debit = await decider.decide(req(tpm("t", hundred, 100)))
    assert debit.statuses == [
        Status(over=False, limit=hundred, remaining=0, reset_ms=60_000, near=True, quota="tokens")
    ]
    check = await decider.decide(req(tpm("t", hundred, 0)))
    # 100 + 1 > 100: one token must drain, 600 ms at 100/min.
    assert check.statuses == [
        Status(
            over=True,
            limit=hundred,
            remaining=0,
            reset_ms=60_000,
            retry_ms=600,
            near=True,
            quota="tokens",
        )
    ]
    assert check.over


async def test_an_overshooting_debit_is_reported_over_but_refuses_nothing(
    decider: Decider,
) -> None:
    hundred = Limit(100, PER_MINUTE)
    debit = await decider.decide(req(tpm("o", hundred, 130)))
    assert not debit.over
    assert debit.statuses[0].over
    assert debit.outcome == "near_limit"
    # 130 > 100 on its own: the longest honest answer, a whole window.
    assert debit.statuses[0].retry_ms == 60_000
    assert debit.statuses[0].reset_ms == 78_000  # 130 x 600 ms
    assert debit.body == b""


async def test_a_shadow_limit_reports_over_without_refusing(decider: Decider) -> None:
    shadow = Descriptor((("model", "shadow-model"),))
    results = [await decider.decide(req(shadow)) for _ in range(3)]
    two = Limit(2, PER_MINUTE)
    assert results[2].statuses == [
        Status(
            over=False,
            limit=two,
            remaining=0,
            reset_ms=90_000,
            retry_ms=30_000,
            shadow_over=True,
            near=True,
        )
    ]
    assert not results[2].over
    assert results[2].response_headers == {}
    assert results[2].body == b""


async def test_a_descriptor_without_limit_keeps_its_quota_and_costs_nothing(
    decider: Decider, redis: aioredis.Redis
) -> None:
    result = await decider.decide(req(rpm("free", None), Descriptor((("other", "x"),))))
    assert result.statuses == [Status(over=False, quota="requests"), Status(over=False)]
    assert result == Decision(over=False, statuses=result.statuses)
    assert [k async for k in redis.scan_iter("*")] == []


async def test_a_zero_limit_says_the_window_resets_in_a_full_period(decider: Decider) -> None:
    zero = Limit(0, PER_MINUTE)
    result = await decider.decide(req(rpm("zero", zero)))
    assert result.statuses == [
        Status(
            over=True,
            limit=zero,
            remaining=0,
            reset_ms=60_000,
            retry_ms=60_000,
            near=True,
            quota="requests",
        )
    ]


async def test_the_tenant_and_surface_come_from_whichever_descriptor_names_them(
    decider: Decider,
) -> None:
    one = Limit(1, PER_MINUTE)
    labels = Descriptor((("other", "x"),)), Descriptor((("tenant", "acme"), ("surface", "openai")))
    await decider.decide(req(*labels, rpm("s", one)))
    refused = await decider.decide(req(*labels, rpm("s", one)))
    assert refused.tenant == "acme"
    assert refused.response_headers["retry-after-ms"] == "60000"
    assert b'"code": "rate_limit_exceeded"' in refused.body


@pytest.mark.parametrize(
    ("request_", "tenant"),
    [
        (req(Descriptor((("tenant", "first"),)), Descriptor((("tenant", "second"),))), "first"),
        (req(Descriptor((("model", "m"),)), Descriptor((("tenant", "acme"),))), "acme"),
        (req(Descriptor((("tenant_id", "t1"),))), ""),
        (req(), ""),
    ],
)
def test_the_tenant_label_is_the_first_tenant_entry(
    request_: RateLimitRequest, tenant: str
) -> None:
    assert tenant_of(request_) == tenant


@pytest.mark.parametrize(
    ("decision", "outcome"),
    [
        (
            Decision(over=True, statuses=[Status(over=True, near=True, shadow_over=True)]),
            "over_limit",
        ),
        (
            Decision(
                over=False,
                statuses=[Status(over=False, near=True), Status(over=False, shadow_over=True)],
            ),
            "shadow_over_limit",
        ),
        (
            Decision(over=False, statuses=[Status(over=False), Status(over=False, near=True)]),
            "near_limit",
        ),
        (Decision(over=False, statuses=[Status(over=False), Status(over=False)]), "ok"),
        (Decision(over=False, statuses=[]), "ok"),
    ],
)
def test_the_metrics_outcome_names_the_worst_that_happened(
    decision: Decision, outcome: str
) -> None:
    assert decision.outcome == outcome
