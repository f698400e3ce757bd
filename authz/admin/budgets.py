"""Budget status for the admin API: the limit in force per period, what was used, what remains.

Budgets count tokens in + out. A key's own budget and its tenant's budget both apply; a key
without its own budget for a period runs under the tenant's alone. ``used`` comes from the
ledger (``gateway.budget_ledger``, the source of truth the live counters are rebuilt from).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from authz.admin.records import KeyRecord, TenantRecord
from authz.provisioning import Connection
from gateway import periods
from gateway.periods import Period

PERIODS = (Period.DAILY, Period.MONTHLY, Period.TOTAL)


@dataclass(frozen=True, slots=True)
class PeriodStatus:
    period: Period
    limit: int | None
    source: str  # "key", "tenant" or "" (no budget)
    used: int
    remaining: int | None
    resets_at: datetime | None


def column(period: Period) -> str:
    return f"budget_{period.value}"


_USED_SQL = {
    "tenant_id": "SELECT COALESCE(sum(tokens_in + tokens_out), 0)::bigint"
    " FROM gateway.budget_ledger WHERE tenant_id = $1::uuid AND occurred_at >= $2",
    "key_id": "SELECT COALESCE(sum(tokens_in + tokens_out), 0)::bigint"
    " FROM gateway.budget_ledger WHERE key_id = $1::uuid AND occurred_at >= $2",
}


async def _used(conn: Connection, column: str, target_id: str, since: datetime) -> int:
    return int(await conn.fetchval(_USED_SQL[column], target_id, since))


async def tenant_status(
    conn: Connection, tenant: TenantRecord, now: datetime
) -> list[PeriodStatus]:
    result: list[PeriodStatus] = []
    for period in PERIODS:
        limit = tenant.limits[column(period)]
        used = await _used(conn, "tenant_id", tenant.id, periods.start(period, now))
        result.append(
            PeriodStatus(
                period=period,
                limit=limit,
                source="tenant" if limit is not None else "",
                used=used,
                remaining=None if limit is None else max(0, limit - used),
                resets_at=periods.reset_at(period, now),
            )
        )
    return result


async def key_status(
    conn: Connection, key: KeyRecord, tenant: TenantRecord, now: datetime
) -> list[PeriodStatus]:
    result: list[PeriodStatus] = []
    for period, tenant_part in zip(PERIODS, await tenant_status(conn, tenant, now), strict=True):
        own = key.limits[column(period)]
        if own is None:
            result.append(tenant_part)
            continue
        used = await _used(conn, "key_id", key.id, periods.start(period, now))
        remaining = max(0, own - used)
        if tenant_part.remaining is not None:
            remaining = min(remaining, tenant_part.remaining)
        result.append(
            PeriodStatus(
                period=period,
                limit=own,
                source="key",
                used=used,
                remaining=remaining,
                resets_at=periods.reset_at(period, now),
            )
        )
    return result
