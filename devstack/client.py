"""A handle on a running local stack for tests and benchmarks: provision tenants and keys
(straight into PostgreSQL, cheap argon2 parameters), run SQL, read a service's metrics."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from authz.admin import keystore, tenantstore
from devstack.stack import Stack
from gateway import apikeys

T = TypeVar("T")
_names = itertools.count(1)
# Cheap argon2 parameters for test and benchmark keys only; the service verifies whatever the
# hash says.
_HASHER = apikeys.hasher(time_cost=1, memory_kib=8192)


@dataclass(frozen=True)
class Caller:
    """A tenant with one key, as the tests call the gateway."""

    tenant_id: str
    tenant: str
    key_id: str
    key: str

    @property
    def prefix(self) -> str:
        prefix = apikeys.parse_prefix(self.key)
        assert prefix is not None
        return prefix

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class StackClient:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.listener

    def _db(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def run() -> T:
            conn = await asyncpg.connect(self.stack.database_url)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(run())

    def metric(self, service: str, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels``, as a Prometheus
        scrape of the service reads them."""
        text = httpx.get(self.stack.metrics_url(service), timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return self._db(lambda conn: conn.fetch(query, *args))

    def tenant(self, name: str | None = None, **kwargs: Any) -> tuple[str, str]:
        """Create a tenant; returns (tenant_id, name)."""
        tenant_name = name or f"t{next(_names)}-{id(self) % 1000}"
        tenant_id = self._db(lambda c: tenantstore.create_tenant(c, tenant_name, **kwargs))
        return tenant_id, tenant_name

    def key(self, tenant_id: str, **kwargs: Any) -> keystore.CreatedKey:
        return self._db(lambda c: keystore.create_key(c, _HASHER, tenant_id, **kwargs))

    def caller(self, tenant: dict[str, Any] | None = None, **key_kwargs: Any) -> Caller:
        """A fresh tenant (allow_all unless told otherwise) with one key."""
        tenant_id, name = self.tenant(**{"allow_all": True, **(tenant or {})})
        created = self.key(tenant_id, **key_kwargs)
        return Caller(tenant_id, name, created.key_id, created.full_key)

    def new_key(self, tenant: dict[str, Any] | None = None, **key_kwargs: Any) -> str:
        """A fresh tenant (allow_all unless told otherwise) with one key; the full key."""
        options = {"allow_all": True, **(tenant or {})}
        tenant_id, _ = self.tenant(**options)
        return self.key(tenant_id, **key_kwargs).full_key
