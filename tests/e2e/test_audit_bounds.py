"""What a request can make the audit log store (issue 11 §3, §11): bounded rows, unauthenticated
denials in aggregate, day partitions dropped after the retention, the status a gRPC-shaped
denial really had."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from devstack.stack import Stack
from gateway import migrate
from tests.databases import fresh_database
from tests.e2e.test_accounting_helpers import CHAT, audit_rows, caller, until
from tests.gateway_client import Gateway

MAX_PATH = 64  # accounting/audit.py MAX_PATH_CHARS, as docs/ACCOUNTING.md states it
LONG_PATH = "/api/" + "a" * (59 * 1024)  # under Envoy's 60 KiB of request headers
WRONG_KEY = "nz_abcdefghijkl_" + "A" * 43  # well-formed: Envoy passes it on to authz


def fresh_address() -> str:
    """A loopback source address no other test uses: its audit rows are this test's alone."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def client(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def denial_rows(gw: Gateway, address: str) -> list[Any]:
    return gw.sql(
        "SELECT *, pg_column_size(a.*) AS size FROM gateway.audit_log a"
        " WHERE client_ip = $1 AND tenant_id IS NULL ORDER BY ts, endpoint",
        address,
    )


def total(rows: list[Any]) -> int:
    return sum(r["count"] for r in rows)


def test_a_401_with_a_60_kib_path_stores_a_small_row(gw: Gateway) -> None:
    address = fresh_address()
    with client(address) as c:
        resp = c.get(f"{gw.url}{LONG_PATH}", headers={"authorization": f"Bearer {WRONG_KEY}"})
    assert resp.status_code == 401
    rows = until(lambda: denial_rows(gw, address))
    assert [(r["endpoint"], r["status"], r["count"]) for r in rows] == [("other", 401, 1)]
    assert rows[0]["size"] < 512  # the whole row, in bytes


def test_an_authenticated_request_stores_its_path_clipped(gw: Gateway) -> None:
    who = caller(gw)
    resp = httpx.get(f"{gw.url}{LONG_PATH}", headers=who.headers)
    assert resp.status_code == 403
    (row,) = audit_rows(gw, who)
    assert row["endpoint"] == LONG_PATH[: MAX_PATH - 1] + "…"
    assert len(row["endpoint"]) == MAX_PATH
    assert (row["status"], row["count"]) == (403, 1)


def test_200_unauthenticated_denials_from_one_address_make_one_row_per_minute(
    gw: Gateway,
) -> None:
    address = fresh_address()
    keys = [None, WRONG_KEY]

    def one(i: int) -> int:
        headers = {"authorization": f"Bearer {keys[i % 2]}"} if keys[i % 2] else {}
        with client(address) as c:
            return c.post(f"{gw.url}/api/chat", json=CHAT, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [401] * 200
    deadline = time.monotonic() + 15
    rows = denial_rows(gw, address)
    while total(rows) < 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = denial_rows(gw, address)
    assert total(rows) == 200
    # One row per minute of arrival (the burst may straddle a minute boundary).
    assert 1 <= len(rows) <= 2
    assert {(r["endpoint"], r["status"], r["method"]) for r in rows} == {("/api/chat", 401, "POST")}
    assert all(r["request_id"].startswith("denials:") for r in rows)
    time.sleep(1)  # nothing more lands later
    assert total(denial_rows(gw, address)) == 200


def test_a_grpc_content_type_denial_is_audited_with_its_real_status(gw: Gateway) -> None:
    """Envoy answers a request that says `content-type: application/grpc` in gRPC's shape
    (HTTP 200, the status in `grpc-status`) and logs 200; the audit row has authz's status."""
    address = fresh_address()
    grpc = {"content-type": "application/grpc"}
    with client(address) as c:
        resp = c.post(
            f"{gw.url}/api/chat",
            content=b"x",
            headers={**grpc, "authorization": f"Bearer {WRONG_KEY}"},
        )
    assert (resp.status_code, resp.headers.get("grpc-status")) == (200, "16")
    rows = until(lambda: denial_rows(gw, address))
    assert [(r["status"], r["count"]) for r in rows] == [(401, 1)]

    who = caller(gw)
    resp = httpx.post(f"{gw.url}/api/pull", content=b"x", headers={**grpc, **who.headers})
    assert (resp.status_code, resp.headers.get("grpc-status")) == (200, "7")
    (row,) = audit_rows(gw, who)
    assert (row["status"], row["endpoint"]) == (403, "/api/pull")


def test_envoys_own_401_in_grpc_shape_is_audited_as_401(gw: Gateway) -> None:
    """No key at all: Envoy answers the 401 itself (envoy.yaml), in gRPC's shape too."""
    address = fresh_address()
    with client(address) as c:
        resp = c.post(
            f"{gw.url}/api/chat", content=b"x", headers={"content-type": "application/grpc"}
        )
    assert (resp.status_code, resp.headers.get("grpc-status")) == (200, "16")
    rows = until(lambda: denial_rows(gw, address))
    assert [(r["status"], r["endpoint"], r["count"]) for r in rows] == [(401, "/api/chat", 1)]


def test_accounting_keeps_todays_partition_and_rows_land_in_it(gw: Gateway) -> None:
    today = datetime.now(UTC).date()
    # Today and the next two days (three ahead from the last run, even just after midnight).
    names = [f"audit_log_p{today + timedelta(days=n):%Y%m%d}" for n in range(3)]

    def present() -> bool:
        rows = gw.sql(
            "SELECT relname FROM pg_class WHERE relname = ANY($1::text[])"
            " AND relnamespace = 'gateway'::regnamespace",
            names,
        )
        return len(rows) == len(names)

    assert until(present), "accounting did not create today's and the next days' partitions"
    who = caller(gw)
    body = {**CHAT, "stream": False, "options": {"num_predict": 1}}
    assert httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers).status_code == 200
    audit_rows(gw, who)
    (row,) = gw.sql(
        "SELECT tableoid::regclass::text AS part FROM gateway.audit_log WHERE key_prefix = $1",
        who.prefix,
    )
    assert row["part"] in {f"gateway.{name}" for name in names}


# -- retention (the CLI against a database of its own) -----------------------------------


def _retention(stack: Stack, url: str, *args: str, days: int | None = None) -> list[str]:
    env = {**stack.service_env(), "NZ_DATABASE_URL": url}
    if days is not None:
        env["NZ_AUDIT_RETENTION_DAYS"] = str(days)
    done = subprocess.run(
        [sys.executable, "-m", "neuronetz_gateway", "audit", "retention", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def _sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def _insert(url: str, request_id: str, ts: datetime) -> None:
    _sql(
        url,
        "INSERT INTO gateway.audit_log (request_id, ts, method, endpoint, status)"
        " VALUES ($1, $2, 'POST', '/api/chat', 200)",
        request_id,
        ts,
    )


def _where(url: str) -> dict[str, str]:
    rows = _sql(url, "SELECT request_id, tableoid::regclass::text AS part FROM gateway.audit_log")
    return {r["request_id"]: r["part"].removeprefix("gateway.") for r in rows}


def _parts(url: str) -> set[str]:
    rows = _sql(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'gateway.audit_log'::regclass",
    )
    return {r["relname"] for r in rows}


def test_retention_drops_old_day_partitions_with_their_rows_and_keeps_newer(
    stack: Stack,
) -> None:
    url = fresh_database(stack.database_url, "ab")
    asyncio.run(migrate.apply(url))
    now = datetime.now(UTC)
    today = now.date()

    def day(n: int) -> str:
        return f"audit_log_p{today - timedelta(days=n):%Y%m%d}"

    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    _insert(url, "old", noon - timedelta(days=10))
    _insert(url, "recent", noon - timedelta(days=2))
    _insert(url, "ancient", noon - timedelta(days=400))
    assert set(_where(url).values()) == {"audit_log_default"}  # no day partition yet

    first = _retention(stack, url, "--retention-days", "30")
    ahead = [f"created {day(-n)}" for n in range(4)]
    assert first == [
        f"created {day(10)}",
        f"created {day(2)}",
        *ahead,
        "moved 2 rows from audit_log_default into their days",
        "deleted 1 rows older than 30 days from audit_log_default",
    ]
    assert _where(url) == {"old": day(10), "recent": day(2)}
    assert _retention(stack, url, days=30) == [
        "nothing to do: partitions up to date, retention 30 days"
    ]

    assert _retention(stack, url, days=5) == [f"dropped {day(10)}"]
    assert _where(url) == {"recent": day(2)}
    assert _parts(url) == {"audit_log_default", day(2), *(day(-n) for n in range(4))}
    # A row still lands for any time: a day without a partition goes to the DEFAULT one.
    _insert(url, "future", noon + timedelta(days=30))
    assert _where(url)["future"] == "audit_log_default"
