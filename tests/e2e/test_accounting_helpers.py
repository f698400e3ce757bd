"""Shared helpers of the accounting tests (no tests here): keys with their ids, polling
Postgres and Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway import budgets
from gateway.periods import Period
from tests.gateway_client import Caller, Gateway
from tests.polling import poll
from tests.redisclient import SyncRedis, sync_client

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "say hello to me"}]}
PROMPT_WORDS = 4  # the mock counts words: "say hello to me"


def caller(gw: Gateway, tenant: dict[str, Any] | None = None, **key: Any) -> Caller:
    """A fresh tenant (allow_all unless told otherwise) with one key."""
    return gw.caller(tenant, **key)


def wait_for(
    gw: Gateway, query: str, *args: Any, count: int = 1, timeout_s: float = 10.0
) -> list[asyncpg.Record]:
    """Poll ``query`` until it returns at least ``count`` rows; the rows. Fails (AssertionError)
    when fewer have arrived after ``timeout_s``."""

    def enough() -> tuple[list[asyncpg.Record]] | None:
        try:
            rows = gw.sql(query, *args)
        except (OSError, asyncpg.PostgresError):  # Postgres still starting after a restart
            return None
        return (rows,) if len(rows) >= count else None

    (rows,) = poll(enough, timeout_s, 0.1, what=f"{count} row(s) of {query} {args}")
    return rows


def audit_rows(gw: Gateway, who: Caller, count: int = 1, timeout_s: float = 10.0) -> list[Any]:
    return wait_for(
        gw,
        "SELECT * FROM gateway.audit_log WHERE key_prefix = $1 ORDER BY ts",
        who.prefix,
        count=count,
        timeout_s=timeout_s,
    )


def ledger_rows(gw: Gateway, who: Caller, count: int = 1, timeout_s: float = 10.0) -> list[Any]:
    return wait_for(
        gw,
        "SELECT * FROM gateway.budget_ledger WHERE key_id = $1::uuid ORDER BY occurred_at",
        who.key_id,
        count=count,
        timeout_s=timeout_s,
    )


def redis_client(gw: Gateway) -> SyncRedis:
    return sync_client(gw.stack)


def used(gw: Gateway, who: Caller, period: Period = Period.DAILY) -> int | None:
    """The tenant's live *used* counter for ``period`` (None: not in Redis)."""
    key = budgets.Budget(who.tenant_id, None, period, 0).used_key(datetime.now(UTC))
    value = redis_client(gw).get(key)
    return None if value is None else int(str(value))


until = poll  # the accounting tests' name for the shared poller: fails at its timeout


def accounting_answering(gw: Gateway, timeout_s: float = 10.0) -> None:
    """Wait until authz has seen accounting answer since this call (after a restart: the new
    process, not the old one's last answer); it refuses inference with 503 until then
    (authz/accounting_health.py)."""
    answers = "authz_accounting_checks_total"
    since = gw.metric("authz", answers, answer="serving")

    def answered() -> bool:
        return (
            gw.metric("authz", answers, answer="serving") > since
            and gw.metric("authz", "authz_accounting_up") == 1.0
        )

    poll(answered, timeout_s, what="authz seeing accounting answer")


def reserved_key(who: Caller) -> str:
    """The Redis sorted set of the tenant's live reservations against its daily budget."""
    return budgets.Budget(who.tenant_id, None, Period.DAILY, 0).reserved_key(datetime.now(UTC))


def reservation(gw: Gateway, who: Caller) -> int:
    """The tokens authz reserved for the tenant's one request in flight (Redis)."""
    members = redis_client(gw).zrange(reserved_key(who), 0, -1)
    assert len(members) == 1, members
    return int(str(members[0]).rsplit("|", 1)[1])
