"""Token budgets in Redis: live counters, reservations, settlement, rebuild from the ledger.

Layout (every key of one tenant under the hash tag ``{<tenant_id>}``, so one Lua script can
touch them all on a Redis Cluster):

* ``nz:{T}:bu:<scope>:<period>:<bucket>`` — string, tokens *used* in the period (the ledger's
  sum; rebuilt from ``gateway.budget_ledger`` when missing);
* ``nz:{T}:br:<scope>:<period>:<bucket>`` — sorted set of live *reservations*, member
  ``<request_id>|<tokens>``, score = the reservation's expiry (epoch seconds), and beside it
  ``…:sum``, the total of its members' tokens (kept in step by the scripts, so a check costs
  O(1), not O(reservations)); expired members are dropped (and subtracted) before every
  check, so a lost settlement heals itself;
* ``nz:{T}:rsv:<request_id>`` — JSON record of one request's reservation (which counters it
  reserved on, under which member), read by :func:`settle`; it lives ``RECORD_GRACE_S``
  longer than the reservation, so a late settlement still debits *used*.

``<scope>`` is ``t`` for the tenant or ``k:<key_id>`` for a key. This module owns the layout:
the key names, the ledger's sum (:func:`ledger_used`) and how *used* and *reserved* are read
(:func:`read`); the Lua scripts that write it are ``gateway/lua/*.lua``, each with a header naming
its KEYS, ARGV and return value. authz checks and reserves with :data:`ADMIT` (``admit.lua``,
``authz/admission.py``); accounting calls :func:`settle` with the real count and renews leases
(``gateway/leases.py``, ``renew.lua``); the admin API reports :func:`read` and :func:`ledger_used`
(``authz/admin/budgets.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway import periods, scriptmetrics
from gateway.periods import Period
from gateway.storage import Store

# A reservation not settled (nor renewed by its live stream, ``gateway/leases.py``) within
# this time stops counting: a lost settlement heals itself. The default of the setting
# ``NZ_RESERVATION_LEASE_S``.
RESERVATION_TTL_S = 15
# The reservation's record outlives the reservation by this much: a settlement that comes
# after the reservation expired still finds which *used* counters to debit.
RECORD_GRACE_S = 86400


def lua(name: str, package: str = "gateway") -> str:
    """The source of ``<package>/lua/<name>`` (package data, shipped in the wheel): the budget
    store's scripts, and a service's own (``authz/lua/``)."""
    return (files(package) / "lua" / name).read_text(encoding="utf-8")


# The scripts that write the layout, read once at import.
ADMIT = lua("admit.lua")  # check + reserve + slots: authz/admission.py
_SETTLE = lua("settle.lua")
_SETTLE_SECONDS = scriptmetrics.Timer("settle")


@dataclass(frozen=True, slots=True)
class Budget:
    """One configured budget: a period's limit for the tenant (key_id None) or one key."""

    tenant_id: str
    key_id: str | None
    period: Period
    limit: int

    def scope(self) -> str:
        return "t" if self.key_id is None else f"k:{self.key_id}"

    def _name(self, kind: str, now: datetime) -> str:
        bucket = periods.bucket(self.period, now)
        return f"nz:{{{self.tenant_id}}}:{kind}:{self.scope()}:{self.period}:{bucket}"

    def used_key(self, now: datetime) -> str:
        return self._name("bu", now)

    def reserved_key(self, now: datetime) -> str:
        return self._name("br", now)


@dataclass(frozen=True, slots=True)
class Reading:
    """One budget's live counters in Redis."""

    used: int | None  # None: the counter is missing (the next admission rebuilds it)
    reserved: int  # tokens reserved by requests in flight


def reservation_key(tenant_id: str, request_id: str) -> str:
    return f"nz:{{{tenant_id}}}:rsv:{request_id}"


def counter_ttl_s(period: Period, now: datetime) -> int | None:
    """How long a period's counters live: past the reset with a margin; None for total."""
    left = periods.seconds_until_reset(period, now)
    return None if left is None else left + 2 * 86400


_LEDGER_SQL = """
SELECT COALESCE(SUM(tokens_in + tokens_out), 0)::bigint
  FROM gateway.budget_ledger
 WHERE tenant_id = $1::uuid AND ($2::uuid IS NULL OR key_id = $2::uuid)
   AND occurred_at >= $3 AND ($4::timestamptz IS NULL OR occurred_at < $4)
"""

# Anything that runs a query: a pool, a connection, or a pool's connection.
Queries = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


async def ledger_used(db: Queries, budget: Budget, now: datetime) -> int:
    """Tokens the ledger (``gateway.budget_ledger``, the source of truth) holds for ``budget``'s
    period at ``now``: what its *used* counter is rebuilt from."""
    begin = periods.start(budget.period, now)
    end = periods.reset_at(budget.period, now)
    return int(await db.fetchval(_LEDGER_SQL, budget.tenant_id, budget.key_id, begin, end))


async def rebuild(redis: Store, db: asyncpg.Pool, budget: Budget, now: datetime) -> int:
    """Recreate a missing *used* counter from the Postgres ledger (never overwrites one)."""
    used = await ledger_used(db, budget, now)
    await redis.set(budget.used_key(now), used, nx=True, ex=counter_ttl_s(budget.period, now))
    return used


# A reservation member's tokens, matched as admit.lua and settle.lua match them
# (``'|(%d+)$'``): digits after the last ``|``; a member without them counts none.
_AMOUNT = re.compile(r"\|([0-9]+)\Z")


def _amount(member: str) -> int:
    """A reservation member's tokens: ``<request_id>|<tokens>``, 0 when it names none."""
    found = _AMOUNT.search(member)
    return int(found.group(1)) if found else 0


async def read(redis: Store, budget: Budget, now: datetime, clock: float) -> Reading:
    """``budget``'s *used* counter (None when missing) and its *reserved* tokens, as admission
    counts them (``admit.lua``): the ``:sum`` less what has expired by ``clock`` (epoch seconds),
    which the next admission sweeps. Read only: nothing is swept here."""
    reserved = budget.reserved_key(now)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(budget.used_key(now))
        pipe.get(f"{reserved}:sum")
        pipe.zrangebyscore(reserved, "-inf", clock)
        used, total, expired = await pipe.execute()
    live = int(total or 0) - sum(_amount(str(m)) for m in expired)
    return Reading(None if used is None else int(used), live)


async def settle(redis: Store, tenant_id: str, request_id: str, actual_tokens: int) -> None:
    """Turn a request's reservation into real use: reserved -= its amount (if it still
    counts), used += actual — whatever the reservation's state: live, or expired and swept
    (its record outlives it by ``RECORD_GRACE_S``).

    Exactly once: the reservation record is consumed; without one (settled already, or no
    budget applies) it is a no-op. A *used* counter that is missing (Redis flushed) is left
    missing: the next check rebuilds it from the ledger (accounting writes this request's
    ledger row).
    """
    script = redis.register_script(_SETTLE)
    await _SETTLE_SECONDS.run(
        script(keys=[reservation_key(tenant_id, request_id)], args=[max(0, int(actual_tokens))])
    )
