"""The budget store (gateway/budgets.py) is the one owner of the Redis budget layout: its Lua
scripts are files with a header (gateway/lua/), the ledger's sum and the reading of *used* and
*reserved* are defined once, and what the admin API reads (``budgets.read``) is what admission
enforces — checked against a real Redis (no stack: the ledger is never needed, every *used*
counter exists)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from authz.admission import Admitter, Outcome
from authz.principal import Limits, Principal
from gateway import budgets, leases
from gateway.budgets import Budget
from gateway.leases import Leases
from gateway.periods import Period

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("authz", "accounting", "ratelimit", "gateway", "devstack")
NO_LIMITS = Limits(None, None, None, None, None, None)


def _python_files() -> list[Path]:
    return [p for top in SOURCES for p in sorted((ROOT / top).rglob("*.py"))]


def test_the_budget_scripts_are_lua_files_with_a_header() -> None:
    scripts = sorted(p.name for p in (ROOT / "gateway" / "lua").glob("*.lua"))
    assert scripts == ["admit.lua", "renew.lua", "settle.lua"]
    for name in scripts:
        text = (ROOT / "gateway" / "lua" / name).read_text(encoding="utf-8")
        head = text.split("\nlocal ", 1)[0]
        assert all(line.startswith("--") for line in head.splitlines()), name
        for word in ("KEYS[", "ARGV[", "Returns"):
            assert word in head, f"{name}: the header names no {word}"


def test_no_python_module_of_the_gateway_package_carries_lua() -> None:
    inline = [p for p in (ROOT / "gateway").rglob("*.py") if "redis.call(" in p.read_text()]
    assert inline == []
    assert "redis.call(" not in (ROOT / "authz" / "admission.py").read_text()


def test_the_ledger_sum_and_the_reserved_total_have_one_owner() -> None:
    """The budget ledger is summed, and ``<reserved>:sum`` read, by gateway/budgets.py only
    (the Lua scripts write it)."""
    ledger_sum = re.compile(r"sum\(\s*tokens_in\s*\+\s*tokens_out\s*\)", re.IGNORECASE)
    owners = {
        p.relative_to(ROOT).as_posix() for p in _python_files() if ledger_sum.search(p.read_text())
    }
    assert owners == {"gateway/budgets.py"}
    sums = {p.relative_to(ROOT).as_posix() for p in _python_files() if ":sum" in p.read_text()}
    assert sums == {"gateway/budgets.py"}


def _principal(daily: int) -> Principal:
    return Principal(
        key_id=str(uuid.uuid4()),
        prefix="abcdefghijkl",
        key_hash="$argon2id$x",
        active=True,
        expires_at=None,
        scopes=frozenset({"chat"}),
        tenant_id=str(uuid.uuid4()),
        tenant="acme",
        allow_all=True,
        allowed_models=frozenset(),
        allow_cloud=False,
        prompt_log=False,
        key_limits=NO_LIMITS,
        tenant_limits=replace(NO_LIMITS, budget_daily=daily),
        default_max_tokens=1024,
        keep_alive_min_s=60,
        keep_alive_max_s=1800,
    )


async def _used(redis: aioredis.Redis, who: Principal, tokens: int) -> Budget:
    """The tenant's daily budget with ``tokens`` used (the counter exists: no ledger read)."""
    budget = Budget(who.tenant_id, None, Period.DAILY, 1000)
    await redis.set(budget.used_key(datetime.now(UTC)), tokens)
    return budget


async def test_read_sees_what_admission_reserved_and_settlement_turns_it_into_use(
    redis: aioredis.Redis, no_postgres: asyncpg.Pool
) -> None:
    who = _principal(daily=1000)
    budget = await _used(redis, who, 100)
    admitter = Admitter(redis, no_postgres)
    first = await admitter.admit(who, "r1", 300, take=True)
    assert (first.outcome, first.remaining, first.reserved) == (Outcome.OK, 900, 300)
    second = await admitter.admit(who, "r2", 800, take=True)  # 600 left: 600 reserved
    assert (second.outcome, second.remaining, second.reserved) == (Outcome.OK, 600, 600)

    now = datetime.now(UTC)
    assert await budgets.read(redis, budget, now, time.time()) == budgets.Reading(100, 900)
    refused = await admitter.admit(who, "r3", 5, take=True)
    assert (refused.outcome, refused.remaining) == (Outcome.BUDGET, 0)

    await budgets.settle(redis, who.tenant_id, "r1", 250)
    await budgets.settle(redis, who.tenant_id, "r1", 250)  # exactly once
    assert await budgets.read(redis, budget, now, time.time()) == budgets.Reading(350, 600)
    check = await admitter.admit(who, "r4", 1, take=False)
    assert check.remaining == 1000 - 350 - 600


async def test_an_expired_reservation_is_read_as_admission_counts_it_and_renewal_keeps_one(
    redis: aioredis.Redis, no_postgres: asyncpg.Pool
) -> None:
    who = _principal(daily=1000)
    budget = await _used(redis, who, 0)
    short = Leases(slot_s=1, reservation_s=1)
    admitter = Admitter(redis, no_postgres, short)
    assert (await admitter.admit(who, "lapses", 200, take=True)).reserved == 200
    assert (await admitter.admit(who, "renewed", 300, take=True)).reserved == 300
    await leases.renew_all(
        redis, Leases(slot_s=60, reservation_s=60), [(who.tenant_id, who.key_id, "renewed")]
    )

    now = datetime.now(UTC)
    later = time.time() + 2  # past the short lease, before the renewed one
    # Not swept yet (:sum still holds 500), but "lapses" no longer counts, as for admission.
    assert await budgets.read(redis, budget, now, later) == budgets.Reading(0, 300)
    assert await budgets.read(redis, budget, now, time.time()) == budgets.Reading(0, 500)

    await asyncio.sleep(1.2)  # the short lease has run out: admission sweeps it
    check = await admitter.admit(who, "check", 1, take=False)
    reading = await budgets.read(redis, budget, datetime.now(UTC), time.time())
    assert reading == budgets.Reading(0, 300)
    assert check.remaining == 1000 - 0 - 300


class SlowLedger:
    """The ledger as PostgreSQL answers it, slowly: how many times it was summed."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.sums = 0

    async def fetchval(self, sql: str, *args: object) -> int:
        assert "gateway.budget_ledger" in sql
        self.sums += 1
        await asyncio.sleep(0.2)
        return self.tokens


async def test_requests_that_find_a_counter_missing_at_once_rebuild_it_once(
    redis: aioredis.Redis,
) -> None:
    who = _principal(daily=1000)
    ledger = SlowLedger(400)
    admitter = Admitter(redis, ledger)  # type: ignore[arg-type]
    # 32 requests of one tenant arrive while its counter is missing (Redis restarted).
    answers = await asyncio.gather(
        *(admitter.admit(who, f"r{i}", 10, take=False) for i in range(32))
    )
    assert ledger.sums == 1
    assert {(a.outcome, a.remaining) for a in answers} == {(Outcome.OK, 600)}
    # Done: the next missing counter is summed again (nothing cached beside Redis).
    await redis.flushdb()
    await admitter.admit(who, "r-late", 10, take=False)
    assert ledger.sums == 2
