"""Model policy as the admin API reports it: discovered models per backend, and the effective
set of a tenant or key. The rule itself (names, the list, cloud models) is ``authz.models``'s,
the one Check applies, and so is the key → tenant inheritance (``authz.models.inherit``);
this module only feeds a tenant's or key's records to them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from authz import models as rules
from authz.admin import backends
from authz.admin.records import KeyRecord, TenantRecord
from gateway.backends import Backend


class ModelSource(Protocol):
    """What discovery offers: backend URL → the models it hosts (the last good snapshot)."""

    def snapshot(self) -> dict[str, frozenset[str]]: ...


@dataclass(frozen=True, slots=True)
class Policy:
    allow_all: bool
    allowed: tuple[str, ...]
    source: str  # "key" or "tenant"
    models: tuple[str, ...]  # effective: what the target may call now


@dataclass(frozen=True, slots=True)
class BackendListing:
    """One configured backend and the models of its fresh list (none when not ``live``)."""

    name: str
    url: str
    priority: int
    live: bool  # it answered discovery within the TTL (the snapshot has its list)
    models: tuple[str, ...]


def discovered(source: ModelSource | None) -> dict[str, frozenset[str]]:
    return {} if source is None else dict(source.snapshot())


def listings(
    configured: Sequence[Backend], available: dict[str, frozenset[str]]
) -> list[BackendListing]:
    """Every configured backend, live or not, by priority then configuration order: a backend
    that stopped answering shows as not live instead of vanishing from the list."""
    return [
        BackendListing(
            b.name, b.url, b.priority, b.url in available, tuple(sorted(available.get(b.url, ())))
        )
        for b in backends.in_order(configured)
    ]


def policy(
    tenant: TenantRecord, key: KeyRecord | None, available: dict[str, frozenset[str]]
) -> Policy:
    found = rules.inherit(
        tenant.allow_all,
        tenant.allowed_models,
        None if key is None else key.allow_all,
        None if key is None else key.allowed_models,
    )
    everything = rules.canonical_set(frozenset().union(*available.values()))
    grant = rules.ModelGrant(found.allow_all, frozenset(found.allowed), tenant.allow_cloud)
    chosen = rules.effective(grant, everything)
    return Policy(
        allow_all=found.allow_all,
        allowed=() if found.allow_all else found.allowed,
        source=found.source,
        models=tuple(sorted(chosen)),
    )
