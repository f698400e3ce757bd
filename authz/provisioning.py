"""Creating tenants and keys in Postgres. The admin API calls this; so do the dev stack's
bootstrap and the tests' fixtures. The full key exists only in the return value."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
from argon2 import PasswordHasher

from gateway import apikeys

TENANT_LIMIT_COLUMNS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent",
    "budget_daily",
    "budget_monthly",
    "budget_total",
    "default_max_tokens",
    "keep_alive_min_s",
    "keep_alive_max_s",
)
KEY_LIMIT_COLUMNS = TENANT_LIMIT_COLUMNS[:6]


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key_id: str
    prefix: str
    full_key: str


async def create_tenant(
    conn: asyncpg.Connection | asyncpg.Pool,
    name: str,
    *,
    allow_all: bool = False,
    allowed_models: Iterable[str] = (),
    allow_cloud: bool = False,
    **limits: Any,
) -> str:
    unknown = set(limits) - set(TENANT_LIMIT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown tenant limits: {sorted(unknown)}")
    tenant_id: str = await conn.fetchval(
        "INSERT INTO gateway.tenants (name, allow_all, allowed_models, allow_cloud)"
        " VALUES ($1, $2, $3, $4) RETURNING id::text",
        name,
        allow_all,
        list(allowed_models),
        allow_cloud,
    )
    cols = ["tenant_id", *limits]
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    await conn.execute(
        f"INSERT INTO gateway.tenant_limits ({', '.join(cols)}) VALUES ({params})",  # noqa: S608
        tenant_id,
        *limits.values(),
    )
    return tenant_id


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    ph: PasswordHasher,
    tenant_id: str,
    *,
    name: str = "",
    scopes: Iterable[str] | None = None,
    allow_all: bool | None = None,
    allowed_models: Iterable[str] | None = None,
    prompt_log: bool = False,
    expires_at: Any = None,
    **limits: Any,
) -> CreatedKey:
    unknown = set(limits) - set(KEY_LIMIT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown key limits: {sorted(unknown)}")
    new = apikeys.generate(ph)
    key_id: str = await conn.fetchval(
        "INSERT INTO gateway.api_keys (tenant_id, prefix, key_hash, name, scopes, allow_all,"
        " allowed_models, prompt_log, expires_at)"
        " VALUES ($1, $2, $3, $4, COALESCE($5, '{chat,embeddings,models}'::text[]), $6, $7,"
        " $8, $9) RETURNING id::text",
        tenant_id,
        new.prefix,
        new.hash,
        name,
        None if scopes is None else list(scopes),
        allow_all,
        None if allowed_models is None else list(allowed_models),
        prompt_log,
        expires_at,
    )
    cols = ["key_id", *limits]
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    await conn.execute(
        f"INSERT INTO gateway.key_limits ({', '.join(cols)}) VALUES ({params})",  # noqa: S608
        key_id,
        *limits.values(),
    )
    return CreatedKey(key_id=key_id, prefix=new.prefix, full_key=new.full)
