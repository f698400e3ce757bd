"""Two complete gateway replicas — each an Envoy with its own authz, ratelimit and accounting —
sharing one Redis Cluster and one PostgreSQL, as pods behind a load balancer do
(docs/SCALING.md).

A key's limits hold exactly however its requests are split between the replicas; a revocation
reaches both within a second; discovery is shared; each request has exactly one audit row;
and when one replica dies mid-stream, the other settles what it left open.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from accounting import inflight
from devstack.stack import Stack
from gateway.periods import Period
from tests.e2e.test_accounting_budgets import smallest_reservation
from tests.e2e.test_accounting_helpers import CHAT, used
from tests.e2e.test_admin import admin_of
from tests.gateway_client import Caller, Gateway, beside, replicas
from tests.polling import poll
from tests.redisclient import sync_client

# The mock's test knobs ride in Ollama's options (a stack that starts no mock of its own must
# be told to let them pass).
INERT = "mock_frame_delay_ms,mock_error_after,mock_omit_counts"
REPLICA: dict[str, Any] = {"extra_env": {"NZ_DISCOVERY_INTERVAL_S": "1", "NZ_INERT_OPTIONS": INERT}}
STREAM = {**CHAT, "stream": True, "options": {"num_predict": 20, "mock_frame_delay_ms": 100}}


@pytest.fixture(scope="module")
def pair(stack: Stack) -> Iterator[tuple[Gateway, Gateway]]:
    """Replica a and replica b on one Redis Cluster (3 masters + 3 replicas, started by a) and
    one PostgreSQL (the session's)."""
    cluster = {"redis_url": None, "redis_cluster": True}
    with replicas(stack, 2, **REPLICA, **cluster) as (a, b):
        probe = a.caller()
        for gw in (a, b):  # each has discovered the models

            def answers(gw: Gateway = gw) -> bool:
                return chat(gw, probe).status_code == 200

            poll(answers, timeout_s=15)
        yield a, b


def chat(gw: Gateway, who: Caller, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/chat", json=body or CHAT, headers=who.headers, timeout=30)


def split(pair: tuple[Gateway, Gateway], who: Caller, body: dict[str, Any], n: int) -> list[int]:
    """``n`` requests at once, every other one to the other replica; their statuses."""

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            start = asyncio.Event()

            async def one(i: int) -> int:
                await start.wait()
                url = pair[i % 2].url
                resp = await client.post(f"{url}/api/chat", json=body, headers=who.headers)
                await resp.aread()
                return resp.status_code

            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            await asyncio.sleep(0.05)
            start.set()
            return await asyncio.gather(*tasks)

    return asyncio.run(run())


def test_requests_per_minute_hold_exactly_across_replicas(pair: tuple[Gateway, Gateway]) -> None:
    a, _ = pair
    who = a.caller({"requests_per_minute": 10})
    statuses = split(pair, who, CHAT, 64)
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 54, statuses


def test_concurrency_holds_exactly_across_replicas(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    who = a.caller({"max_concurrent": 10})
    # Each admitted stream lasts 2 s: every request arrives while the first ten hold their slots.
    statuses = split(pair, who, STREAM, 64)
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 54, statuses
    # Released by whichever replica's accounting saw each stream end: both take new ones.
    assert poll(lambda: chat(a, who).status_code == 200, timeout_s=5)
    assert chat(b, who).status_code == 200


def test_tokens_per_minute_hold_across_replicas(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    who = a.caller({"tokens_per_minute": 20})
    body = {**CHAT, "stream": False, "options": {"num_predict": 30}}
    resp = chat(a, who, body)
    assert resp.status_code == 200
    spent = resp.json()["prompt_eval_count"] + resp.json()["eval_count"]
    assert spent > 20
    # a's accounting debits the window at the RLS; b's RLS reads the same window.

    def refused() -> httpx.Response | None:
        resp = chat(b, who)
        return resp if resp.status_code == 429 else None

    over = poll(refused, timeout_s=5)
    assert int(over.headers["retry-after"]) >= 1
    assert chat(a, who).status_code == 429


def test_a_hard_budget_is_never_overshot_across_replicas(pair: tuple[Gateway, Gateway]) -> None:
    a, _ = pair
    budget = 600
    who = a.caller({"budget_total": budget})
    body = {**CHAT, "options": {"num_predict": 20, "mock_frame_delay_ms": 10}}
    statuses = split(pair, who, body, 64)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 2
    admitted = statuses.count(200)

    def ledger() -> int | None:
        """The tokens debited once every admitted request has its ledger row."""
        (row,) = a.sql(
            "SELECT count(*) AS n, COALESCE(SUM(tokens_in + tokens_out), 0)::bigint AS t"
            " FROM gateway.budget_ledger WHERE tenant_id = $1::uuid",
            who.tenant_id,
        )
        return int(row["t"]) if row["n"] == admitted else None

    # One ledger row per admitted request, whichever replica admitted it; the live counter
    # agrees with the ledger, and the total stays within the budget.
    total = poll(ledger, timeout_s=15)
    assert poll(lambda: used(a, who, Period.TOTAL) == total, timeout_s=15)
    assert total <= budget
    assert budget - total < smallest_reservation(body) * admitted


def test_revocation_and_disabling_reach_both_replicas_within_a_second(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    with admin_of(a) as admin:
        revoked, disabled = a.caller(), a.caller()
        for gw in pair:  # cached by both replicas
            assert chat(gw, revoked).status_code == 200
            assert chat(gw, disabled).status_code == 200
        start = time.monotonic()
        admin.call("RevokeKey", {"key": revoked.key_id, "reason": "leaked"})
        admin.call("DisableTenant", {"tenant": disabled.tenant, "reason": "unpaid"})
        for gw in pair:
            for who in (revoked, disabled):

                def refused(gw: Gateway = gw, who: Caller = who) -> bool:
                    return chat(gw, who).status_code == 401

                poll(refused, timeout_s=2, interval_s=0.01)
        elapsed = time.monotonic() - start
        assert elapsed <= 1.0, f"took {elapsed:.3f} s"
        assert chat(b, revoked).status_code == 401
        assert chat(a, disabled).status_code == 401


def test_discovery_is_shared(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    who = a.caller({"allow_cloud": True})
    hosted = httpx.get(f"{a.stack.ollama_urls[0]}/_mock/info", timeout=5).json()["models"]
    for gw in pair:
        tags = httpx.get(f"{gw.url}/api/tags", headers=who.headers, timeout=5)
        assert tags.status_code == 200
        assert sorted(m["name"] for m in tags.json()["models"]) == sorted(hosted)
    # One list in Redis for the backend, written by whichever replica read it last.
    assert sync_client(a.stack).exists(f"nz:discovery:{a.stack.ollama_urls[0]}") == 1
    assert b.stack.ollama_urls == a.stack.ollama_urls


def test_every_request_has_exactly_one_audit_and_ledger_row(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    who = a.caller()
    ids: dict[str, str] = {}
    for i in range(20):
        gw = pair[i % 2]
        resp = chat(gw, who)
        assert resp.status_code == 200
        ids[resp.headers["x-request-id"]] = "a" if gw is a else "b"

    def rows(table: str, column: str) -> dict[str, int] | None:
        """Rows per request id, once all 20 requests have theirs."""
        found = a.sql(
            f"SELECT request_id, count(*) AS n FROM gateway.{table}"  # noqa: S608 (constants)
            f" WHERE {column} = $1 GROUP BY request_id",
            who.prefix if column == "key_prefix" else who.key_id,
        )
        return {r["request_id"]: r["n"] for r in found} if len(found) == 20 else None

    assert poll(lambda: rows("audit_log", "key_prefix")) == dict.fromkeys(ids, 1)
    assert poll(lambda: rows("budget_ledger", "key_id::text")) == dict.fromkeys(ids, 1)
    assert sorted(ids.values()) == ["a"] * 10 + ["b"] * 10
    assert b.url != a.url


def _kill(stack: Stack) -> None:
    """A node dies: every process of the replica (Envoy and its services) killed at once."""
    for name, proc in stack.procs.items():
        if proc.popen is not None and proc.running:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(10)
        assert not proc.running, name


def test_a_dead_replica_s_streams_are_settled_by_the_other(
    stack: Stack, pair: tuple[Gateway, Gateway]
) -> None:
    a, _ = pair
    who = a.caller({"max_concurrent": 8, "budget_daily": 1_000_000})
    with beside(a.stack, **REPLICA) as doomed:
        instance = doomed.stack.service_env()["NZ_INSTANCE"]
        started: list[str] = []
        lock = threading.Lock()

        def stream() -> None:
            # The client sees its stream cut when the replica dies.
            try:
                with httpx.stream(
                    "POST", f"{doomed.url}/api/chat", json=STREAM, headers=who.headers, timeout=30
                ) as resp:
                    assert resp.status_code == 200
                    with lock:
                        started.append(resp.headers["x-request-id"])
                    for _ in resp.iter_lines():
                        pass
            except httpx.HTTPError:
                return

        with ThreadPoolExecutor(max_workers=6) as threads:
            for _ in range(6):
                threads.submit(stream)
            redis = sync_client(a.stack)
            snapshot = inflight.key(instance)
            poll(lambda: len(started) == 6 and redis.hlen(snapshot) == 6, timeout_s=10)
            _kill(doomed.stack)
            # The other replica serves on, every request, while it adopts the dead one's.
            served: list[int] = []
            deadline = time.monotonic() + inflight.ADOPT_AFTER_S + 3
            while time.monotonic() < deadline:
                served.append(chat(a, who).status_code)
            assert set(served) == {200}, served

    def audit() -> list[Any] | None:
        found = a.sql(
            "SELECT request_id, count(*) AS n, bool_and(tokens_estimated) AS est,"
            " min(error) AS error FROM gateway.audit_log WHERE request_id = ANY($1::text[])"
            " GROUP BY request_id",
            started,
        )
        return found if len(found) == 6 else None

    rows = poll(audit, timeout_s=20)
    assert {r["request_id"]: r["n"] for r in rows} == dict.fromkeys(started, 1)
    assert {(r["est"], r["error"]) for r in rows} == {(True, inflight.ADOPTED)}
    ledger = a.sql(
        "SELECT request_id FROM gateway.budget_ledger WHERE request_id = ANY($1::text[])", started
    )
    assert sorted(r["request_id"] for r in ledger) == sorted(started)
    # Its slots came back without waiting for their lease: the tenant's set holds none of them.
    slots = sync_client(a.stack).zrange(f"nz:{{{who.tenant_id}}}:cs:t", 0, -1)
    assert not set(slots) & set(started)
    assert redis.exists(snapshot) == 0
