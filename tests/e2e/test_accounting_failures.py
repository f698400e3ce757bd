"""Accounting when parts fail: Postgres down (rows buffered, then written), a full buffer
(deny mode), accounting down (fail closed), accounting restarted (nothing lost or doubled)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from accounting import ledger
from accounting.ledger import LedgerRow
from gateway.signals import DENY_MODE_KEY
from tests.e2e.test_accounting_helpers import (
    CHAT,
    accounting_answering,
    audit_rows,
    caller,
    ledger_rows,
    redis_client,
    reservation,
    until,
    used,
)
from tests.gateway_client import Caller, Gateway

SMALL = {**CHAT, "stream": False, "options": {"num_predict": 2}}


def chat(gw: Gateway, who: Caller) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/chat", json=SMALL, headers=who.headers, timeout=10)


@contextmanager
def stopped(gw: Gateway, name: str) -> Iterator[None]:
    proc = gw.managed(name)
    if proc.name == "postgres" and proc.popen is not None:
        # SIGINT is Postgres' fast shutdown (SIGTERM waits for every client to leave).
        os.killpg(proc.popen.pid, signal.SIGINT)
        proc.popen.wait(10)
    proc.stop()
    try:
        yield
    finally:
        if not proc.running:
            proc.start(60)
        if name == "accounting":
            accounting_answering(gw)


@contextmanager
def accounting_env(gw: Gateway, **env: str) -> Iterator[None]:
    """Restart accounting with extra settings; restore the original process afterwards."""
    proc = gw.stack.procs["accounting"]
    assert proc.env is not None
    original = dict(proc.env)
    proc.stop()
    proc.env.update(env)
    proc.start()
    accounting_answering(gw)
    try:
        yield
    finally:
        proc.stop()
        proc.env = original
        proc.start()
        accounting_answering(gw)


def test_postgres_down_rows_are_buffered_and_written_when_it_returns(gw: Gateway) -> None:
    who = caller(gw)
    assert chat(gw, who).status_code == 200  # the key is now cached by authz
    audit_rows(gw, who)
    with stopped(gw, "postgres"):
        statuses = [chat(gw, who).status_code for _ in range(10)]
        assert statuses == [200] * 10
        time.sleep(0.5)  # the writers are failing and retrying now
    rows = audit_rows(gw, who, count=11, timeout_s=20)
    assert len(rows) == 11
    assert len({r["request_id"] for r in rows}) == 11
    assert all((r["tokens_in"], r["tokens_out"]) == (4, 2) for r in rows)
    assert len(ledger_rows(gw, who, count=11, timeout_s=20)) == 11


def test_full_buffer_switches_to_deny_mode_until_drained(gw: Gateway) -> None:
    redis = redis_client(gw)
    with accounting_env(gw, NZ_AUDIT_BUFFER_ROWS="4", NZ_AUDIT_OVERFLOW_ROWS="200"):
        who = caller(gw)
        assert chat(gw, who).status_code == 200
        audit_rows(gw, who)
        allowed = 1
        with stopped(gw, "postgres"):
            deadline = time.monotonic() + 15
            status = 200
            while status == 200 and time.monotonic() < deadline:
                status = chat(gw, who).status_code
                allowed += status == 200
                time.sleep(0.05)
            assert status == 503, "a full audit buffer must stop traffic"
            assert redis.exists(DENY_MODE_KEY)
            assert allowed >= 4  # not before the buffer was full
        # Postgres is back: the buffer drains, deny mode ends, traffic flows again.
        assert until(lambda: not redis.exists(DENY_MODE_KEY), timeout_s=20)
        assert until(lambda: chat(gw, who).status_code == 200, timeout_s=10)
        rows = audit_rows(gw, who, count=allowed + 2, timeout_s=20)
        statuses = [r["status"] for r in rows]
        assert statuses.count(200) >= allowed + 1  # every allowed request was audited
        assert 503 in statuses  # and so were the refusals
    assert not redis.exists(DENY_MODE_KEY)


def test_accounting_down_fails_closed(gw: Gateway) -> None:
    who = caller(gw)
    body = {**CHAT, "options": {"num_predict": 3}}
    refusals = gw.metric("authz", "authz_decisions_total", status="503")
    with stopped(gw, "accounting"):
        gone = time.monotonic()
        # Within a second authz sees accounting gone and refuses (503) itself; until then
        # Envoy fails the request (its ext_proc stream cannot open): never a 200.
        while gw.metric("authz", "authz_decisions_total", status="503") == refusals:
            assert time.monotonic() - gone < 1.0, "authz did not refuse within a second"
            try:
                resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
                assert resp.status_code == 503
            except httpx.HTTPError:
                pass  # Envoy cut the reply it had begun: no 200, nothing delivered
            time.sleep(0.05)
        resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
        assert resp.status_code == 503
        assert resp.json() == {"error": "service unavailable"}
        oa = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={**CHAT, "max_tokens": 3, "stream": True},  # no Ollama `options` on /v1: 400
            headers=who.headers,
        )
        assert oa.status_code == 503
        assert oa.json()["error"]["code"] == "service_unavailable"
        # Denials of the filters before accounting do not depend on it.
        assert httpx.post(f"{gw.url}/api/chat", json=body).status_code == 401
        # Routes without anything to account do not depend on accounting.
        version = httpx.get(f"{gw.url}/api/version", headers=who.headers)
        assert version.status_code == 200
    assert chat(gw, who).status_code == 200
    # Nothing admitted around the outage holds a slot longer than a lease (15 s).
    slots = f"nz:{{{who.tenant_id}}}:cs:t"
    assert until(lambda: redis_client(gw).zcard(slots) == 0, timeout_s=20)


def test_accounting_restart_loses_and_doubles_nothing(gw: Gateway) -> None:
    who = caller(gw)
    for _ in range(20):
        assert chat(gw, who).status_code == 200
    time.sleep(0.3)  # Envoy's access-log buffer flushes every 100 ms
    proc = gw.stack.procs["accounting"]
    proc.stop()  # SIGTERM: accounting writes what it holds before it exits
    proc.start()
    accounting_answering(gw)
    for _ in range(5):
        assert chat(gw, who).status_code == 200
    rows = audit_rows(gw, who, count=25, timeout_s=15)
    assert len(rows) == 25 and len({r["request_id"] for r in rows}) == 25
    assert len(ledger_rows(gw, who, count=25, timeout_s=15)) == 25


def test_a_row_postgres_refuses_does_not_block_its_batch(gw: Gateway) -> None:
    who = caller(gw)
    now = datetime.now(UTC)

    def row(request_id: str, tenant_id: str) -> LedgerRow:
        return LedgerRow(request_id, now, tenant_id, None, "m", 1, 2, False)

    good = f"good-{who.key_id}"
    batch = [row(good, who.tenant_id), row(f"bad-{who.key_id}", str(uuid.uuid4()))]

    async def write() -> None:
        pool = await asyncpg.create_pool(gw.stack.database_url, min_size=1, max_size=1)
        assert pool is not None
        try:
            await ledger.write(pool, batch)  # the second row's tenant does not exist
            await ledger.write(pool, batch)  # written twice: still one row
        finally:
            await pool.close()

    asyncio.run(write())
    rows = gw.sql(
        "SELECT request_id FROM gateway.budget_ledger WHERE tenant_id = $1::uuid", who.tenant_id
    )
    assert [r["request_id"] for r in rows] == [good]


def test_accounting_restart_during_a_postgres_outage_loses_nothing(
    gw: Gateway, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    with accounting_env(gw, NZ_ACCOUNTING_SPOOL_DIR=str(spool)):
        who = caller(gw)
        assert chat(gw, who).status_code == 200
        audit_rows(gw, who)
        accounting = gw.stack.procs["accounting"]
        with stopped(gw, "postgres"):
            for _ in range(5):
                assert chat(gw, who).status_code == 200
            time.sleep(0.3)  # the access-log entries reach accounting
            accounting.stop()  # Postgres is down: the rows go to the spool
            assert (spool / "audit_log.jsonl").exists()
            assert (spool / "budget_ledger.jsonl").exists()
            accounting.start()  # and come back from it
            accounting_answering(gw)
            assert not (spool / "audit_log.jsonl").exists()
        rows = audit_rows(gw, who, count=6, timeout_s=20)
        assert len(rows) == 6 and len({r["request_id"] for r in rows}) == 6
        assert len(ledger_rows(gw, who, count=6, timeout_s=20)) == 6


def test_accounting_dying_mid_stream_cuts_the_stream_and_settles_it_when_back(
    gw: Gateway,
) -> None:
    """A stream whose accounting dies is cut (nothing more is delivered unaccounted). The next
    accounting settles it from its reservation — the most it could have cost — and gives its
    slot back at once, not after a lease."""
    who = caller(gw, {"budget_daily": 1_000_000, "max_concurrent": 1})
    body = {**CHAT, "options": {"num_predict": 60, "mock_frame_delay_ms": 50}}
    proc = gw.managed("accounting")
    frames: list[str] = []
    reserved = 0
    try:
        with (
            pytest.raises(httpx.HTTPError),
            httpx.stream("POST", f"{gw.url}/api/chat", json=body, headers=who.headers) as resp,
        ):
            assert resp.status_code == 200
            for line in resp.iter_lines():
                frames.append(line)
                if len(frames) == 3:
                    reserved = reservation(gw, who)
                    time.sleep(0.7)  # accounting's in-flight snapshot (every 0.5 s) has it
                    assert proc.popen is not None
                    os.killpg(proc.popen.pid, signal.SIGKILL)  # a crash, not a graceful stop
    finally:
        proc.stop()
        proc.start()
        accounting_answering(gw)
    assert 3 <= len(frames) < 60
    assert '"done":true' not in "".join(frames)  # the rest was never delivered unaccounted
    (ledger,) = ledger_rows(gw, who)
    assert ledger["estimated"] is True
    assert ledger["tokens_in"] + ledger["tokens_out"] == reserved
    assert until(lambda: used(gw, who) == reserved)
    assert chat(gw, who).status_code == 200  # max_concurrent 1: the slot is free again
