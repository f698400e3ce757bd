"""Hard budgets end to end: authz reserves an upper bound, accounting caps the output to it
and settles to the real count, the ledger rebuilds what Redis lost."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from authz import payload
from authz.request import AuthzRequest
from gateway.periods import Period
from tests.e2e.test_accounting_helpers import CHAT, caller, redis_client, until, used
from tests.gateway_client import Caller, Gateway


def debited(gw: Gateway, who: Caller) -> int:
    rows = gw.sql(
        "SELECT COALESCE(SUM(tokens_in + tokens_out), 0)::bigint AS n"
        " FROM gateway.budget_ledger WHERE tenant_id = $1::uuid",
        who.tenant_id,
    )
    return int(rows[0]["n"])


def settled(gw: Gateway, who: Caller) -> int:
    """Wait until the ledger and the live counter agree; the tokens debited."""
    assert until(lambda: (used(gw, who, Period.TOTAL) or 0) == debited(gw, who), timeout_s=15), (
        used(gw, who, Period.TOTAL),
        debited(gw, who),
    )
    return debited(gw, who)


def smallest_reservation(body: dict[str, Any]) -> int:
    """What authz must reserve at least for ``body``: its prompt estimate and one token."""
    request = AuthzRequest(
        method="POST",
        path="/api/chat",
        headers={"content-type": ["application/json"]},
        body=json.dumps(body).encode(),
    )
    return payload.parse(request, embeddings=False).prompt_estimate + 1


def exhaust(gw: Gateway, who: Caller, body: dict[str, Any]) -> int:
    """Send requests one at a time, each after the last has settled, until one is refused;
    the tokens debited then."""
    for _ in range(200):
        settled(gw, who)
        status = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers).status_code
        if status == 429:
            return settled(gw, who)
        assert status == 200
    raise AssertionError("the budget was never exhausted")


def concurrent_chats(gw: Gateway, who: Caller, body: dict[str, Any], count: int) -> list[int]:
    """``count`` chats of ``who`` sent at once, one thread each: their statuses."""

    def one(_: int) -> int:
        with httpx.Client(timeout=30) as client:
            return client.post(f"{gw.url}/api/chat", json=body, headers=who.headers).status_code

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def test_64_concurrent_streams_never_overshoot_a_small_budget(gw: Gateway) -> None:
    budget = 600
    who = caller(gw, {"budget_total": budget})
    body = {**CHAT, "options": {"num_predict": 20, "mock_frame_delay_ms": 10}}
    statuses = concurrent_chats(gw, who, body, 64)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 2
    total = settled(gw, who)
    assert total <= budget
    # No refusal while headroom remained: with nothing in flight and everything settled,
    # requests are admitted until the budget is spent, and only then refused.
    final = exhaust(gw, who, body)
    assert final <= budget
    # Refused only when not even the prompt and one token fit any more.
    assert budget - final < smallest_reservation(body)


def test_redis_losing_its_counters_does_not_reset_the_budget(gw: Gateway) -> None:
    budget = 200
    who = caller(gw, {"budget_total": budget})
    body = {**CHAT, "stream": False, "options": {"num_predict": 30}}
    spent = exhaust(gw, who, body)  # (the budget's bound is the test above's business)
    assert spent > 0
    # Redis loses this tenant's data (a flush, a failover to an empty replica).
    redis = redis_client(gw)
    for name in redis.scan_iter(match=f"nz:{{{who.tenant_id}}}:*"):
        redis.delete(name)
    assert used(gw, who, Period.TOTAL) is None
    resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
    assert resp.status_code == 429  # rebuilt from the ledger: still spent
    assert used(gw, who, Period.TOTAL) == spent
