"""`neuronetz-gateway migrate`: idempotent, recorded, refuses a changed applied file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from accounting import audit
from accounting.audit import AuditRow
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


def _audit_column_migration(
    stack: Stack, tmp_path: Path, migration: str, written: AuditRow, columns: tuple[str, ...]
) -> tuple[list[str], list[tuple[str, str, str]], list[tuple[Any, ...]], list[str]]:
    """Apply the migrations before ``migration``, a row of yesterday and today's and
    yesterday's partitions, then ``migration``, two days more of partitions and ``written``
    (through accounting's writer) two days ahead: (applied, (partition, column, default) of
    every NOT NULL ``columns`` on every partition, request_id + ``columns`` of every row, the
    names of the partitions the test expects)."""
    url = fresh_database(stack.database_url, "m")
    before = [m for m in migrate.discover() if m.name < migration]
    for each in before:
        (tmp_path / each.name).write_text(each.sql, encoding="utf-8")
    assert asyncio.run(migrate.apply(url, tmp_path)) == [m.name for m in before]
    now = written.ts - timedelta(days=2)  # one clock for the whole test: no midnight between
    old_day = now - timedelta(days=1)

    async def scenario() -> tuple[list[str], list[asyncpg.Record], list[asyncpg.Record]]:
        conn = await asyncpg.connect(url)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
        assert pool is not None
        try:
            await conn.execute(
                "INSERT INTO gateway.audit_log (request_id, ts, method, endpoint, status)"
                " VALUES ('r-old', $1, 'GET', '/api/tags', 200)",
                old_day,
            )
            # Yesterday's and today's partitions exist before the migration; later ones after.
            await auditparts.maintain(conn, retention_days=30, ahead_days=0, now=now)
            applied = await migrate.apply(url)
            await auditparts.maintain(conn, retention_days=30, ahead_days=2, now=now)
            await audit.write(pool, [written])
            found = await conn.fetch(
                "SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid) AS dflt"
                "  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                "  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnotnull"
                "  JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum"
                " WHERE i.inhparent = 'gateway.audit_log'::regclass AND a.attname = ANY($1)"
                " ORDER BY c.relname, a.attname",
                list(columns),
            )
            rows = await conn.fetch(
                "SELECT request_id, to_jsonb(a)::text AS cols, tableoid::regclass::text AS part"
                " FROM gateway.audit_log a ORDER BY request_id"
            )
            return applied, found, rows
        finally:
            await pool.close()
            await conn.close()

    applied, found, rows = asyncio.run(scenario())
    days = [old_day.date() + timedelta(days=n) for n in range(4)]
    partitions = ["audit_log_default", *(auditparts.partition_name(d) for d in days)]
    return (
        applied,
        [(c["relname"], c["attname"], c["dflt"]) for c in found],
        [(r["request_id"], *(json.loads(r["cols"])[c] for c in columns), r["part"]) for r in rows],
        [*sorted(partitions), *(f"gateway.{auditparts.partition_name(d)}" for d in days)],
    )


def test_0004_adds_backend_and_attempts_to_every_audit_partition(
    stack: Stack, tmp_path: Path
) -> None:
    later = datetime.now(UTC) + timedelta(days=2)
    failover = AuditRow(
        "r-failover", later, None, "abcdefghijkl", "POST", "/api/chat", "m", 200, 1, 2, False,
        3.0, 4, 5, "10.0.0.1", "", None, backend="gpu-b", attempts=2,
    )  # fmt: skip
    applied, columns, rows, names = _audit_column_migration(
        stack, tmp_path, "0004", failover, ("attempts", "backend")
    )
    assert applied[0] == "0004_audit_backend.sql"
    partitions, (old_part, _, _, new_part) = names[:5], names[5:]
    assert columns == [
        (part, name, default)
        for part in partitions
        for name, default in (("attempts", "0"), ("backend", "''::text"))
    ]
    assert rows == [("r-failover", 2, "gpu-b", new_part), ("r-old", 0, "", old_part)]


def test_0005_adds_reason_to_every_audit_partition(stack: Stack, tmp_path: Path) -> None:
    later = datetime.now(UTC) + timedelta(days=2)
    refused = AuditRow(
        "r-refused", later, None, "abcdefghijkl", "POST", "/api/chat", "", 403, None, None,
        False, 3.0, 4, 5, "10.0.0.1", "UAEX", "http 403", reason="model_not_allowed",
    )  # fmt: skip
    applied, columns, rows, names = _audit_column_migration(
        stack, tmp_path, "0005", refused, ("reason",)
    )
    assert applied[0] == "0005_audit_reason.sql"
    partitions, (old_part, _, _, new_part) = names[:5], names[5:]
    assert columns == [(part, "reason", "''::text") for part in partitions]
    assert rows == [("r-old", "", old_part), ("r-refused", "model_not_allowed", new_part)]
