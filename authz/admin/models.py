"""Model policy as the admin API reports it: discovered models per backend, and the effective
set of a tenant or key. The rule itself (names, the list, cloud models) is ``authz.models``'s,
the one Check applies; this module only resolves a tenant's or key's records to it, key →
tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from authz import models as rules
from authz.admin.records import KeyRecord, TenantRecord


class ModelSource(Protocol):
    """What discovery offers: backend URL → the models it hosts (the last good snapshot)."""

    def snapshot(self) -> dict[str, frozenset[str]]: ...


@dataclass(frozen=True, slots=True)
class Policy:
    allow_all: bool
    allowed: tuple[str, ...]
    source: str  # "key" or "tenant"
    models: tuple[str, ...]  # effective: what the target may call now


def discovered(source: ModelSource | None) -> dict[str, frozenset[str]]:
    return {} if source is None else dict(source.snapshot())


def policy(
    tenant: TenantRecord, key: KeyRecord | None, available: dict[str, frozenset[str]]
) -> Policy:
    allow_all = tenant.allow_all
    allowed = tenant.allowed_models
    source = "tenant"
    if key is not None and key.allow_all is not None:
        allow_all, source = key.allow_all, "key"
    if key is not None and key.allowed_models is not None:
        allowed, source = key.allowed_models, "key"
    everything = rules.canonical_set(frozenset().union(*available.values()))
    grant = rules.ModelGrant(allow_all, frozenset(allowed), tenant.allow_cloud)
    chosen = rules.effective(grant, everything)
    return Policy(
        allow_all=allow_all,
        allowed=() if allow_all else allowed,
        source=source,
        models=tuple(sorted(chosen)),
    )
