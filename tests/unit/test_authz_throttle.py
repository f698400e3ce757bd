"""The throttle map authz keeps from the RLS's announcements, and the announcements themselves:
what is believed, for how long, and the refusal it answers (issue 11 §9)."""

from __future__ import annotations

import json
from typing import Any

from authz.principal import Limits, Principal
from authz.throttle import SLACK_S, Throttles
from gateway.rls import Descriptor, Limit, RateLimitRequest, Status, Unit
from ratelimit.announce import message
from ratelimit.decide import Decision

NO_LIMITS = Limits(None, None, None, None, None, None)
WALL = 1_000_000.0  # seconds since the epoch, for both clocks of the tests


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def principal(key_id: str = "k1", key_rpm: int | None = None, tenant_rpm: int | None = 1) -> Any:
    return Principal(
        key_id=key_id,
        prefix="abcdefghijkl",
        key_hash="",
        active=True,
        expires_at=None,
        scopes=frozenset({"chat"}),
        tenant_id="t1",
        tenant="acme",
        allow_all=True,
        allowed_models=frozenset(),
        allow_cloud=False,
        prompt_log=False,
        key_limits=Limits(key_rpm, None, None, None, None, None),
        tenant_limits=Limits(tenant_rpm, None, None, None, None, None),
        default_max_tokens=1024,
        keep_alive_min_s=60,
        keep_alive_max_s=1800,
    )


def status(name: str, over: bool, rpu: int = 1, retry_ms: int = 30_000, key: str = "k1") -> Any:
    return {
        "limit": name,
        "key_id": key if name.startswith("key_") else "",
        "rpu": rpu,
        "unit_s": 60,
        "over": over,
        "remaining": 0,
        "reset_ms": 60_000,
        "retry_ms": retry_ms if over else 0,
        "quota": "requests",
    }


def announcement(*throttled: tuple[str, int, int], key: str = "k1", late_s: float = 0) -> str:
    statuses = [status("key_rpm", False, key=key), status("tenant_rpm", False)]
    for name, rpu, retry_ms in throttled:
        for s in statuses:
            if s["limit"] == name:
                s.update(over=True, rpu=rpu, retry_ms=retry_ms)
    return json.dumps(
        {
            "v": 1,
            "at_ms": int((WALL - late_s) * 1000),
            "tenant_id": "t1",
            "key_id": key,
            "throttled": [{"limit": n, "rpu": r, "retry_ms": ms} for n, r, ms in throttled],
            "statuses": statuses,
        }
    )


def throttles() -> tuple[Throttles, Clock]:
    clock = Clock()
    return Throttles(clock=clock, wall=lambda: WALL), clock


def test_nothing_heard_refuses_nothing() -> None:
    found, _ = throttles()
    assert found.refusal(principal(), "ollama", {}) is None


def test_a_tenant_refusal_answers_the_rls_429_until_just_before_the_window_has_room() -> None:
    found, clock = throttles()
    found.hear(announcement(("tenant_rpm", 1, 30_000)))
    reply = found.refusal(principal(), "ollama", {"tenant": "acme"})
    assert reply is not None
    assert reply.status == 429
    assert json.loads(reply.body) == {"error": "too many requests"}
    assert reply.headers["retry-after"] == "30"
    assert reply.headers["x-envoy-ratelimited"] == "true"
    # Envoy's form: the tightest limit, then each (the key inherits the tenant's 1/min).
    assert reply.headers["x-ratelimit-limit"] == "1, 1;w=60, 1;w=60"
    assert reply.headers["x-ratelimit-remaining"] == "0"
    assert reply.metadata == {"tenant": "acme"}
    # Another key of the tenant is refused too.
    assert found.refusal(principal(key_id="k2"), "ollama", {}) is not None
    clock.now += 20
    reply = found.refusal(principal(), "openai", {})
    assert reply is not None
    assert reply.headers["retry-after-ms"] == "10000"
    assert reply.headers["retry-after"] == "10"
    assert json.loads(reply.body)["error"]["code"] == "rate_limit_exceeded"
    clock.now += 10 - SLACK_S - 0.001
    assert found.refusal(principal(), "ollama", {}) is not None
    clock.now += 0.002
    assert found.refusal(principal(), "ollama", {}) is None  # the RLS decides again
    assert len(found) == 0  # the expired entry is gone


def test_a_key_refusal_leaves_the_other_keys_of_the_tenant_alone() -> None:
    found, _ = throttles()
    found.hear(announcement(("key_rpm", 2, 5_000)))
    assert found.refusal(principal(key_rpm=2), "ollama", {}) is not None
    assert found.refusal(principal(key_id="k2", key_rpm=2), "ollama", {}) is None


def test_an_announcement_under_another_limit_is_not_believed() -> None:
    found, _ = throttles()
    found.hear(announcement(("tenant_rpm", 1, 30_000)))
    assert found.refusal(principal(tenant_rpm=100), "ollama", {}) is None
    assert found.refusal(principal(tenant_rpm=None), "ollama", {}) is None


def test_the_delivery_time_shortens_the_refusal() -> None:
    found, clock = throttles()
    found.hear(announcement(("tenant_rpm", 1, 1_000), late_s=0.5))
    clock.now += 0.5 - SLACK_S - 0.01
    assert found.refusal(principal(), "ollama", {}) is not None
    clock.now += 0.02
    assert found.refusal(principal(), "ollama", {}) is None
    found.hear(announcement(("tenant_rpm", 1, 1_000), late_s=2.0))  # already over: ignored
    assert len(found) == 0


def test_malformed_or_unknown_announcements_are_ignored() -> None:
    found, _ = throttles()
    for text in ("", "not json", "[]", '{"v": 2}', json.dumps({"v": 1, "throttled": 3})):
        found.hear(text)
    bogus = json.loads(announcement(("tenant_rpm", 1, 30_000)))
    bogus["throttled"][0]["limit"] = "model"
    found.hear(json.dumps(bogus))
    assert len(found) == 0


def test_clear_forgets_everything() -> None:
    found, _ = throttles()
    found.hear(announcement(("tenant_rpm", 1, 30_000)))
    found.clear()
    assert found.refusal(principal(), "ollama", {}) is None


def _decision(over: list[bool], descriptors: list[Descriptor]) -> tuple[RateLimitRequest, Any]:
    limit = Limit(1, Unit.MINUTE)
    statuses = [
        Status(over=o, limit=limit, remaining=0, reset_ms=60_000, retry_ms=30_000 if o else 0)
        for o in over
    ]
    request = RateLimitRequest("gateway", tuple(descriptors))
    return request, Decision(over=any(over), statuses=statuses)


def test_the_rls_announces_only_its_refusals_of_authz_limits() -> None:
    key = Descriptor(
        (("limit", "key_rpm"), ("tenant_id", "t1"), ("key_id", "k1")), Limit(1, Unit.MINUTE)
    )
    tenant = Descriptor((("limit", "tenant_rpm"), ("tenant_id", "t1")), Limit(1, Unit.MINUTE))
    static = Descriptor((("model", "big:latest"),))  # a limits.yaml limit: the RLS's alone
    request, decision = _decision([True, False, False], [key, tenant, static])
    found = message(request, decision, 123)
    assert found is not None
    assert found["throttled"] == [{"limit": "key_rpm", "rpu": 1, "retry_ms": 30_000}]
    assert (found["tenant_id"], found["key_id"], found["at_ms"]) == ("t1", "k1", 123)
    assert [s["limit"] for s in found["statuses"]] == ["key_rpm", "tenant_rpm", ""]
    request, decision = _decision([False, False, True], [key, tenant, static])
    assert message(request, decision, 123) is None
    request, decision = _decision([False, False, False], [key, tenant, static])
    assert message(request, decision, 123) is None
