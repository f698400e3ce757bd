"""Budget status for the admin API: the limit in force per period, what was used, what is
reserved by requests in flight, and what remains — the numbers authz's admission enforces.

Budgets count tokens in + out. A key's own budget and its tenant's budget both apply; a key
without its own budget for a period runs under the tenant's alone (see
``authz.admission.budgets_for``). Both numbers are read as admission reads them, by
``gateway.budgets`` (the owner of the layout): ``used`` is the live Redis counter when it
exists, else the ledger's sum (``budgets.ledger_used``, what the counter is rebuilt from);
``reserved`` is the live reservations' total (``budgets.read``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from datetime import datetime

from authz.admin.records import KeyRecord, TenantRecord
from authz.admin.sql import Connection
from gateway import budgets, periods
from gateway.budgets import Budget
from gateway.periods import Period
from gateway.storage import Store
from gateway.storeerrors import REDIS_ERRORS

PERIODS = (Period.DAILY, Period.MONTHLY, Period.TOTAL)


@dataclass(frozen=True, slots=True)
class PeriodStatus:
    period: Period
    limit: int | None
    source: str  # "key", "tenant" or "" (no budget)
    used: int
    reserved: int
    remaining: int | None
    resets_at: datetime | None


def column(period: Period) -> str:
    return f"budget_{period.value}"


@dataclass(frozen=True, slots=True)
class Counters:
    """Where the numbers come from: Postgres always, Redis when available."""

    conn: Connection
    redis: Store | None
    now: datetime

    async def usage(self, budget: Budget) -> tuple[int, int]:
        """(used, reserved) for one budget's current period."""
        live = budgets.Reading(used=None, reserved=0)
        if self.redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):  # a report, not a decision: the ledger will do
                live = await budgets.read(self.redis, budget, self.now, time.time())
        if live.used is None:
            return await budgets.ledger_used(self.conn, budget, self.now), live.reserved
        return live.used, live.reserved


def _status(
    period: Period, limit: int | None, source: str, used: int, reserved: int, now: datetime
) -> PeriodStatus:
    return PeriodStatus(
        period=period,
        limit=limit,
        source=source if limit is not None else "",
        used=used,
        reserved=reserved,
        remaining=None if limit is None else max(0, limit - used - reserved),
        resets_at=periods.reset_at(period, now),
    )


async def tenant_status(counters: Counters, tenant: TenantRecord) -> list[PeriodStatus]:
    result: list[PeriodStatus] = []
    for period in PERIODS:
        limit = tenant.limits[column(period)]
        used, reserved = await counters.usage(Budget(tenant.id, None, period, limit or 0))
        result.append(_status(period, limit, "tenant", used, reserved, counters.now))
    return result


async def key_status(
    counters: Counters, key: KeyRecord, tenant: TenantRecord
) -> list[PeriodStatus]:
    result: list[PeriodStatus] = []
    shared = await tenant_status(counters, tenant)
    for period, tenant_part in zip(PERIODS, shared, strict=True):
        own = key.limits[column(period)]
        if own is None:
            result.append(tenant_part)
            continue
        used, reserved = await counters.usage(Budget(tenant.id, key.id, period, own))
        status = _status(period, own, "key", used, reserved, counters.now)
        if tenant_part.remaining is not None and status.remaining is not None:
            remaining = min(status.remaining, tenant_part.remaining)
            status = replace(status, remaining=remaining)
        result.append(status)
    return result
