"""Two worker processes per service on one port (NZ_WORKERS=2, gateway/workers.py): the
gateway behaves as with one — limits exact, revocation everywhere within a second, every
request audited with its counts — and each service's metrics are one endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from devstack.stack import SERVICES, Stack
from tests.e2e.test_accounting_helpers import CHAT, audit_rows, caller
from tests.gateway_client import Gateway, beside

SMALL = {**CHAT, "stream": False, "options": {"num_predict": 2}}


@pytest.fixture(scope="module")
def two(stack: Stack) -> Iterator[Gateway]:
    """The session's Postgres, Redis and mock with their own Envoy and services, each
    service as two workers."""
    with beside(
        stack,
        extra_env={**stack.config.extra_env, "NZ_WORKERS": "2"},
    ) as running:
        yield running


def burst(gw: Gateway, headers: dict[str, str], n: int) -> list[int]:
    """``n`` concurrent chats on separate connections (so both workers get some)."""

    async def run() -> list[int]:
        async def one() -> int:
            async with httpx.AsyncClient(timeout=30) as client:
                resp = await client.post(f"{gw.url}/api/chat", json=SMALL, headers=headers)
                return resp.status_code

        return list(await asyncio.gather(*(one() for _ in range(n))))

    return asyncio.run(run())


def test_each_service_runs_two_workers(two: Gateway) -> None:
    for name in SERVICES:
        proc = two.stack.procs[name]
        assert proc.popen is not None
        workers = psutil.Process(proc.popen.pid).children(recursive=True)
        assert len([w for w in workers if "neuronetz_gateway" in " ".join(w.cmdline())]) == 2, name


def test_limits_hold_exactly_across_workers(two: Gateway) -> None:
    who = caller(two, {"requests_per_minute": 10})
    statuses = burst(two, who.headers, 30)
    assert sorted(statuses) == [200] * 10 + [429] * 20


def test_every_request_is_audited_with_its_counts(two: Gateway) -> None:
    who = caller(two)
    decided = two.metric("authz", "authz_decisions_total")
    assert burst(two, who.headers, 16) == [200] * 16
    rows = audit_rows(two, who, count=16)
    assert len(rows) == 16
    assert [(r["tokens_out"], r["tokens_estimated"]) for r in rows] == [(2, False)] * 16
    # One metrics endpoint per service, counting both workers' decisions.
    assert two.metric("authz", "authz_decisions_total") == decided + 16


def test_revocation_reaches_every_worker_within_a_second(two: Gateway) -> None:
    who = caller(two)
    assert burst(two, who.headers, 8) == [200] * 8  # cached by both workers
    two.sql(
        "INSERT INTO gateway.revocations (key_id, reason) VALUES ($1::uuid, 'test')", who.key_id
    )
    time.sleep(1.0)
    assert burst(two, who.headers, 8) == [401] * 8
