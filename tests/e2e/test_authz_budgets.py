"""Budget pre-check and reservation, concurrency slots, deny mode, Redis down — through
Envoy, with the real accounting settling what authz reserved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from authz import payload
from authz.request import AuthzRequest
from gateway import budgets
from gateway.periods import Period
from tests.e2e.test_accounting_helpers import accounting_answering
from tests.e2e.test_authz_support import CHAT, caller, chat, poll, rds
from tests.gateway_client import Caller, Gateway
from tests.redisclient import async_client

TOO_MANY = {"error": "too many requests"}


def ledger(gw: Gateway, who: Caller, tokens: int, *, key: bool = False, when: Any = None) -> None:
    gw.sql(
        "INSERT INTO gateway.budget_ledger (request_id, tenant_id, key_id, tokens_in, tokens_out,"
        " occurred_at) VALUES ($1, $2::uuid, $3::uuid, $4, 0, COALESCE($5, now()))",
        f"test-{uuid.uuid4()}",
        who.tenant_id,
        who.key_id if key else None,
        tokens,
        when,
    )


def forget_counters(gw: Gateway, who: Caller) -> None:
    """Lose the tenant's live counters, as a Redis flush would."""
    client = rds(gw)
    names = list(client.scan_iter(match=f"nz:{{{who.tenant_id}}}:bu:*"))
    if names:
        client.delete(*names)


def remaining(resp: httpx.Response) -> int:
    return int(resp.headers["x-budget-tokens-remaining"])


@dataclass
class Held:
    resp: httpx.Response
    lines: Iterator[str]

    @property
    def status_code(self) -> int:
        return self.resp.status_code


@contextlib.contextmanager
def held_stream(gw: Gateway, who: Caller, frames: int = 10) -> Iterator[Held]:
    """A streamed chat kept open (slow frames) until the block ends; closed early after."""
    body = {**CHAT, "options": {"num_predict": frames, "mock_frame_delay_ms": 300}}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{gw.url}/api/chat", json=body, headers=who.headers) as resp,
    ):
        lines = resp.iter_lines()
        if resp.status_code == 200:
            next(lines)
        yield Held(resp, lines)


def test_every_response_carries_the_budget_headers(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 100_000})
    answers = [
        chat(gw, who),
        httpx.get(f"{gw.url}/api/tags", headers=who.headers),
        httpx.get(f"{gw.url}/v1/models", headers=who.headers),
        httpx.get(f"{gw.url}/api/version", headers=who.headers),
        httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={**CHAT, "max_tokens": 3},
            headers=who.headers,
        ),
    ]
    for resp in answers:
        assert resp.status_code == 200, resp.request.url
        assert resp.headers["x-budget-period"] == "daily"
        assert 0 < remaining(resp) <= 100_000


def test_the_binding_period_is_the_one_with_least_left(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 100_000, "budget_monthly": 5_000}, budget_total=3_000)
    resp = chat(gw, who)
    assert resp.headers["x-budget-period"] == "total"
    assert remaining(resp) == 3_000


def next_utc_reset(period: Period, now: datetime) -> datetime | None:
    """The rule, stated here and not taken from gateway.periods: a daily budget starts again at
    the next 00:00 UTC, a monthly one at 00:00 UTC on the first of the next month (January
    after December), the total budget never."""
    if period is Period.DAILY:
        return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    if period is Period.MONTHLY:
        if now.month == 12:
            return datetime(now.year + 1, 1, 1, tzinfo=UTC)
        return datetime(now.year, now.month + 1, 1, tzinfo=UTC)
    return None


@pytest.mark.parametrize("period", [Period.DAILY, Period.MONTHLY, Period.TOTAL])
def test_an_exhausted_period_is_429_with_retry_after_until_its_utc_reset(
    gw: Gateway, period: Period
) -> None:
    who = caller(gw, {f"budget_{period}": 1_000})
    ledger(gw, who, 1_000)  # the live counter is built from the ledger on first use
    before = datetime.now(UTC)
    resp = chat(gw, who)
    after = datetime.now(UTC)
    assert resp.status_code == 429
    assert resp.json() == TOO_MANY
    assert resp.headers["x-budget-period"] == str(period)
    assert remaining(resp) == 0
    reset = next_utc_reset(period, before)
    if reset is None:
        assert "retry-after" not in resp.headers
        return
    if next_utc_reset(period, after) != reset:
        pytest.skip("the request straddled a reset")
    # authz read its clock between ``before`` and ``after`` and rounds the wait up.
    latest = math.ceil((reset - before).total_seconds())
    earliest = math.floor((reset - after).total_seconds())
    assert earliest <= int(resp.headers["retry-after"]) <= latest


def test_the_openai_client_raises_its_rate_limit_error(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 10})
    ledger(gw, who, 10)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=who.key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "x"}]
        )
    assert raised.value.response.headers["x-budget-period"] == "daily"
    assert raised.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]


def test_yesterdays_use_does_not_count_today(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 1_000, "budget_monthly": 1_000_000})
    start_of_today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    ledger(gw, who, 1_000, when=start_of_today - timedelta(seconds=1))
    resp = chat(gw, who)
    assert resp.status_code == 200
    assert resp.headers["x-budget-period"] == "daily"
    assert remaining(resp) == 1_000


def test_a_key_budget_binds_the_key_not_its_siblings(gw: Gateway) -> None:
    who = caller(gw, budget_daily=500)
    sibling = gw.key(who.tenant_id).full_key
    ledger(gw, who, 500, key=True)
    assert chat(gw, who).status_code == 429
    assert chat(gw, sibling).status_code == 200


def test_lost_counters_are_rebuilt_from_the_ledger(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 1_000})
    assert chat(gw, who).status_code == 200  # the live counter exists from now on
    ledger(gw, who, 1_000)  # written behind Redis' back: the live counter does not know
    assert chat(gw, who).status_code == 200
    forget_counters(gw, who)
    resp = chat(gw, who)
    assert resp.status_code == 429
    assert resp.headers["x-budget-period"] == "daily"


def test_a_reservation_counts_until_accounting_settles_it(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 1_000})
    client = rds(gw)
    budget = budgets.Budget(who.tenant_id, None, Period.DAILY, 1_000)
    with held_stream(gw, who, frames=5) as first:
        assert first.status_code == 200
        assert remaining(first.resp) == 1_000
        records = list(client.scan_iter(match=f"nz:{{{who.tenant_id}}}:rsv:*"))
        assert len(records) == 1
        member = json.loads(client.get(records[0]) or "{}")["m"]
        reserved = int(member.rsplit("|", 1)[1])
        assert reserved >= 4 + 5  # an upper bound of the prompt (4 words) and output (5)
        second = chat(gw, who)  # 4 + 2 tokens, settled by accounting
        assert remaining(second) == 1_000 - reserved
        for line in first.lines:
            if line and json.loads(line).get("done"):
                break
    # Settled: the real counts (4 + 5, and 4 + 2) replace the reservations.
    now = datetime.now(UTC)
    poll(lambda: client.get(budget.used_key(now)) == str(9 + 6), timeout_s=5)
    assert client.zcard(budget.reserved_key(now)) == 0
    assert remaining(chat(gw, who)) == 1_000 - 15


def test_settle_is_idempotent_and_a_missing_reservation_is_a_no_op(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 1_000})
    client = rds(gw)
    request_id = f"test-{uuid.uuid4()}"
    used_key = budgets.Budget(who.tenant_id, None, Period.DAILY, 1_000).used_key(datetime.now(UTC))
    reserved_key = budgets.Budget(who.tenant_id, None, Period.DAILY, 1_000).reserved_key(
        datetime.now(UTC)
    )
    client.set(used_key, 100)
    client.zadd(reserved_key, {f"{request_id}|50": time.time() + 60})
    client.set(reserved_key + ":sum", 50)
    client.set(
        budgets.reservation_key(who.tenant_id, request_id),
        json.dumps({"m": f"{request_id}|50", "p": [[used_key, reserved_key]]}),
    )
    assert remaining(chat(gw, who)) == 1_000 - 100 - 50
    # That probe's own reservation settles (accounting) before ours is settled below.
    poll(lambda: client.zcard(reserved_key) == 1, timeout_s=5)

    async def settle_twice() -> None:
        conn = async_client(gw.stack)
        try:
            await budgets.settle(conn, who.tenant_id, request_id, 7)
            await budgets.settle(conn, who.tenant_id, request_id, 7)
            await budgets.settle(conn, who.tenant_id, "never-reserved", 7)
        finally:
            await conn.aclose()

    asyncio.run(settle_twice())
    assert client.zcard(reserved_key) == 0
    assert int(client.get(reserved_key + ":sum") or 0) == 0
    assert int(client.get(used_key) or 0) >= 107  # (+ the settled probe above, if already)
    assert int(client.get(used_key) or 0) < 107 + 50


def test_an_oversized_ask_runs_under_what_the_budget_has_left(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 200})
    resp = chat(gw, who, options={"num_predict": 100_000})
    assert resp.status_code == 200
    seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests").json()
    mine = [
        r
        for r in seen
        if r["path"] == "/api/chat" and r["headers"].get("x-nz-tenant") == who.tenant
    ]
    assert mine
    assert mine[-1]["body"]["options"]["num_predict"] < 200


def test_concurrency_over_the_limit_is_429_and_a_finished_stream_frees_its_slot(
    gw: Gateway,
) -> None:
    who = caller(gw, {"max_concurrent": 2})
    with held_stream(gw, who) as one, held_stream(gw, who) as two:
        assert (one.status_code, two.status_code) == (200, 200)
        third = chat(gw, who)
        assert third.status_code == 429
        assert third.json() == TOO_MANY
        assert third.headers["retry-after"] == "1"
    # Both streams were cut short by the client: accounting releases their slots.
    poll(lambda: chat(gw, who).status_code == 200, timeout_s=5, interval_s=0.1)


def test_a_key_limit_binds_below_the_tenant(gw: Gateway) -> None:
    who = caller(gw, {"max_concurrent": 10}, max_concurrent=1)
    sibling = gw.key(who.tenant_id).full_key
    with held_stream(gw, who) as one:
        assert one.status_code == 200
        assert chat(gw, who).status_code == 429
        assert chat(gw, sibling).status_code == 200


def test_a_lost_release_heals_when_its_lease_runs_out(gw: Gateway) -> None:
    who = caller(gw, {"max_concurrent": 1})
    client = rds(gw)
    slots_key = f"nz:{{{who.tenant_id}}}:cs:t"
    client.zadd(slots_key, {"ghost-live": time.time() + 60})
    assert chat(gw, who).status_code == 429
    client.zadd(slots_key, {"ghost-live": time.time() - 1})  # its lease ran out
    assert chat(gw, who).status_code == 200


def test_deny_mode_answers_503_for_every_request(gw: Gateway) -> None:
    who = caller(gw)
    client = rds(gw)
    client.set("nz:deny_mode", "test", ex=30)
    try:
        for resp in (
            chat(gw, who),
            httpx.get(f"{gw.url}/api/tags", headers=who.headers),
            # A well-formed wrong key (no key at all is Envoy's 401, before authz).
            chat(gw, "nz_aaaaaaaaaaaa_" + "A" * 43),
            httpx.post(f"{gw.url}/api/pull", json=CHAT, headers=who.headers),
        ):
            assert resp.status_code == 503
            assert resp.json() == {"error": "service unavailable"}
    finally:
        client.delete("nz:deny_mode")
    assert chat(gw, who).status_code == 200


def test_redis_down_is_503_never_200(gw: Gateway) -> None:
    warm = caller(gw)
    assert chat(gw, warm).status_code == 200

    async def burst() -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=48)) as client:
            body = {**CHAT, "stream": False, "options": {"num_predict": 1}}
            await asyncio.gather(
                *(
                    client.post(f"{gw.url}/api/chat", json=body, headers=warm.headers)
                    for _ in range(48)
                )
            )

    asyncio.run(burst())  # authz's Redis pool holds many connections now
    cold = caller(gw)
    redis_proc = gw.managed("redis")
    redis_proc.stop()
    try:
        for who in (warm, cold):
            resp = chat(gw, who)
            assert resp.status_code == 503
            assert resp.json() == {"error": "service unavailable"}
            resp = httpx.get(f"{gw.url}/api/tags", headers=who.headers)
            assert resp.status_code == 503
    finally:
        redis_proc.start()
    # Accounting's readiness may have seen Redis down too: authz refuses inference (503,
    # accounting_down) until it has seen accounting answer again. Not what this test is about.
    accounting_answering(gw)
    poll(lambda: chat(gw, cold).status_code == 200, timeout_s=10, interval_s=0.2)
    # Every pooled connection from before the restart is stale: authz retries on a fresh one
    # instead of answering 503 (the RLS and accounting have their own pools).
    before = gw.metric("authz", "authz_decisions_total", status="503")

    asyncio.run(burst())
    assert gw.metric("authz", "authz_decisions_total", status="503") == before


def test_rate_limit_overrides_reach_the_rls(gw: Gateway) -> None:
    inherited = caller(gw, {"requests_per_minute": 2})  # the key inherits the tenant's 2/min
    own = caller(gw, requests_per_minute=2)  # the key's own 2/min, tenant unlimited
    for who in (inherited, own):
        assert [chat(gw, who).status_code for _ in range(3)] == [200, 200, 429]


def test_a_reservation_never_settled_stops_counting_when_it_expires(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 1_000})
    client = rds(gw)
    reserved_key = budgets.Budget(who.tenant_id, None, Period.DAILY, 1_000).reserved_key(
        datetime.now(UTC)
    )
    client.zadd(reserved_key, {"lost-request|300": time.time() + 0.5})
    client.set(reserved_key + ":sum", 300)
    assert remaining(chat(gw, who)) == 700
    time.sleep(0.6)  # the lease of the lost reservation runs out
    # Only the probes' own use (settled, or still reserved) counts now, not the lost 300.
    assert remaining(chat(gw, who)) > 1_000 - 100


@pytest.mark.parametrize(("headroom", "status"), [(1, 200), (0, 429)])
def test_admitted_while_the_prompt_and_one_token_fit(
    gw: Gateway, headroom: int, status: int
) -> None:
    body = {**CHAT, "stream": False, "options": {"num_predict": 50}}
    request = AuthzRequest(
        "POST", "/api/chat", {"content-type": ["application/json"]}, json.dumps(body).encode()
    )
    prompt = payload.parse(request, embeddings=False).prompt_estimate
    who = caller(gw, {"budget_total": 1_000})
    ledger(gw, who, 1_000 - prompt - headroom)
    resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
    assert resp.status_code == status
    assert remaining(resp) == prompt + headroom
    if status == 200:
        # It runs under what is left: one output token, whatever it asked for.
        seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests").json()
        mine = [r for r in seen if r["headers"].get("x-nz-tenant") == who.tenant]
        assert mine[-1]["body"]["options"]["num_predict"] == 1
