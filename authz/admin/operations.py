"""The admin operations in plain typed Python: what each RPC does, without protobuf.

Every mutating operation runs in one transaction with its ``gateway.admin_audit`` row. authz
replicas learn of changes through Postgres NOTIFY (``key_revoked`` from the revocations
trigger, ``key_changed`` from the stores, :mod:`authz.admin.tenantstore` and
:mod:`authz.admin.keystore`). Reads never select a key's hash; the full key leaves only
through :meth:`Admin.create_key`'s return value. :mod:`authz.admin.servicer` is its gRPC edge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from argon2 import PasswordHasher

from authz.admin import (
    audit,
    budgets,
    keystore,
    models,
    pages,
    records,
    tenantstore,
    usage,
)
from authz.admin import backends as admin_backends  # the field `backends` would shadow it
from authz.admin.errors import InvalidArgument
from authz.admin.records import KeyRecord, TenantRecord
from authz.admin.sql import Connection
from authz.admin.validation import check_text
from gateway.backends import Backend
from gateway.periods import Period
from gateway.storage import Store


@dataclass(frozen=True, slots=True)
class Target:
    """A tenant (id or name) or a key (id or prefix); exactly one is set."""

    tenant: str = ""
    key: str = ""


@dataclass(frozen=True, slots=True)
class BudgetView:
    tenant: TenantRecord
    key: KeyRecord | None
    periods: list[budgets.PeriodStatus]


@dataclass(frozen=True, slots=True)
class UsageView:
    window: usage.Window
    rows: list[usage.UsageRow]
    total: usage.UsageRow


@dataclass
class Admin:
    pool: asyncpg.Pool
    hasher: PasswordHasher
    backends: tuple[Backend, ...]  # as configured (gateway.backends.configured)
    discovery: models.ModelSource | None = None
    redis: Store | None = None  # live budget counters (authz's); None: the ledger
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    # -- tenants ------------------------------------------------------------------------

    async def create_tenant(
        self,
        name: str,
        *,
        allow_all: bool,
        allowed_models: Sequence[str],
        allow_cloud: bool,
        limits: Mapping[str, int | None],
    ) -> TenantRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            tenant_id = await tenantstore.create_tenant(
                conn,
                name,
                allow_all=allow_all,
                allowed_models=allowed_models,
                allow_cloud=allow_cloud,
                **limits,
            )
            details = {"allow_all": allow_all, "allowed_models": list(allowed_models), **limits}
            await audit.record(conn, "CreateTenant", f"tenant:{name}", details)
            return await records.tenant(conn, tenant_id)

    async def get_tenant(self, ref: str) -> TenantRecord:
        async with self.pool.acquire() as conn:
            return await records.tenant(conn, ref)

    async def list_tenants(
        self, page_size: int, page_token: str, include_disabled: bool
    ) -> tuple[list[TenantRecord], str]:
        size = pages.size(page_size)
        after = pages.tenants_after(page_token)
        async with self.pool.acquire() as conn:
            found = await records.list_tenants(
                conn, after=after, limit=size + 1, include_disabled=include_disabled
            )
        more = len(found) > size
        found = found[:size]
        token = pages.encode("tenants", [found[-1].name]) if more else ""
        return found, token

    async def update_tenant(self, ref: str, changes: Mapping[str, Any]) -> TenantRecord:
        if not changes:
            raise InvalidArgument("nothing to change: set a field or name it in update_mask")
        async with self.pool.acquire() as conn, conn.transaction():
            tenant = await records.tenant(conn, ref)
            await tenantstore.update_tenant(conn, tenant.id, changes)
            await audit.record(conn, "UpdateTenant", f"tenant:{tenant.name}", changes)
            updated = await records.tenant(conn, tenant.id)
        return updated

    async def set_tenant_status(self, ref: str, status: str, reason: str = "") -> TenantRecord:
        operation = "DisableTenant" if status == "disabled" else "EnableTenant"
        check_text("the reason", reason, 500)
        async with self.pool.acquire() as conn, conn.transaction():
            tenant = await records.tenant(conn, ref)
            await tenantstore.set_tenant_status(conn, tenant.id, status)
            details = {"reason": reason} if reason else {}
            await audit.record(conn, operation, f"tenant:{tenant.name}", details)
            updated = await records.tenant(conn, tenant.id)
        return updated

    # -- keys ---------------------------------------------------------------------------

    async def create_key(
        self,
        tenant_ref: str,
        *,
        name: str,
        scopes: Sequence[str] | None,
        allow_all: bool | None,
        allowed_models: Sequence[str] | None,
        prompt_log: bool,
        limits: Mapping[str, int | None],
        expires_at: datetime | None,
    ) -> tuple[KeyRecord, str]:
        """The new key's record and the full key (returned here and nowhere else, ever)."""
        if expires_at is not None and expires_at <= self.now():
            raise InvalidArgument("expires_at is in the past")
        async with self.pool.acquire() as conn, conn.transaction():
            tenant = await records.tenant(conn, tenant_ref)
            created = await keystore.create_key(
                conn,
                self.hasher,
                tenant.id,
                name=name,
                scopes=scopes,
                allow_all=allow_all,
                allowed_models=allowed_models,
                prompt_log=prompt_log,
                expires_at=expires_at,
                **limits,
            )
            details: dict[str, Any] = {"tenant": tenant.name, "name": name, **limits}
            if scopes is not None:
                details["scopes"] = list(scopes)
            await audit.record(conn, "CreateKey", f"key:{created.prefix}", details)
            return await records.key(conn, created.key_id), created.full_key

    async def get_key(self, ref: str) -> KeyRecord:
        async with self.pool.acquire() as conn:
            return await records.key(conn, ref)

    async def list_keys(
        self, tenant_ref: str, page_size: int, page_token: str, include_revoked: bool
    ) -> tuple[list[KeyRecord], str]:
        size = pages.size(page_size)
        after = pages.keys_after(page_token)
        async with self.pool.acquire() as conn:
            tenant_id = (await records.tenant(conn, tenant_ref)).id if tenant_ref else None
            found = await records.list_keys(
                conn,
                tenant_id=tenant_id,
                after=after,
                limit=size + 1,
                include_revoked=include_revoked,
            )
        more = len(found) > size
        found = found[:size]
        token = ""
        if more:
            token = pages.encode("keys", [found[-1].created_at.isoformat(), found[-1].id])
        return found, token

    async def update_key(self, ref: str, changes: Mapping[str, Any]) -> KeyRecord:
        if not changes:
            raise InvalidArgument("nothing to change: set a field or name it in update_mask")
        async with self.pool.acquire() as conn, conn.transaction():
            key = await records.key(conn, ref)
            await keystore.update_key(conn, key.id, changes)
            await audit.record(conn, "UpdateKey", f"key:{key.prefix}", changes)
            updated = await records.key(conn, key.id)
        return updated

    async def revoke_key(self, ref: str, reason: str) -> KeyRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            key = await records.key(conn, ref)
            revoked = await keystore.revoke_key(conn, key.id, reason)
            details = {"reason": reason.strip(), "already_revoked": not revoked}
            await audit.record(conn, "RevokeKey", f"key:{key.prefix}", details)
            updated = await records.key(conn, key.id)
        return updated

    async def expire_key(self, ref: str, at: datetime | None) -> KeyRecord:
        when = at or self.now()
        async with self.pool.acquire() as conn, conn.transaction():
            key = await records.key(conn, ref)
            await keystore.expire_key(conn, key.id, when)
            await audit.record(conn, "ExpireKey", f"key:{key.prefix}", {"expires_at": when})
            updated = await records.key(conn, key.id)
        return updated

    # -- budgets ------------------------------------------------------------------------

    async def set_budget(self, target: Target, period: Period, tokens: int | None) -> BudgetView:
        changes = {budgets.column(period): tokens}
        if target.key:
            await self.update_key(target.key, changes)
        else:
            await self.update_tenant(target.tenant, changes)
        return await self.get_budget(target)

    async def get_budget(self, target: Target) -> BudgetView:
        async with self.pool.acquire() as conn:
            key, tenant = await self._resolve(conn, target)
            counters = budgets.Counters(conn, self.redis, self.now())
            if key is None:
                return BudgetView(tenant, None, await budgets.tenant_status(counters, tenant))
            return BudgetView(tenant, key, await budgets.key_status(counters, key, tenant))

    # -- models, usage, backends --------------------------------------------------------

    def list_models(self, backend: str = "") -> list[models.BackendListing]:
        """Every configured backend's models, or one backend's (by name or URL)."""
        chosen = (admin_backends.find(self.backends, backend),) if backend else self.backends
        return models.listings(chosen, models.discovered(self.discovery))

    async def effective_models(self, target: Target) -> models.Policy:
        async with self.pool.acquire() as conn:
            key, tenant = await self._resolve(conn, target)
        return models.policy(tenant, key, models.discovered(self.discovery))

    async def usage(
        self, target: Target, window: usage.Window, by: Sequence[usage.Dimension]
    ) -> UsageView:
        if window.start and window.end and window.end <= window.start:
            raise InvalidArgument("end must be after start")
        async with self.pool.acquire() as conn:
            tenant_id = key_id = None
            if target.tenant or target.key:
                key, tenant = await self._resolve(conn, target)
                tenant_id = tenant.id if key is None else None
                key_id = key.id if key is not None else None
            rows, total = await usage.report(
                conn, tenant_id=tenant_id, key_id=key_id, window=window, by=by
            )
        return UsageView(window, rows, total)

    async def probe_backends(self, timeout_s: float) -> list[admin_backends.BackendProbe]:
        if not 0 < timeout_s <= 30:
            raise InvalidArgument("timeout must be between 0 and 30 seconds")
        return await admin_backends.probe_all(self.backends, timeout_s)

    # -- helpers ------------------------------------------------------------------------

    async def _resolve(
        self, conn: Connection, target: Target
    ) -> tuple[KeyRecord | None, TenantRecord]:
        if bool(target.tenant) == bool(target.key):
            raise InvalidArgument("name exactly one target: a tenant or a key")
        if target.key:
            key = await records.key(conn, target.key)
            return key, await records.tenant(conn, key.tenant_id)
        return None, await records.tenant(conn, target.tenant)
