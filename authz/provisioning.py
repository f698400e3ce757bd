"""Creating and changing tenants and keys in Postgres. The admin API calls this; so do the dev
stack's bootstrap and the tests' fixtures. The full key exists only in the return value.

Every rule about what a valid tenant or key looks like lives here; the errors say what is
wrong in words an operator can act on (the admin API returns them as the status message).
Changes that affect a key's answer NOTIFY ``key_changed`` with the key's prefix so that every
authz replica drops its cached copy; revocation goes through ``gateway.revocations``, whose
trigger marks the key and NOTIFYs ``key_revoked``.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from argon2 import PasswordHasher
from asyncpg.pool import PoolConnectionProxy

from authz import fields
from gateway import apikeys
from gateway.signals import KEY_CHANGED_CHANNEL, KEY_REVOKED_CHANNEL

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
# What a request body may ask for, on tenants and keys alike (NULL: the default / inherit).
CEILING_COLUMNS = ("max_output_tokens", "max_num_ctx", "allowed_options")
# Every settable column of gateway.tenant_limits and gateway.key_limits.
TENANT_SETTING_COLUMNS = (*TENANT_LIMIT_COLUMNS, *CEILING_COLUMNS)
KEY_SETTING_COLUMNS = (*KEY_LIMIT_COLUMNS, *CEILING_COLUMNS)
# Tenant columns that cannot be NULL: "clearing" one restores its default.
_TENANT_DEFAULTED = frozenset(
    {"allow_all", "allowed_models", "allow_cloud", *TENANT_LIMIT_COLUMNS[6:]}
)
TENANT_COLUMNS = ("allow_all", "allowed_models", "allow_cloud")
KEY_COLUMNS = ("name", "scopes", "allow_all", "allowed_models", "prompt_log")
SCOPES = ("chat", "embeddings", "models")
# KEY_REVOKED_CHANNEL (the revocation trigger's) is also sent, without marking the key revoked,
# when a key must stop working at once for another reason: its tenant was disabled, or it
# expired now. KEY_CHANGED_CHANNEL: replicas drop their cached copy.

_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_MAX_LIMIT = 1 << 62
_INT32_COLUMNS = frozenset(
    {
        *("requests_per_minute", "tokens_per_minute", "max_concurrent"),
        *TENANT_LIMIT_COLUMNS[6:],
        "max_num_ctx",
    }
)
_AT_LEAST_ONE = frozenset({"default_max_tokens", "max_output_tokens", "max_num_ctx"})


class ProvisioningError(Exception):
    """Base class: the message is meant for the operator."""


class NotFound(ProvisioningError):
    pass


class AlreadyExists(ProvisioningError):
    pass


class InvalidArgument(ProvisioningError, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key_id: str
    prefix: str
    full_key: str


# A connection, or one borrowed from a pool; functions that take a Pool acquire one.
Connection = asyncpg.Connection | PoolConnectionProxy
Conn = Connection | asyncpg.Pool

# -- validation -----------------------------------------------------------------------------


def check_tenant_name(name: str) -> str:
    if not _TENANT_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid tenant name {name!r}: 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def check_text(what: str, value: str, max_chars: int) -> str:
    """A free-text field (a key's name, a reason): at most ``max_chars`` characters and no
    control character (C0, DEL, C1: a NUL Postgres cannot store, line breaks and escapes that
    forge log lines or rewrite a terminal). The message never repeats the value."""
    if len(value) > max_chars:
        raise InvalidArgument(f"{what} is longer than {max_chars} characters")
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc":
            raise InvalidArgument(
                f"{what} must not contain control characters"
                f" (U+{ord(char):04X} at position {position})"
            )
    return value


def check_models(models: Iterable[str]) -> list[str]:
    result: list[str] = []
    for model in models:
        if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
            raise InvalidArgument(f"invalid model name {model!r}")
        if model not in result:
            result.append(model)
    return result


def check_scopes(scopes: Iterable[str]) -> list[str]:
    result = list(dict.fromkeys(scopes))
    unknown = [s for s in result if s not in SCOPES]
    if unknown:
        raise InvalidArgument(f"unknown scopes {unknown}: use {', '.join(SCOPES)}")
    if not result:
        raise InvalidArgument("a key needs at least one scope")
    return result


def check_options(names: Any) -> list[str]:
    """``allowed_options``: a list of Ollama option names (see :mod:`authz.fields`)."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise InvalidArgument("allowed_options must be a list of option names")
    listed = list(names)
    if not all(isinstance(n, str) for n in listed):
        raise InvalidArgument("allowed_options must be a list of option names")
    try:
        return fields.check_option_names(listed)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def check_limits(limits: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    allowed_set = set(allowed)
    unknown = sorted(set(limits) - allowed_set)
    if unknown:
        raise InvalidArgument(f"unknown limits: {unknown}")
    result: dict[str, Any] = {}
    for name, value in limits.items():
        if value is None:
            result[name] = None
            continue
        if name == "allowed_options":
            result[name] = check_options(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{name} must be an integer")
        top = (1 << 31) - 1 if name in _INT32_COLUMNS else _MAX_LIMIT
        if name == "max_output_tokens":
            top = fields.OUTPUT_CEILING
        if not 0 <= value <= top:
            raise InvalidArgument(f"{name} must be between 0 and {top}, not {value}")
        if name in _AT_LEAST_ONE and value == 0:
            raise InvalidArgument(f"{name} must be at least 1")
        result[name] = value
    low, high = result.get("keep_alive_min_s"), result.get("keep_alive_max_s")
    if low is not None and high is not None and high < low:
        raise InvalidArgument("keep_alive_max_s must not be below keep_alive_min_s")
    return result


def _db_error(exc: asyncpg.PostgresError) -> ProvisioningError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return AlreadyExists("already exists")
    if isinstance(exc, asyncpg.CheckViolationError | asyncpg.NotNullViolationError):
        constraint = getattr(exc, "constraint_name", None) or "a constraint"
        return InvalidArgument(f"rejected by {constraint}")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return NotFound("tenant not found")
    if isinstance(exc, asyncpg.DataError):
        return InvalidArgument(f"invalid value: {exc.__class__.__name__}")
    raise exc


# -- tenants --------------------------------------------------------------------------------


async def _insert_limits(
    conn: Connection, table: str, owner_column: str, owner_id: str, values: dict[str, Any]
) -> None:
    """The limits row of a new tenant or key; ``values`` are already checked column names."""
    cols = [owner_column, *values]
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    await conn.execute(
        f"INSERT INTO gateway.{table} ({', '.join(cols)}) VALUES ({params})",  # noqa: S608
        owner_id,
        *values.values(),
    )


async def create_tenant(
    conn: Conn,
    name: str,
    *,
    allow_all: bool = False,
    allowed_models: Iterable[str] = (),
    allow_cloud: bool = False,
    **limits: Any,
) -> str:
    check_tenant_name(name)
    models = check_models(allowed_models)
    values = check_limits(limits, TENANT_SETTING_COLUMNS)
    values = {k: v for k, v in values.items() if v is not None or k not in _TENANT_DEFAULTED}
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            return await create_tenant(
                acquired,
                name,
                allow_all=allow_all,
                allowed_models=models,
                allow_cloud=allow_cloud,
                **values,
            )
    try:
        async with conn.transaction():
            tenant_id: str = await conn.fetchval(
                "INSERT INTO gateway.tenants (name, allow_all, allowed_models, allow_cloud)"
                " VALUES ($1, $2, $3, $4) RETURNING id::text",
                name,
                allow_all,
                models,
                allow_cloud,
            )
            await _insert_limits(conn, "tenant_limits", "tenant_id", tenant_id, values)
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"tenant {name!r} already exists") from None
    except asyncpg.PostgresError as exc:
        raise _db_error(exc) from None
    return tenant_id


def _assignments(changes: Mapping[str, Any], defaulted: frozenset[str]) -> tuple[str, list[Any]]:
    """``col = $2, col2 = DEFAULT, …`` for an UPDATE whose $1 is the row id."""
    parts: list[str] = []
    args: list[Any] = []
    for column, value in changes.items():
        if value is None and column in defaulted:
            parts.append(f"{column} = DEFAULT")
        else:
            args.append(value)
            parts.append(f"{column} = ${len(args) + 1}")
    return ", ".join([*parts, "updated_at = now()"]), args


async def update_tenant(conn: Connection, tenant_id: str, changes: Mapping[str, Any]) -> None:
    """Write ``changes`` (column → value; None clears to NULL or the column's default)."""
    unknown = sorted(set(changes) - {*TENANT_COLUMNS, *TENANT_SETTING_COLUMNS})
    if unknown:
        raise InvalidArgument(f"cannot change {unknown} on a tenant")
    row_changes = {k: v for k, v in changes.items() if k in TENANT_COLUMNS}
    if row_changes.get("allowed_models") is not None:
        row_changes["allowed_models"] = check_models(row_changes["allowed_models"])
    limit_changes = check_limits(
        {k: v for k, v in changes.items() if k in TENANT_SETTING_COLUMNS}, TENANT_SETTING_COLUMNS
    )
    try:
        async with conn.transaction():
            sets, args = _assignments(row_changes, _TENANT_DEFAULTED)
            found = await conn.fetchval(
                f"UPDATE gateway.tenants SET {sets} WHERE id = $1 RETURNING id",  # noqa: S608
                tenant_id,
                *args,
            )
            if found is None:
                raise NotFound("tenant not found")
            if limit_changes:
                sets, args = _assignments(limit_changes, _TENANT_DEFAULTED)
                await conn.execute(
                    "INSERT INTO gateway.tenant_limits (tenant_id) VALUES ($1)"
                    " ON CONFLICT (tenant_id) DO NOTHING",
                    tenant_id,
                )
                await conn.execute(
                    f"UPDATE gateway.tenant_limits SET {sets} WHERE tenant_id = $1",  # noqa: S608
                    tenant_id,
                    *args,
                )
            await _notify_tenant_keys(conn, tenant_id)
    except asyncpg.PostgresError as exc:
        raise _db_error(exc) from None


async def set_tenant_status(conn: Connection, tenant_id: str, status: str) -> None:
    if status not in ("active", "disabled"):
        raise InvalidArgument(f"invalid tenant status {status!r}")
    async with conn.transaction():
        found = await conn.fetchval(
            "UPDATE gateway.tenants SET status = $2, updated_at = now() WHERE id = $1 RETURNING id",
            tenant_id,
            status,
        )
        if found is None:
            raise NotFound("tenant not found")
        channel = KEY_REVOKED_CHANNEL if status == "disabled" else KEY_CHANGED_CHANNEL
        await _notify_tenant_keys(conn, tenant_id, channel)


async def _notify_tenant_keys(
    conn: Connection, tenant_id: str, channel: str = KEY_CHANGED_CHANNEL
) -> None:
    await conn.execute(
        "SELECT pg_notify($2, prefix) FROM gateway.api_keys"
        " WHERE tenant_id = $1 AND status = 'active'",
        tenant_id,
        channel,
    )


# -- keys -----------------------------------------------------------------------------------


async def create_key(
    conn: Conn,
    ph: PasswordHasher,
    tenant_id: str,
    *,
    name: str = "",
    scopes: Iterable[str] | None = None,
    allow_all: bool | None = None,
    allowed_models: Iterable[str] | None = None,
    prompt_log: bool = False,
    expires_at: datetime | None = None,
    **limits: Any,
) -> CreatedKey:
    scope_list = None if scopes is None else check_scopes(scopes)
    models = None if allowed_models is None else check_models(allowed_models)
    values = check_limits(limits, KEY_SETTING_COLUMNS)
    check_text("the key name", name, 200)
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            return await create_key(
                acquired,
                ph,
                tenant_id,
                name=name,
                scopes=scope_list,
                allow_all=allow_all,
                allowed_models=models,
                prompt_log=prompt_log,
                expires_at=expires_at,
                **values,
            )
    # argon2id hashing takes tens of milliseconds: never on the event loop that serves Check.
    new = await asyncio.to_thread(apikeys.generate, ph)
    try:
        async with conn.transaction():
            key_id: str = await conn.fetchval(
                "INSERT INTO gateway.api_keys (tenant_id, prefix, key_hash, name, scopes,"
                " allow_all, allowed_models, prompt_log, expires_at)"
                " VALUES ($1, $2, $3, $4, COALESCE($5, '{chat,embeddings,models}'::text[]),"
                " $6, $7, $8, $9) RETURNING id::text",
                tenant_id,
                new.prefix,
                new.hash,
                name,
                scope_list,
                allow_all,
                models,
                prompt_log,
                expires_at,
            )
            await _insert_limits(conn, "key_limits", "key_id", key_id, values)
    except asyncpg.PostgresError as exc:
        raise _db_error(exc) from None
    return CreatedKey(key_id=key_id, prefix=new.prefix, full_key=new.full)


async def update_key(conn: Connection, key_id: str, changes: Mapping[str, Any]) -> None:
    """Write ``changes`` (column → value; None clears a nullable column: inherit)."""
    unknown = sorted(set(changes) - {*KEY_COLUMNS, *KEY_SETTING_COLUMNS})
    if unknown:
        raise InvalidArgument(f"cannot change {unknown} on a key")
    row_changes = {k: v for k, v in changes.items() if k in KEY_COLUMNS}
    if "scopes" in row_changes:
        row_changes["scopes"] = check_scopes(row_changes["scopes"] or ())
    if row_changes.get("allowed_models") is not None:
        row_changes["allowed_models"] = check_models(row_changes["allowed_models"])
    for column in ("name", "prompt_log"):
        if column in row_changes and row_changes[column] is None:
            raise InvalidArgument(f"{column} cannot be cleared")
    check_text("the key name", row_changes.get("name") or "", 200)
    limit_changes = check_limits(
        {k: v for k, v in changes.items() if k in KEY_SETTING_COLUMNS}, KEY_SETTING_COLUMNS
    )
    try:
        async with conn.transaction():
            sets, args = _assignments(row_changes, frozenset())
            prefix = await conn.fetchval(
                f"UPDATE gateway.api_keys SET {sets} WHERE id = $1 RETURNING prefix",  # noqa: S608
                key_id,
                *args,
            )
            if prefix is None:
                raise NotFound("key not found")
            if limit_changes:
                sets, args = _assignments(limit_changes, frozenset())
                await conn.execute(
                    "INSERT INTO gateway.key_limits (key_id) VALUES ($1)"
                    " ON CONFLICT (key_id) DO NOTHING",
                    key_id,
                )
                await conn.execute(
                    f"UPDATE gateway.key_limits SET {sets} WHERE key_id = $1",  # noqa: S608
                    key_id,
                    *args,
                )
            await conn.execute("SELECT pg_notify($1, $2)", KEY_CHANGED_CHANNEL, prefix)
    except asyncpg.PostgresError as exc:
        raise _db_error(exc) from None


async def revoke_key(conn: Connection, key_id: str, reason: str) -> bool:
    """Revoke through the outbox (its trigger marks the key and NOTIFYs ``key_revoked``).

    Returns False when the key was already revoked (nothing is written then).
    """
    reason = reason.strip()
    if not reason:
        raise InvalidArgument("a revocation needs a reason")
    check_text("the reason", reason, 500)
    async with conn.transaction():
        status = await conn.fetchval(
            "SELECT status FROM gateway.api_keys WHERE id = $1 FOR UPDATE", key_id
        )
        if status is None:
            raise NotFound("key not found")
        if status == "revoked":
            return False
        await conn.execute(
            "INSERT INTO gateway.revocations (key_id, reason) VALUES ($1, $2)", key_id, reason
        )
    return True


async def expire_key(conn: Connection, key_id: str, at: datetime) -> None:
    if at.tzinfo is None:
        raise InvalidArgument("expires_at needs a time zone")
    async with conn.transaction():
        prefix = await conn.fetchval(
            "UPDATE gateway.api_keys SET expires_at = $2, updated_at = now()"
            " WHERE id = $1 RETURNING prefix",
            key_id,
            at,
        )
        if prefix is None:
            raise NotFound("key not found")
        channel = KEY_REVOKED_CHANNEL if at <= datetime.now(UTC) else KEY_CHANGED_CHANNEL
        await conn.execute("SELECT pg_notify($1, $2)", channel, prefix)
