"""The budget store's layout (gateway/budgets.py), pinned by hand: the Redis key of every
counter, how long a period's counters live, which ledger rows a budget sums, how a missing
*used* counter is rebuilt (and never overwritten), how *used* and *reserved* are read, and what
a settlement does to them. The layout is written here as the module's docstring describes it
(and settle.lua's header, for the reservation record); expected values are written out by hand.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import budgets
from gateway.budgets import Budget, Reading
from gateway.periods import Period

ROOT = Path(__file__).resolve().parents[2]
T = "6a1f7d1e-0000-4000-8000-0000000000aa"
K = "6a1f7d1e-0000-4000-8000-0000000000bb"
DAY = 86_400


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


NOW = utc(2026, 3, 15, 13, 45)


@pytest.mark.parametrize(
    ("budget", "used", "reserved"),
    [
        (
            Budget(T, None, Period.DAILY, 1000),
            f"nz:{{{T}}}:bu:t:daily:2026-03-15",
            f"nz:{{{T}}}:br:t:daily:2026-03-15",
        ),
        (
            Budget(T, K, Period.MONTHLY, 1000),
            f"nz:{{{T}}}:bu:k:{K}:monthly:2026-03",
            f"nz:{{{T}}}:br:k:{K}:monthly:2026-03",
        ),
        (
            Budget(T, K, Period.TOTAL, 1000),
            f"nz:{{{T}}}:bu:k:{K}:total:total",
            f"nz:{{{T}}}:br:k:{K}:total:total",
        ),
    ],
)
def test_a_budgets_counters_are_named_for_tenant_scope_period_and_bucket(
    budget: Budget, used: str, reserved: str
) -> None:
    assert budget.used_key(NOW) == used
    assert budget.reserved_key(NOW) == reserved


def test_the_scope_is_the_tenant_or_the_key() -> None:
    assert Budget(T, None, Period.DAILY, 1).scope() == "t"
    assert Budget(T, K, Period.DAILY, 1).scope() == f"k:{K}"


def test_a_reservation_record_shares_the_tenants_hash_tag() -> None:
    assert budgets.reservation_key(T, "req-1") == f"nz:{{{T}}}:rsv:req-1"


@pytest.mark.parametrize(
    ("period", "now", "ttl"),
    [
        (Period.DAILY, utc(2026, 3, 15, 23), 3600 + 2 * DAY),  # one hour to midnight
        (Period.DAILY, utc(2026, 3, 15), DAY + 2 * DAY),
        (Period.MONTHLY, utc(2026, 2, 28), DAY + 2 * DAY),  # the last day of February
        (Period.MONTHLY, utc(2026, 4, 1), 30 * DAY + 2 * DAY),
        (Period.TOTAL, utc(2026, 4, 1), None),  # never resets: never expires
    ],
)
def test_counters_live_two_days_past_their_periods_reset(
    period: Period, now: datetime, ttl: int | None
) -> None:
    assert budgets.counter_ttl_s(period, now) == ttl


@pytest.mark.parametrize(
    ("name", "package"),
    [("settle.lua", "gateway"), ("admit.lua", "gateway"), ("key_store.lua", "authz")],
)
def test_a_script_is_read_from_its_packages_lua_directory(name: str, package: str) -> None:
    expected = (ROOT / package / "lua" / name).read_text(encoding="utf-8")
    if package == "gateway":
        assert budgets.lua(name) == expected
    assert budgets.lua(name, package) == expected
    assert budgets.lua(name, package=package) == expected


class Ledger:
    """A stand-in for the pool: answers the ledger's sum, remembers what it was asked."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.asked: list[tuple[object, ...]] = []

    async def fetchval(self, sql: str, *args: object) -> int:
        assert "gateway.budget_ledger" in sql
        self.asked.append(args)
        return self.tokens


@pytest.mark.parametrize(
    ("budget", "args"),
    [
        (Budget(T, None, Period.DAILY, 1), (T, None, utc(2026, 3, 15), utc(2026, 3, 16))),
        (Budget(T, K, Period.MONTHLY, 1), (T, K, utc(2026, 3, 1), utc(2026, 4, 1))),
        (Budget(T, K, Period.TOTAL, 1), (T, K, utc(1970, 1, 1), None)),
    ],
)
async def test_the_ledger_is_summed_over_the_budgets_scope_and_period(
    budget: Budget, args: tuple[object, ...]
) -> None:
    ledger = Ledger(4321)
    assert await budgets.ledger_used(ledger, budget, NOW) == 4321  # type: ignore[arg-type]
    assert ledger.asked == [args]


async def test_a_missing_used_counter_is_rebuilt_from_the_ledger_with_its_ttl(
    redis: aioredis.Redis,
) -> None:
    budget = Budget(T, None, Period.DAILY, 1000)
    now = utc(2026, 3, 15, 23)
    ledger = Ledger(700)
    assert await budgets.rebuild(redis, ledger, budget, now) == 700  # type: ignore[arg-type]
    assert await redis.get(f"nz:{{{T}}}:bu:t:daily:2026-03-15") == "700"
    ttl = await redis.ttl(f"nz:{{{T}}}:bu:t:daily:2026-03-15")
    assert 3600 + 2 * DAY - 2 <= ttl <= 3600 + 2 * DAY


async def test_a_rebuild_never_overwrites_a_live_counter(redis: aioredis.Redis) -> None:
    budget = Budget(T, K, Period.TOTAL, 1000)
    await redis.set(f"nz:{{{T}}}:bu:k:{K}:total:total", 55)
    assert await budgets.rebuild(redis, Ledger(700), budget, NOW) == 700  # type: ignore[arg-type]
    assert await redis.get(f"nz:{{{T}}}:bu:k:{K}:total:total") == "55"


async def test_a_total_budgets_rebuilt_counter_never_expires(redis: aioredis.Redis) -> None:
    budget = Budget(T, K, Period.TOTAL, 1000)
    await budgets.rebuild(redis, Ledger(9), budget, NOW)  # type: ignore[arg-type]
    assert await redis.get(f"nz:{{{T}}}:bu:k:{K}:total:total") == "9"
    assert await redis.ttl(f"nz:{{{T}}}:bu:k:{K}:total:total") == -1


async def test_nothing_in_redis_reads_as_a_missing_counter_and_nothing_reserved(
    redis: aioredis.Redis,
) -> None:
    budget = Budget(T, None, Period.DAILY, 1000)
    assert await budgets.read(redis, budget, NOW, 1_800_000_000.0) == Reading(None, 0)


async def test_read_counts_live_reservations_and_leaves_the_expired_to_the_sweep(
    redis: aioredis.Redis,
) -> None:
    budget = Budget(T, None, Period.DAILY, 1000)
    clock = 1_800_000_000.0
    used, reserved = budget.used_key(NOW), budget.reserved_key(NOW)
    await redis.set(used, 100)
    await redis.set(f"{reserved}:sum", 200 + 70 + 300 + 5 + 40)
    await redis.zadd(
        reserved,
        {
            "gone|200": clock - 10,  # expired
            "with|bar|70": clock,  # expires right now: no longer counts
            "live|300": clock + 10,
            "live|bar|5": clock + 1,
            "empty|": clock - 1,  # no tokens: counts as none
            "x|40": clock + 0.5,
        },
    )
    assert await budgets.read(redis, budget, NOW, clock) == Reading(100, 300 + 5 + 40)
    # Read only: nothing was swept.
    assert await redis.zcard(reserved) == 6
    assert await redis.get(f"{reserved}:sum") == "615"


async def test_an_expired_member_without_a_token_count_counts_none_as_admission_counts_it(
    redis: aioredis.Redis,
) -> None:
    """admit.lua and settle.lua take a member's tokens with the pattern ``'|(%d+)$'``: what
    they cannot read there counts 0, so the reading agrees (and does not fail)."""
    budget = Budget(T, None, Period.DAILY, 1000)
    clock = 1_800_000_000.0
    reserved = budget.reserved_key(NOW)
    await redis.set(budget.used_key(NOW), 0)
    await redis.set(f"{reserved}:sum", 1000)
    expired = ["legacy", "r|12abc", "s|-5", "t|7|x", "u|12|34", "ok|100"]
    await redis.zadd(reserved, {member: clock - 1 for member in expired})
    # Counted: 34 (the digits after the last "|") and 100; the rest count none.
    assert await budgets.read(redis, budget, NOW, clock) == Reading(0, 1000 - 34 - 100)


async def _reserve(redis: aioredis.Redis, budget: Budget, request_id: str, tokens: int) -> None:
    """A live reservation as admit.lua leaves it (settle.lua's header: the record's shape)."""
    member = f"{request_id}|{tokens}"
    reserved = budget.reserved_key(NOW)
    await redis.zadd(reserved, {member: 1_800_000_000})
    await redis.incrby(f"{reserved}:sum", tokens)
    record = {"m": member, "p": [[budget.used_key(NOW), reserved]]}
    await redis.set(budgets.reservation_key(T, request_id), json.dumps(record))


@pytest.mark.parametrize(
    ("actual", "used_after"),
    [(250, 350), (0, 100), (-40, 100)],  # a negative count is none
)
async def test_settlement_moves_a_reservation_to_used_exactly_once(
    redis: aioredis.Redis, actual: int, used_after: int
) -> None:
    budget = Budget(T, None, Period.DAILY, 1000)
    await redis.set(budget.used_key(NOW), 100)
    await _reserve(redis, budget, "r1", 300)
    await _reserve(redis, budget, "r2", 80)
    await budgets.settle(redis, T, "r1", actual)
    await budgets.settle(redis, T, "r1", actual)  # again: nothing more
    assert await budgets.read(redis, budget, NOW, 0.0) == Reading(used_after, 80)
    assert await redis.exists(budgets.reservation_key(T, "r1")) == 0
    assert await redis.exists(budgets.reservation_key(T, "r2")) == 1


async def test_settling_without_a_reservation_changes_nothing(redis: aioredis.Redis) -> None:
    budget = Budget(T, None, Period.DAILY, 1000)
    await redis.set(budget.used_key(NOW), 100)
    await budgets.settle(redis, T, "never-reserved", 500)
    assert await budgets.read(redis, budget, NOW, 0.0) == Reading(100, 0)
