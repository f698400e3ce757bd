"""Reading tenants and keys for the admin API: typed records, lookups by id or name/prefix,
keyset-paginated lists. Never selects a key's hash."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from authz.admin.columns import (
    CEILING_COLUMNS,
    KEY_LIMIT_COLUMNS,
    KEY_SETTING_COLUMNS,
    TENANT_LIMIT_COLUMNS,
    TENANT_SETTING_COLUMNS,
)
from authz.admin.errors import NotFound
from authz.admin.sql import Connection
from authz.admin.validation import check_text
from gateway import apikeys


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    name: str
    status: str  # active | disabled
    allow_all: bool
    allowed_models: tuple[str, ...]
    allow_cloud: bool
    limits: dict[str, int | None]  # every TENANT_LIMIT_COLUMNS entry
    ceilings: dict[str, Any]  # every CEILING_COLUMNS entry; None: the gateway's default
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    tenant_id: str
    tenant: str
    prefix: str
    name: str
    status: str  # active | revoked (expiry is derived from expires_at)
    scopes: tuple[str, ...]
    allow_all: bool | None  # None: inherits the tenant's
    allowed_models: tuple[str, ...] | None  # None: inherits the tenant's
    prompt_log: bool
    limits: dict[str, int | None]  # every KEY_LIMIT_COLUMNS entry; None inherits
    ceilings: dict[str, Any]  # every CEILING_COLUMNS entry; None inherits
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None
    last_used_at: datetime | None = None  # accounting writes it (accounting/audit.py)


_TENANT_SQL = """
SELECT t.id::text AS id, t.name, t.status, t.allow_all, t.allowed_models, t.allow_cloud,
       t.created_at, t.updated_at, {limits}
  FROM gateway.tenants t
  LEFT JOIN gateway.tenant_limits l ON l.tenant_id = t.id
""".format(limits=", ".join(f"l.{c}" for c in TENANT_SETTING_COLUMNS))

_KEY_SQL = """
SELECT k.id::text AS id, k.tenant_id::text AS tenant_id, t.name AS tenant, k.prefix, k.name,
       k.status, k.scopes, k.allow_all, k.allowed_models, k.prompt_log, k.expires_at,
       k.created_at, k.updated_at, k.revoked_at, k.revoked_reason, k.last_used_at, {limits}
  FROM gateway.api_keys k
  JOIN gateway.tenants t ON t.id = k.tenant_id
  LEFT JOIN gateway.key_limits l ON l.key_id = k.id
""".format(limits=", ".join(f"l.{c}" for c in KEY_SETTING_COLUMNS))

_MAX_REF = 1000  # an id, a name, a prefix or a whole key: far shorter
_PREFIX = re.compile(r"(?:nz_)?([a-z2-7]{12})_?")


def _ceilings(row: asyncpg.Record) -> dict[str, Any]:
    found = {c: row[c] for c in CEILING_COLUMNS}
    if found["allowed_options"] is not None:
        found["allowed_options"] = tuple(found["allowed_options"])
    return found


def _tenant(row: asyncpg.Record) -> TenantRecord:
    defaults = {"default_max_tokens": 1024, "keep_alive_min_s": 60, "keep_alive_max_s": 1800}
    limits = {c: row[c] for c in TENANT_LIMIT_COLUMNS}
    for column, value in defaults.items():
        if limits[column] is None:
            limits[column] = value
    return TenantRecord(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        allow_all=row["allow_all"],
        allowed_models=tuple(row["allowed_models"]),
        allow_cloud=row["allow_cloud"],
        limits=limits,
        ceilings=_ceilings(row),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _key(row: asyncpg.Record) -> KeyRecord:
    models = row["allowed_models"]
    return KeyRecord(
        id=row["id"],
        tenant_id=row["tenant_id"],
        tenant=row["tenant"],
        prefix=row["prefix"],
        name=row["name"],
        status=row["status"],
        scopes=tuple(row["scopes"]),
        allow_all=row["allow_all"],
        allowed_models=None if models is None else tuple(models),
        prompt_log=row["prompt_log"],
        limits={c: row[c] for c in KEY_LIMIT_COLUMNS},
        ceilings=_ceilings(row),
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        revoked_at=row["revoked_at"],
        revoked_reason=row["revoked_reason"],
        last_used_at=row["last_used_at"],
    )


def _as_uuid(ref: str) -> str | None:
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        return None


async def tenant(conn: Connection, ref: str) -> TenantRecord:
    """The tenant with this id or name; NotFound otherwise."""
    ref = check_text("the tenant", ref, _MAX_REF).strip()
    if not ref:
        raise NotFound("no tenant given")
    tenant_id = _as_uuid(ref)
    if tenant_id is not None:
        row = await conn.fetchrow(_TENANT_SQL + " WHERE t.id = $1::uuid", tenant_id)
    else:
        row = await conn.fetchrow(_TENANT_SQL + " WHERE t.name = $1", ref)
    if row is None:
        # Echo names only: what was given might be a whole key pasted into the wrong field.
        shown = f" {ref!r}" if apikeys.parse_prefix(ref) is None and len(ref) <= 63 else ""
        raise NotFound(f"tenant{shown} not found")
    return _tenant(row)


async def key(conn: Connection, ref: str) -> KeyRecord:
    """The key with this id, public prefix (``abc…``, ``nz_abc…``) or whole key; NotFound
    otherwise."""
    ref = check_text("the key", ref, _MAX_REF).strip()
    if not ref:
        raise NotFound("no key given")
    key_id = _as_uuid(ref)
    short = _PREFIX.fullmatch(ref)
    # A whole key (found in a log, say) names its key too: revoking it needs no lookup first.
    prefix = apikeys.parse_prefix(ref) or (short.group(1) if short else None)
    if key_id is not None:
        row = await conn.fetchrow(_KEY_SQL + " WHERE k.id = $1::uuid", key_id)
    elif prefix is not None:
        row = await conn.fetchrow(_KEY_SQL + " WHERE k.prefix = $1", prefix)
    else:
        row = None
    if row is None:
        # Never echo what was given: it might be a whole key pasted by mistake.
        raise NotFound("key not found (give its id or its 12-character prefix)")
    return _key(row)


async def list_tenants(
    conn: Connection, *, after: str | None, limit: int, include_disabled: bool
) -> list[TenantRecord]:
    """Tenants ordered by name, starting after the name ``after``."""
    rows = await conn.fetch(
        _TENANT_SQL + " WHERE ($1::text IS NULL OR t.name > $1)"
        " AND ($2 OR t.status = 'active') ORDER BY t.name LIMIT $3",
        after,
        include_disabled,
        limit,
    )
    return [_tenant(r) for r in rows]


async def list_keys(
    conn: Connection,
    *,
    tenant_id: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
    include_revoked: bool,
) -> list[KeyRecord]:
    """Keys ordered by (created_at, id), starting after ``after``."""
    args: list[Any] = [tenant_id, include_revoked, limit]
    where = "($1::uuid IS NULL OR k.tenant_id = $1::uuid) AND ($2 OR k.status = 'active')"
    if after is not None:
        args.extend(after)
        where += " AND (k.created_at, k.id) > ($4, $5::uuid)"
    rows = await conn.fetch(
        _KEY_SQL + f" WHERE {where} ORDER BY k.created_at, k.id LIMIT $3",
        *args,
    )
    return [_key(r) for r in rows]
