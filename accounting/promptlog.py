"""The prompt log: opt-in per key, prompts and completions kept until they expire.

Off by default (a key's ``prompt_log`` flag turns it on). The text goes to Postgres only,
never to a log line. A sweeper deletes expired rows in bounded batches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter

from accounting import pgwrite
from accounting.audit import uuid_or_none
from accounting.stream import Outcome
from gateway import logs
from gateway.storeerrors import POSTGRES_ERRORS

SWEPT = Counter("accounting_prompt_log_swept_total", "expired prompt-log rows deleted")
_log = logs.get("accounting")


@dataclass(frozen=True, slots=True)
class PromptRow:
    request_id: str
    expires_at: datetime
    tenant_id: str
    key_id: str | None
    model: str
    prompt: str  # JSON text
    completion: str


def row_from_outcome(outcome: Outcome, ttl_s: float) -> PromptRow | None:
    tenant_id = uuid_or_none(outcome.info.tenant_id)
    if not outcome.info.prompt_log or tenant_id is None or not outcome.info.request_id:
        return None
    finished = datetime.fromtimestamp(outcome.finished_at, UTC)
    return PromptRow(
        request_id=outcome.info.request_id,
        expires_at=finished + timedelta(seconds=ttl_s),
        tenant_id=tenant_id,
        key_id=uuid_or_none(outcome.info.key_id),
        model=outcome.info.model,
        prompt=json.dumps(outcome.prompt, ensure_ascii=False),
        completion=outcome.completion,
    )


_INSERT = """
INSERT INTO gateway.prompt_log (request_id, expires_at, tenant_id, key_id, model, prompt,
    completion)
SELECT r, e, t, k, m, p::jsonb, c FROM unnest($1::text[], $2::timestamptz[], $3::uuid[],
    $4::uuid[], $5::text[], $6::text[], $7::text[]) AS u(r, e, t, k, m, p, c)
ON CONFLICT (request_id) DO NOTHING
"""

_SWEEP = """
DELETE FROM gateway.prompt_log WHERE request_id IN (
    SELECT request_id FROM gateway.prompt_log WHERE expires_at <= now() LIMIT $1)
"""


def _columns(batch: Sequence[Any]) -> list[list[Any]]:
    return [
        [r.request_id for r in batch],
        [r.expires_at for r in batch],
        [r.tenant_id for r in batch],
        [r.key_id for r in batch],
        [r.model for r in batch],
        [r.prompt for r in batch],
        [r.completion.replace("\x00", "") for r in batch],
    ]


async def write(pool: asyncpg.Pool, rows: list[PromptRow]) -> None:
    unique = list({r.request_id: r for r in rows}.values())
    await pgwrite.insert(pool, "prompt_log", _INSERT, unique, _columns)


async def sweep_once(pool: asyncpg.Pool, batch: int = 5000) -> int:
    """Delete expired rows until none is left; returns how many went."""
    total = 0
    while True:
        status = await pool.execute(_SWEEP, batch)
        deleted = int(status.rsplit(" ", 1)[-1])
        total += deleted
        if deleted < batch:
            break
    SWEPT.inc(total)
    return total


async def sweeper(pool: asyncpg.Pool, interval_s: float) -> None:
    while True:
        try:
            deleted = await sweep_once(pool)
            if deleted:
                _log.info("prompt log swept", deleted=deleted)
        except POSTGRES_ERRORS as exc:
            _log.warning("prompt log sweep failed", error=type(exc).__name__)
        await asyncio.sleep(interval_s)
