"""Usage reports: tokens and requests per tenant, key and model over a time window.

Tokens come from the ledger (``gateway.budget_ledger``: one row per accounted request), request
counts from the audit log (``gateway.audit_log``: every request, allowed or denied; a row
stands for ``count`` requests, as unauthenticated denials are aggregated). Both are read at the
finest grain (tenant, key, model) and rolled up here to the dimensions asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

import asyncpg
from asyncpg.pool import PoolConnectionProxy


class Dimension(StrEnum):
    TENANT = "tenant"
    KEY = "key"
    MODEL = "model"


@dataclass(frozen=True, slots=True)
class UsageRow:
    tenant_id: str = ""
    tenant: str = ""
    key_id: str = ""
    key_prefix: str = ""
    model: str = ""
    requests: int = 0
    denied: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def tokens_total(self) -> int:
        return self.tokens_in + self.tokens_out

    def plus(self, other: UsageRow) -> UsageRow:
        return replace(
            self,
            requests=self.requests + other.requests,
            denied=self.denied + other.denied,
            tokens_in=self.tokens_in + other.tokens_in,
            tokens_out=self.tokens_out + other.tokens_out,
        )


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end); None leaves that side open."""

    start: datetime | None = None
    end: datetime | None = None


_LEDGER_SQL = """
SELECT l.tenant_id::text AS tenant_id, t.name AS tenant, l.key_id::text AS key_id,
       k.prefix AS key_prefix, l.model,
       sum(l.tokens_in)::bigint AS tokens_in, sum(l.tokens_out)::bigint AS tokens_out
  FROM gateway.budget_ledger l
  JOIN gateway.tenants t ON t.id = l.tenant_id
  LEFT JOIN gateway.api_keys k ON k.id = l.key_id
 WHERE ($1::uuid IS NULL OR l.tenant_id = $1::uuid)
   AND ($2::uuid IS NULL OR l.key_id = $2::uuid)
   AND ($3::timestamptz IS NULL OR l.occurred_at >= $3)
   AND ($4::timestamptz IS NULL OR l.occurred_at < $4)
 GROUP BY l.tenant_id, t.name, l.key_id, k.prefix, l.model
"""

_AUDIT_SQL = """
SELECT a.tenant_id::text AS tenant_id, t.name AS tenant, k.id::text AS key_id,
       a.key_prefix, a.model, sum(a.count)::bigint AS requests,
       coalesce(sum(a.count) FILTER (WHERE a.status >= 400), 0)::bigint AS denied
  FROM gateway.audit_log a
  LEFT JOIN gateway.tenants t ON t.id = a.tenant_id
  LEFT JOIN gateway.api_keys k ON k.prefix = a.key_prefix
 WHERE ($1::uuid IS NULL OR a.tenant_id = $1::uuid)
   AND ($2::uuid IS NULL OR k.id = $2::uuid)
   AND ($3::timestamptz IS NULL OR a.ts >= $3)
   AND ($4::timestamptz IS NULL OR a.ts < $4)
 GROUP BY a.tenant_id, t.name, k.id, a.key_prefix, a.model
"""


def _project(row: UsageRow, by: frozenset[Dimension]) -> UsageRow:
    """The row's identity reduced to the dimensions asked for, with its counts."""
    by_key = Dimension.KEY in by
    by_tenant = by_key or Dimension.TENANT in by
    return UsageRow(
        tenant_id=row.tenant_id if by_tenant else "",
        tenant=row.tenant if by_tenant else "",
        key_id=row.key_id if by_key else "",
        key_prefix=row.key_prefix if by_key else "",
        model=row.model if Dimension.MODEL in by else "",
        requests=row.requests,
        denied=row.denied,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
    )


def roll_up(rows: Iterable[UsageRow], by: Iterable[Dimension]) -> list[UsageRow]:
    """Sum rows that agree on the dimensions ``by`` (none: a single total row)."""
    dims = frozenset(by)
    merged: dict[tuple[str, str, str], UsageRow] = {}
    for row in rows:
        projected = _project(row, dims)
        ident = (projected.tenant_id, projected.key_id, projected.model)
        previous = merged.get(ident)
        merged[ident] = projected if previous is None else previous.plus(projected)
    return sorted(merged.values(), key=lambda r: (r.tenant, r.key_prefix, r.model))


async def report(
    conn: asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool,
    *,
    tenant_id: str | None,
    key_id: str | None,
    window: Window,
    by: Iterable[Dimension],
) -> tuple[list[UsageRow], UsageRow]:
    """Rows grouped by ``by`` and the total, for a tenant, a key, or everything."""
    args = (tenant_id, key_id, window.start, window.end)
    fine: list[UsageRow] = []
    for record in await conn.fetch(_LEDGER_SQL, *args):
        fine.append(
            UsageRow(
                tenant_id=record["tenant_id"],
                tenant=record["tenant"],
                key_id=record["key_id"] or "",
                key_prefix=record["key_prefix"] or "",
                model=record["model"],
                tokens_in=record["tokens_in"],
                tokens_out=record["tokens_out"],
            )
        )
    for record in await conn.fetch(_AUDIT_SQL, *args):
        fine.append(
            UsageRow(
                tenant_id=record["tenant_id"] or "",
                tenant=record["tenant"] or "",
                key_id=record["key_id"] or "",
                key_prefix=record["key_prefix"] or "",
                model=record["model"],
                requests=record["requests"],
                denied=record["denied"],
            )
        )
    total = roll_up(fine, ())
    return roll_up(fine, by), (total[0] if total else UsageRow())
