"""`neuronetz-gateway migrate`: idempotent, recorded, refuses a changed applied file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from devstack.stack import Stack
from gateway import auditparts, migrate
from tests.databases import fresh_database


def test_migrate_command_is_idempotent_and_records_files(stack: Stack) -> None:
    url = fresh_database(stack.database_url, "m")
    env = {**stack.service_env(), "NZ_DATABASE_URL": url}
    cmd = [sys.executable, "-m", "neuronetz_gateway", "migrate"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert "0001_schema.sql" in first.stdout
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert "up to date" in second.stdout

    async def recorded() -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT name FROM gateway.schema_migrations ORDER BY name")
            return [r["name"] for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(recorded()) == [m.name for m in migrate.discover()]


def test_concurrent_migrations_apply_once(stack: Stack) -> None:
    url = fresh_database(stack.database_url, "m")

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(migrate.apply(url), migrate.apply(url)))

    results = asyncio.run(both())
    assert sorted(len(r) for r in results) == [0, len(migrate.discover())]


def test_a_changed_applied_migration_is_refused(stack: Stack, tmp_path: Path) -> None:
    url = fresh_database(stack.database_url, "m")
    for migration in migrate.discover():
        (tmp_path / migration.name).write_text(migration.sql, encoding="utf-8")
    asyncio.run(migrate.apply(url, tmp_path))
    first = sorted(tmp_path.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
        asyncio.run(migrate.apply(url, tmp_path))


def test_status_lists_pending_applied_changed_and_unknown(stack: Stack, tmp_path: Path) -> None:
    url = fresh_database(stack.database_url, "m")
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE public.a (x int);")
    (tmp_path / "0002_b.sql").write_text("CREATE TABLE public.b (x int);")
    states = asyncio.run(migrate.status(url, tmp_path))
    assert [(s.name, s.state, s.applied_at) for s in states] == [
        ("0001_a.sql", "pending", None),
        ("0002_b.sql", "pending", None),
    ]
    assert asyncio.run(migrate.apply(url, tmp_path)) == ["0001_a.sql", "0002_b.sql"]
    (tmp_path / "0002_b.sql").write_text("CREATE TABLE public.b (x bigint);")
    (tmp_path / "0001_a.sql").rename(tmp_path / "0003_c.sql")
    states = asyncio.run(migrate.status(url, tmp_path))
    assert [(s.name, s.state) for s in states] == [
        ("0002_b.sql", "changed"),
        ("0003_c.sql", "pending"),
        ("0001_a.sql", "unknown"),
    ]
    assert all(s.applied_at is not None for s in states if s.state != "pending")


def test_revocation_outbox_marks_the_key_and_notifies(stack: Stack) -> None:
    async def scenario() -> tuple[str, str]:
        conn = await asyncpg.connect(stack.database_url)
        listener = await asyncpg.connect(stack.database_url)
        got: asyncio.Queue[str] = asyncio.Queue()
        try:
            await listener.add_listener("key_revoked", lambda *a: got.put_nowait(a[3]))
            tenant = await conn.fetchval(
                "INSERT INTO gateway.tenants (name) VALUES ($1) RETURNING id", "outbox-test"
            )
            key = await conn.fetchval(
                "INSERT INTO gateway.api_keys (tenant_id, prefix, key_hash)"
                " VALUES ($1, 'abcdefghijkl', '$argon2id$x') RETURNING id",
                tenant,
            )
            await conn.execute(
                "INSERT INTO gateway.revocations (key_id, reason) VALUES ($1, 'leaked')", key
            )
            payload = await asyncio.wait_for(got.get(), 2)
            status = await conn.fetchval("SELECT status FROM gateway.api_keys WHERE id=$1", key)
            return payload, status
        finally:
            await listener.close()
            await conn.close()

    payload, status = asyncio.run(scenario())
    assert payload == "abcdefghijkl"
    assert status == "revoked"


def test_0002_partitions_the_audit_log_and_keeps_its_rows(stack: Stack, tmp_path: Path) -> None:
    url = fresh_database(stack.database_url, "m")
    (first,) = [m for m in migrate.discover() if m.name == "0001_schema.sql"]
    (tmp_path / first.name).write_text(first.sql, encoding="utf-8")
    assert asyncio.run(migrate.apply(url, tmp_path)) == ["0001_schema.sql"]
    stamp = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    tenant = "6d1f8a53-7c7e-4b7b-9f39-3a0e0b6f2f10"
    old_rows = [
        ("r-allowed", stamp, tenant, "abcdefghijkl", "POST", "/api/chat", "m", 200, 4, 7, 12.5),
        (
            "r-denied",
            stamp + timedelta(days=1),
            None,
            None,
            "GET",
            "/api/tags",
            "",
            401,
            None,
            None,
            None,
        ),
    ]

    async def scenario() -> tuple[list[asyncpg.Record], str, list[str], list[str]]:
        conn = await asyncpg.connect(url)
        try:
            await conn.executemany(
                "INSERT INTO gateway.audit_log (request_id, ts, tenant_id, key_prefix, method,"
                " endpoint, model, status, tokens_in, tokens_out, latency_ms)"
                " VALUES ($1, $2, $3::uuid, $4, $5, $6, $7, $8, $9, $10, $11)",
                old_rows,
            )
            applied = await migrate.apply(url)
            rows = await conn.fetch(
                "SELECT request_id, ts, tenant_id::text AS tenant_id, key_prefix, method,"
                " endpoint, model, status, tokens_in, tokens_out, latency_ms, count"
                " FROM gateway.audit_log ORDER BY request_id"
            )
            kind = await conn.fetchval(
                "SELECT relkind::text FROM pg_class WHERE oid = 'gateway.audit_log'::regclass"
            )
            # The partition rule moves the copied rows into their days.
            await auditparts.maintain(conn, retention_days=3650, ahead_days=0)
            parts = await conn.fetch(
                "SELECT tableoid::regclass::text AS part FROM gateway.audit_log ORDER BY request_id"
            )
            return list(rows), kind, applied, [p["part"] for p in parts]
        finally:
            await conn.close()

    rows, kind, applied, parts = asyncio.run(scenario())
    assert "0002_audit_partitions.sql" in applied
    assert kind == "p"  # partitioned
    assert [tuple(r.values()) for r in rows] == [(*row, 1) for row in old_rows]
    assert parts == ["gateway.audit_log_p20260304", "gateway.audit_log_p20260305"]
