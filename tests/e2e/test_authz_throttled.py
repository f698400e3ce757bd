"""A key the RLS is refusing costs no more than a header check (issue 11 §9).

The RLS announces its refusals of a key's or tenant's requests/min and tokens/min; authz
answers that key's next requests with the same 429 before it reads their bodies, and stops
as soon as the window has room (or the limit changed). Through Envoy's listener, with the
real RLS, Redis and authz; counters read from the services' Prometheus endpoints.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from authz.admin import keystore
from gateway import throttlemap
from tests.e2e.test_ratelimit import CHAT, OPENAI_CHAT
from tests.gateway_client import Gateway
from tests.redisclient import kill_subscribers, subscribers, sync_client

# Just under Envoy's and authz's 1 MiB body limit: the most a client can make authz parse.
BIG = "x" * 1_000_000
# What a client reads from a rate-limit refusal (the RLS's and Envoy's), besides the body.
REFUSAL_HEADERS = {
    "retry-after",
    "content-type",
    "x-envoy-ratelimited",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
}
OPENAI_HEADERS = REFUSAL_HEADERS | {
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(gw: Gateway, key: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/chat", json=body or CHAT, headers=bearer(key), timeout=10)


def openai_chat(gw: Gateway, key: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/chat/completions", json=body or OPENAI_CHAT, headers=bearer(key), timeout=10
    )


def big(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "messages": [{"role": "user", "content": BIG}]}


def parsed(gw: Gateway) -> float:
    return gw.metric("authz", "authz_bodies_parsed_total")


def throttled(gw: Gateway, tenant: str) -> float:
    return gw.metric("authz", "authz_throttled_total", tenant=tenant)


def rls_refusals(gw: Gateway, tenant: str) -> float:
    return gw.metric("ratelimit", "ratelimit_decisions_total", outcome="over_limit", tenant=tenant)


def until_authz_refuses(gw: Gateway, key: str, tenant: str, deadline_s: float = 3.0) -> None:
    """Small requests until authz answers one itself (the RLS's announcement has arrived)."""
    before = throttled(gw, tenant)
    end = time.monotonic() + deadline_s
    while throttled(gw, tenant) == before:
        assert time.monotonic() < end, "authz never heard the RLS's refusal"
        assert chat(gw, key).status_code == 429
        time.sleep(0.02)


def test_a_throttled_key_is_refused_before_its_body_is_read(gw: Gateway) -> None:
    tenant_id, tenant = gw.tenant(allow_all=True, requests_per_minute=1)
    key = gw.key(tenant_id).full_key
    other = gw.caller()  # another tenant, no rate limit
    assert chat(gw, key).status_code == 200
    by_rls = chat(gw, key)
    assert by_rls.status_code == 429
    assert by_rls.headers["x-envoy-ratelimited"] == "true"
    until_authz_refuses(gw, key, tenant)

    bodies, refused = parsed(gw), throttled(gw, tenant)
    served = 0
    for _ in range(5):
        resp = chat(gw, key, big(CHAT))
        assert resp.status_code == 429
        assert resp.json() == {"error": "too many requests"}
        assert set(resp.headers) >= REFUSAL_HEADERS, set(resp.headers)
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["x-envoy-ratelimited"] == "true"
        # What the RLS and Envoy said: limit 1 per 60 s for the key and its tenant, none left,
        # the next request fits within the minute.
        assert resp.headers["x-ratelimit-limit"] == by_rls.headers["x-ratelimit-limit"]
        assert resp.headers["x-ratelimit-limit"] == "1, 1;w=60, 1;w=60"
        assert resp.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(resp.headers["retry-after"]) <= int(by_rls.headers["retry-after"])
        assert 0 <= int(resp.headers["x-ratelimit-reset"]) <= 60
        # Meanwhile another tenant's key is served, its body parsed once.
        assert chat(gw, other.key).status_code == 200
        served += 1
    resp = openai_chat(gw, key, big(OPENAI_CHAT))
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert set(resp.headers) >= OPENAI_HEADERS, set(resp.headers)
    assert resp.headers["x-ratelimit-limit-requests"] == "1"
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    retry_ms = int(resp.headers["retry-after-ms"])
    assert 0 < retry_ms <= 60_000
    assert resp.headers["retry-after"] == str(-(-retry_ms // 1000))

    # Not one of the six megabyte bodies was parsed; the other tenant's five were.
    assert parsed(gw) - bodies == served
    assert throttled(gw, tenant) - refused == 6


def test_the_refusals_end_when_the_window_has_room(gw: Gateway) -> None:
    # 30/min: one request drains every 2 s.
    tenant_id, tenant = gw.tenant(allow_all=True, requests_per_minute=30)
    key = gw.key(tenant_id).full_key
    for _ in range(40):  # 30 fit, and one more for each 2 s the burst takes
        first = openai_chat(gw, key)
        if first.status_code != 200:
            break
    assert first.status_code == 429, first.text
    told_s = int(first.headers["retry-after-ms"]) / 1000
    refused_at = time.monotonic()
    until_authz_refuses(gw, key, tenant)
    # authz's refusal says the same: the window has room again when the RLS said.
    resp = openai_chat(gw, key)
    assert resp.status_code == 429
    left_s = int(resp.headers["retry-after-ms"]) / 1000
    elapsed = time.monotonic() - refused_at
    assert told_s - elapsed - 0.5 <= left_s <= told_s - elapsed + 0.05
    time.sleep(max(0.0, told_s - (time.monotonic() - refused_at)) + 0.05)
    assert openai_chat(gw, key).status_code == 200  # authz stopped refusing; the RLS admits


def test_a_raised_limit_is_not_refused_on_an_old_announcement(gw: Gateway) -> None:
    tenant_id, tenant = gw.tenant(allow_all=True)
    created = gw.key(tenant_id, requests_per_minute=1)
    key = created.full_key
    assert chat(gw, key).status_code == 200
    assert chat(gw, key).status_code == 429
    until_authz_refuses(gw, key, tenant)
    gw._db(lambda c: keystore.update_key(c, created.key_id, {"requests_per_minute": 100}))
    # Once authz reads the new limit (key_changed), the announcement made under 1/min no
    # longer applies: the RLS decides, and under 100/min it admits.
    deadline = time.monotonic() + 5
    while (resp := chat(gw, key)).status_code != 200:
        assert resp.status_code == 429
        assert time.monotonic() < deadline, "a raised limit was still refused"
        time.sleep(0.05)


def test_listings_of_a_throttled_key_are_still_answered(gw: Gateway) -> None:
    # authz answers listings itself; the RLS never limited them, so neither does authz.
    tenant_id, tenant = gw.tenant(allow_all=True, requests_per_minute=1)
    key = gw.key(tenant_id).full_key
    assert chat(gw, key).status_code == 200
    until_authz_refuses(gw, key, tenant)
    resp = httpx.get(f"{gw.url}/api/tags", headers=bearer(key), timeout=10)
    assert resp.status_code == 200
    assert resp.json()["models"]


def test_a_dropped_subscription_forgets_and_the_rls_refuses_until_it_announces_again(
    gw: Gateway,
) -> None:
    tenant_id, tenant = gw.tenant(allow_all=True, requests_per_minute=1)
    key = gw.key(tenant_id).full_key
    assert chat(gw, key).status_code == 200
    until_authz_refuses(gw, key, tenant)
    r = sync_client(gw.stack)
    assert kill_subscribers(r) >= 1  # authz's subscription, cut by the server
    deadline = time.monotonic() + 5
    while subscribers(r, throttlemap.CHANNEL) < 1:
        assert time.monotonic() < deadline, "authz did not subscribe again"
        time.sleep(0.02)
    # Back, but it forgot what it heard before: the RLS refuses (and announces again).
    refused, rls = throttled(gw, tenant), rls_refusals(gw, tenant)
    assert chat(gw, key).status_code == 429
    assert throttled(gw, tenant) == refused
    assert rls_refusals(gw, tenant) == rls + 1
    until_authz_refuses(gw, key, tenant)
