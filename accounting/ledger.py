"""The budget ledger: the source of truth for budgets, one row per accounted request.

Rows are written in batches (multi-row INSERT … ON CONFLICT DO NOTHING on the request id), so
a request is never debited twice in Postgres, whatever is retried or restarted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from accounting import pgwrite
from accounting.audit import uuid_or_none
from accounting.stream import Outcome


@dataclass(frozen=True, slots=True)
class LedgerRow:
    request_id: str
    occurred_at: datetime
    tenant_id: str
    key_id: str | None
    model: str
    tokens_in: int
    tokens_out: int
    estimated: bool


def row_from_outcome(outcome: Outcome) -> LedgerRow | None:
    """The ledger row for a finished request; None when there is no tenant to debit."""
    tenant_id = uuid_or_none(outcome.info.tenant_id)
    if tenant_id is None or not outcome.info.request_id:
        return None
    counts = outcome.counts
    return LedgerRow(
        request_id=outcome.info.request_id,
        occurred_at=datetime.fromtimestamp(outcome.finished_at, UTC),
        tenant_id=tenant_id,
        key_id=uuid_or_none(outcome.info.key_id),
        model=outcome.info.model,
        tokens_in=counts.tokens_in,
        tokens_out=counts.tokens_out,
        estimated=counts.estimated,
    )


_INSERT = """
INSERT INTO gateway.budget_ledger (request_id, occurred_at, tenant_id, key_id, model,
    tokens_in, tokens_out, estimated)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::text[],
    $6::bigint[], $7::bigint[], $8::bool[])
ON CONFLICT (request_id) DO NOTHING
"""


def _columns(batch: Sequence[Any]) -> list[list[Any]]:
    return [
        [r.request_id for r in batch],
        [r.occurred_at for r in batch],
        [r.tenant_id for r in batch],
        [r.key_id for r in batch],
        [r.model for r in batch],
        [r.tokens_in for r in batch],
        [r.tokens_out for r in batch],
        [r.estimated for r in batch],
    ]


async def write(pool: asyncpg.Pool, rows: list[LedgerRow]) -> None:
    unique = list({r.request_id: r for r in rows}.values())
    await pgwrite.insert(pool, "budget_ledger", _INSERT, unique, _columns)
