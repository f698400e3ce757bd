"""Budget pre-check + reservation and concurrency slot, in one Redis round trip.

One pipeline carries ``EXISTS nz:deny_mode`` (accounting sets it while it cannot audit) and one
Lua script (``gateway/lua/admit.lua``: its header names KEYS, ARGV and the answer) that,
atomically and under the tenant's hash tag: checks that every configured budget period (daily /
monthly / total, key and tenant) has tokens left, takes a slot in the key's and the tenant's
concurrency sets, and reserves an upper bound of the request's tokens on every budget counter
(layouts in ``gateway/budgets.py`` and ``gateway/slots.py``). A *used* counter missing from
Redis is rebuilt from the Postgres ledger first — once per counter, however many requests find it
missing at the same moment (after a Redis restart or failover every request of a busy tenant
does: one ledger query serves them all).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import asyncpg
from redis.exceptions import NoScriptError

from authz.principal import Principal
from gateway import budgets, periods, scriptmetrics, slots
from gateway.budgets import Budget
from gateway.leases import Leases
from gateway.periods import Period
from gateway.signals import DENY_MODE_KEY
from gateway.storage import Store
from gateway.storeerrors import STORE_ERRORS, StoreUnavailable

_BUDGET_FIELDS = (
    (Period.DAILY, "budget_daily"),
    (Period.MONTHLY, "budget_monthly"),
    (Period.TOTAL, "budget_total"),
)
# gateway/lua/admit.lua, with the deny-mode read in the same pipeline
_ADMIT_SECONDS = scriptmetrics.Timer("admit")


class Outcome(Enum):
    OK = "ok"
    DENY_MODE = "deny_mode"
    BUDGET = "budget"
    SLOTS = "slots"


@dataclass(frozen=True, slots=True)
class Admission:
    outcome: Outcome
    period: Period | None = None  # the binding budget period (None: no budget configured)
    remaining: int = 0  # its tokens left before this request
    reserved: int = 0  # tokens reserved for this request
    slot: bool = False  # a concurrency slot was taken
    retry_after: int | None = None

    def budget_headers(self) -> dict[str, str]:
        if self.period is None:
            return {}
        return {
            "x-budget-period": str(self.period),
            "x-budget-tokens-remaining": str(max(0, self.remaining)),
        }


def budgets_for(principal: Principal) -> list[Budget]:
    """Every budget that applies. A key's NULL inherits the tenant's value, which the tenant's
    own counter (covering all its keys) already enforces, so only explicit key values add a
    key-level counter."""
    found: list[Budget] = []
    for period, name in _BUDGET_FIELDS:
        own: int | None = getattr(principal.key_limits, name)
        if own is not None:
            found.append(Budget(principal.tenant_id, principal.key_id, period, own))
        shared: int | None = getattr(principal.tenant_limits, name)
        if shared is not None:
            found.append(Budget(principal.tenant_id, None, period, shared))
    return found


def slots_for(principal: Principal) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    own = principal.key_limits.max_concurrent
    if own is not None:
        found.append((slots.key_slots(principal.tenant_id, principal.key_id), own))
    shared = principal.tenant_limits.max_concurrent
    if shared is not None:
        found.append((slots.tenant_slots(principal.tenant_id), shared))
    return found


class Admitter:
    def __init__(self, redis: Store, db: asyncpg.Pool, leases: Leases | None = None) -> None:
        self._redis = redis
        self._db = db
        self._leases = leases or Leases()
        self._sha = ""
        self._rebuilding: dict[str, asyncio.Future[int]] = {}  # used counter → its rebuild

    async def load(self) -> None:
        self._sha = await self._redis.script_load(budgets.ADMIT)

    async def deny_mode(self) -> bool:
        """For answers that need no other Redis work (401, 403)."""
        try:
            return bool(await self._redis.exists(DENY_MODE_KEY))
        except STORE_ERRORS as exc:
            raise StoreUnavailable from exc

    async def admit(
        self, principal: Principal, request_id: str, want: int, *, take: bool, need: int = 1
    ) -> Admission:
        """Check (and with ``take``, reserve up to ``want`` tokens and a slot) for one request.

        Refused (``BUDGET``) when a period has fewer than ``need`` tokens left (the prompt and
        one output token), so a budget is never overshot by more than the estimate's error;
        otherwise the reservation is ``min(want, tokens left)``.
        """
        now = datetime.now(UTC)
        found = budgets_for(principal)
        limits = slots_for(principal) if take else []
        if not found and not limits:
            return Admission(Outcome.DENY_MODE if await self.deny_mode() else Outcome.OK)
        for _ in range(3):
            result = await self._run(principal, found, limits, request_id, (want, need), take, now)
            if isinstance(result, Admission):
                return result
            try:
                for index in result:
                    await self._rebuild(found[index - 1], now)
            except STORE_ERRORS as exc:
                raise StoreUnavailable from exc
        raise StoreUnavailable("budget counters could not be rebuilt")

    async def _rebuild(self, budget: Budget, now: datetime) -> int:
        """:func:`gateway.budgets.rebuild`, shared by every request waiting for the same counter
        (its outcome, or its error, is theirs)."""
        name = budget.used_key(now)
        pending = self._rebuilding.get(name)
        if pending is None:
            pending = asyncio.ensure_future(budgets.rebuild(self._redis, self._db, budget, now))
            self._rebuilding[name] = pending
            pending.add_done_callback(lambda _: self._rebuilding.pop(name, None))
        # One waiter cancelled (its client went away) does not cancel the others' rebuild.
        return await asyncio.shield(pending)

    async def _run(
        self,
        principal: Principal,
        found: list[Budget],
        limits: list[tuple[str, int]],
        request_id: str,
        tokens: tuple[int, int],
        take: bool,
        now: datetime,
    ) -> Admission | list[int]:
        want, need = tokens
        keys: list[str] = []
        for budget in found:
            keys += [budget.used_key(now), budget.reserved_key(now)]
        keys += [name for name, _ in limits]
        keys.append(budgets.reservation_key(principal.tenant_id, request_id))
        clock = time.time()
        args: list[str | int | float] = [
            clock,
            len(found),
            len(limits),
            max(0, want),
            request_id,
            "1" if take else "0",
            self._leases.reservation_s,
            clock + self._leases.slot_s,
            max(1, need),
            *(b.limit for b in found),
            *(limit for _, limit in limits),
            self._leases.record_ttl_s,
        ]
        try:
            denied, raw = await self._pipeline(keys, args)
            status = int(raw[0])
            if denied:
                if status == 0 and take:  # the script could not know: give it all back
                    await budgets.settle(self._redis, principal.tenant_id, request_id, 0)
                    await slots.release(
                        self._redis, principal.tenant_id, principal.key_id, request_id
                    )
                return Admission(Outcome.DENY_MODE)
        except STORE_ERRORS as exc:
            raise StoreUnavailable from exc
        if status == 3:
            return [int(i) for i in raw[1:]]
        index, remaining = int(raw[1]), int(raw[2])
        period = found[index - 1].period if index > 0 else None
        if status == 1:
            assert period is not None
            return Admission(
                Outcome.BUDGET,
                period,
                remaining,
                retry_after=periods.seconds_until_reset(period, now),
            )
        if status == 2:
            return Admission(Outcome.SLOTS, period, remaining, retry_after=1)
        return Admission(
            Outcome.OK, period, remaining, reserved=int(raw[3]), slot=take and bool(limits)
        )

    async def _pipeline(
        self, keys: list[str], args: list[str | int | float]
    ) -> tuple[bool, list[int]]:
        """(deny mode?, the script's answer), in one round trip."""
        for attempt in range(2):
            if not self._sha:
                await self.load()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.exists(DENY_MODE_KEY)
                    # (not pipe.evalsha: a Redis Cluster's pipeline refuses that name)
                    pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
                    denied, raw = await _ADMIT_SECONDS.run(pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                self._sha = ""
                continue
            return bool(denied), list(raw)
        raise StoreUnavailable("admission script not loaded")
