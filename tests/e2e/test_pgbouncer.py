"""PostgreSQL behind Debian's PgBouncer in transaction pooling mode (docs/PLATFORM.md,
"PostgreSQL behind PgBouncer"): a stack whose services reach PostgreSQL through PgBouncer
(``NZ_DATABASE_POOLER=transaction``) and their sessions of their own (authz's LISTEN, migrate's
advisory lock) directly (``NZ_DATABASE_DIRECT_URL``). PgBouncer really is in the path, the
default asyncpg settings really fail there, and PgBouncer down is PostgreSQL down."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from authz.revocations import APPLICATION_NAME
from devstack.pgbouncer import DEFAULT_POOL_SIZE, PgBouncer
from devstack.stack import Stack
from gateway.periods import Period
from gateway.settings import Settings
from gateway.storage import pg_pool
from tests.databases import fresh_database
from tests.e2e.test_accounting_budgets import (
    concurrent_chats,
    exhaust,
    settled,
    smallest_reservation,
)
from tests.e2e.test_accounting_helpers import (
    CHAT,
    PROMPT_WORDS,
    audit_rows,
    caller,
    ledger_rows,
    until,
    used,
)
from tests.e2e.test_admin import Grpcurl, admin_of
from tests.gateway_client import Gateway, beside
from tests.polling import poll

UNAVAILABLE = {"error": "service unavailable"}


@pytest.fixture(scope="module")
def pooled(stack: Stack) -> Iterator[Gateway]:
    """A stack of its own PgBouncer (transaction mode) in front of the session's PostgreSQL."""
    with beside(stack, pgbouncer=True, pooler_url=None) as gw:
        yield gw


@pytest.fixture(scope="module")
def bouncer(pooled: Gateway) -> PgBouncer:
    assert pooled.stack.pgbouncer is not None
    return pooled.stack.pgbouncer


@pytest.fixture(scope="module")
def admin(pooled: Gateway) -> Iterator[Grpcurl]:
    with admin_of(pooled) as client:
        yield client


def chat(gw: Gateway, key: str, **extra: Any) -> httpx.Response:
    body = {**CHAT, "stream": False, **extra}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{gw.url}/api/chat", json=body, headers=headers, timeout=30)


def transactions(bouncer: PgBouncer) -> int:
    """PgBouncer's count of transactions it carried to the gateway database."""
    (row,) = [r for r in bouncer.show("STATS") if r["database"] == "gateway"]
    return int(row["total_xact_count"])


def settings_for(bouncer: PgBouncer, pooler: str) -> Settings:
    return Settings(
        database_url=bouncer.url, database_direct_url=bouncer.server_url, database_pooler=pooler
    )


def many_queries(cfg: Settings) -> list[int]:
    """400 parameterised queries at once through the services' own pool (gateway.storage)."""

    async def run() -> list[int]:
        pool = await pg_pool(cfg, min_size=2 * DEFAULT_POOL_SIZE, max_size=2 * DEFAULT_POOL_SIZE)

        async def one(i: int) -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT $1::int + 1", i))

        try:
            return list(await asyncio.gather(*(one(i) for i in range(400))))
        finally:
            await pool.close()

    return asyncio.run(run())


# -- the pooler is in the path, and its settings are what make it work ---------------------


def test_the_services_reach_postgres_through_pgbouncer_in_transaction_mode(
    pooled: Gateway, bouncer: PgBouncer
) -> None:
    env = pooled.stack.procs["authz"].env or {}  # as the services run
    assert env["NZ_DATABASE_URL"] == bouncer.url != pooled.stack.database_url
    assert env["NZ_DATABASE_DIRECT_URL"] == pooled.stack.database_url
    assert env["NZ_DATABASE_POOLER"] == "transaction"
    (pool,) = [p for p in bouncer.show("POOLS") if p["database"] == "gateway"]
    assert pool["pool_mode"] == "transaction"

    before = transactions(bouncer)
    who = pooled.caller()  # a key authz has never seen: it reads it from PostgreSQL
    assert chat(pooled, who.key).status_code == 200
    audit_rows(pooled, who)  # written by accounting, through PgBouncer too
    ledger_rows(pooled, who)
    # The key's lookup, the ledger row and the audit row at least (PgBouncer counts a
    # statement outside a transaction block as one transaction).
    assert transactions(bouncer) - before >= 3
    # No more server connections than PgBouncer's pool, however many clients.
    servers = [s for s in bouncer.show("SERVERS") if s["database"] == "gateway"]
    assert 1 <= len(servers) <= DEFAULT_POOL_SIZE


def test_the_default_statement_cache_fails_behind_pgbouncer_and_the_pooler_setting_works(
    bouncer: PgBouncer,
) -> None:
    # Without NZ_DATABASE_POOLER: asyncpg's named prepared statements (its statement cache)
    # land on whichever server connection PgBouncer picks next: PgBouncer 1.18's known error.
    with pytest.raises(
        (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)
    ) as failed:
        many_queries(settings_for(bouncer, ""))
    assert "prepared statement" in str(failed.value)
    assert "__asyncpg_stmt_" in str(failed.value)
    # The setting the stack's services run with: every answer right.
    assert many_queries(settings_for(bouncer, "transaction")) == [i + 1 for i in range(400)]


def test_revocations_are_heard_on_a_direct_connection_within_a_second(
    pooled: Gateway, bouncer: PgBouncer
) -> None:
    # LISTEN is a session's: authz's listener is PostgreSQL's client, never PgBouncer's.
    clients = bouncer.show("CLIENTS")
    assert [c for c in clients if c["application_name"] == APPLICATION_NAME] == []
    listeners = pooled.sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1",
        APPLICATION_NAME,
    )
    assert listeners[0]["n"] >= 1
    who = pooled.caller()
    for _ in range(3):
        assert chat(pooled, who.key).status_code == 200  # cached in process and in Redis
    start = time.monotonic()
    pooled.sql(
        "INSERT INTO gateway.revocations (key_id, reason) VALUES ($1::uuid, 'pgbouncer')",
        who.key_id,
    )
    poll(lambda: chat(pooled, who.key).status_code == 401, timeout_s=2.0, interval_s=0.01)
    elapsed = time.monotonic() - start
    assert elapsed <= 1.0, f"revocation took {elapsed:.3f}s"


# -- what a user sees, through PgBouncer ----------------------------------------------------


def test_admin_api_chat_audit_ledger_usage_and_revocation(pooled: Gateway, admin: Grpcurl) -> None:
    name = f"pgb-{time.monotonic_ns() % 10**9}"
    tenant = admin.call("CreateTenant", {"name": name, "allow_all": True})
    assert tenant["status"] == "TENANT_STATUS_ACTIVE"
    created = admin.call("CreateKey", {"tenant": name, "name": "pooled"})
    full_key, key = created["fullKey"], created["key"]

    resp = chat(pooled, full_key, options={"num_predict": 5})
    assert resp.status_code == 200, resp.text
    final = resp.json()
    assert (final["prompt_eval_count"], final["eval_count"]) == (PROMPT_WORDS, 5)

    (row,) = pooled.sql(
        "SELECT id FROM gateway.api_keys WHERE prefix = $1", key["prefix"]
    )  # the key's id as PostgreSQL has it
    (audit,) = until(
        lambda: pooled.sql(
            "SELECT status, endpoint, model, tokens_in, tokens_out, tokens_estimated"
            " FROM gateway.audit_log WHERE key_prefix = $1",
            key["prefix"],
        ),
        what="the audit row",
    )
    assert dict(audit) == {
        "status": 200,
        "endpoint": "/api/chat",
        "model": "llama3.2:latest",
        "tokens_in": PROMPT_WORDS,
        "tokens_out": 5,
        "tokens_estimated": False,
    }
    (ledger,) = until(
        lambda: pooled.sql(
            "SELECT tokens_in, tokens_out FROM gateway.budget_ledger WHERE key_id = $1",
            row["id"],
        ),
        what="the ledger row",
    )
    assert (ledger["tokens_in"], ledger["tokens_out"]) == (PROMPT_WORDS, 5)

    listed = admin.call("ListKeys", {"tenant": name})
    assert [k["prefix"] for k in listed["keys"]] == [key["prefix"]]

    def usage() -> dict[str, Any] | None:
        report = admin.call("GetUsage", {"key": key["id"]})
        total = int(report.get("total", {}).get("tokensTotal", 0))
        return report if total == PROMPT_WORDS + 5 else None

    report = until(
        usage,
        timeout_s=5.0,
        interval_s=0.2,
        what="GetUsage counting the request",
    )
    assert (int(report["total"]["tokensIn"]), int(report["total"]["tokensOut"])) == (
        PROMPT_WORDS,
        5,
    )

    admin.call("RevokeKey", {"key": key["prefix"], "reason": "behind pgbouncer"})
    started = time.monotonic()
    poll(lambda: chat(pooled, full_key).status_code == 401, timeout_s=1.0, interval_s=0.01)
    assert time.monotonic() - started <= 1.5  # the last request itself may take a moment


def test_a_hard_budget_holds_exactly_under_concurrency(pooled: Gateway) -> None:
    budget = 600
    who = caller(pooled, {"budget_total": budget})
    body = {**CHAT, "options": {"num_predict": 20}}
    statuses = concurrent_chats(pooled, who, body, 32)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 2
    total = settled(pooled, who)  # the ledger (through PgBouncer) and Redis agree
    assert total <= budget
    final = exhaust(pooled, who, body)
    assert budget - smallest_reservation(body) < final <= budget
    assert used(pooled, who, Period.TOTAL) == final
    (ledgered,) = pooled.sql(
        "SELECT count(*) AS n FROM gateway.budget_ledger WHERE tenant_id = $1::uuid",
        who.tenant_id,
    )

    def audited() -> int:
        (row,) = pooled.sql(
            "SELECT count(*) AS n FROM gateway.audit_log WHERE key_prefix = $1 AND status = 200",
            who.prefix,
        )
        return int(row["n"])

    # One ledger row per admitted request (the audit rows follow Envoy's access log)
    until(lambda: audited() == ledgered["n"], what="an audit row per ledger row")
    time.sleep(0.5)
    assert audited() == ledgered["n"]


# -- migrations -------------------------------------------------------------------------------


def migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neuronetz_gateway", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_migrations_run_on_the_direct_url_idempotently(pooled: Gateway, bouncer: PgBouncer) -> None:
    direct = fresh_database(pooled.stack.database_url, "pgb")
    # PgBouncer forwards every database name (``*``): the same database through it
    pooled_url = f"{bouncer.url.rsplit('/', 1)[0]}/{direct.rsplit('/', 1)[1]}"
    env = {
        **pooled.stack.service_env(),
        "NZ_DATABASE_URL": pooled_url,
        "NZ_DATABASE_DIRECT_URL": direct,
        "NZ_DATABASE_POOLER": "transaction",
    }
    first = migrate(env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: 0001_")
    again = migrate(env)
    assert (again.returncode, again.stdout.strip()) == (0, "applied: nothing (up to date)")

    async def locks() -> int:
        conn = await asyncpg.connect(direct)
        try:
            return int(
                await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            )
        finally:
            await conn.close()

    assert asyncio.run(locks()) == 0  # the session's lock went with its session
    # A transaction pooler without the direct URL: refused at start, named.
    refused = migrate({**env, "NZ_DATABASE_DIRECT_URL": ""})
    assert refused.returncode == 2
    assert "NZ_DATABASE_POOLER: a transaction pooler needs NZ_DATABASE_DIRECT_URL" in (
        refused.stderr
    )


# -- PgBouncer down is PostgreSQL down --------------------------------------------------------


def test_pgbouncer_down_cached_keys_work_unknown_keys_get_503_then_recover(
    pooled: Gateway, bouncer: PgBouncer
) -> None:
    cached = pooled.caller()
    assert chat(pooled, cached.key).status_code == 200
    unknown = pooled.caller()  # valid, but never seen by authz
    bouncer.stop()
    try:
        for _ in range(3):
            assert chat(pooled, cached.key).status_code == 200
        resp = chat(pooled, unknown.key)
        assert resp.status_code == 503
        assert resp.json() == UNAVAILABLE
    finally:
        bouncer.start()
    poll(lambda: chat(pooled, unknown.key).status_code == 200, timeout_s=15.0, interval_s=0.2)
    # The requests of the outage were buffered and written once PgBouncer was back.
    rows = audit_rows(pooled, cached, count=4, timeout_s=15.0)
    assert [r["status"] for r in rows] == [200, 200, 200, 200]
