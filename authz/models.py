"""Model policy: Ollama's name comparison, cloud models, and which models a caller may use.

This module is the one owner of the rule; Check (``authz.check``) and the admin API
(``authz.admin.models``) both ask it. For a discovered (canonical) model ``m``::

    allowed(m) = (allow_all or m ∈ canonical(allowed_models)) and (allow_cloud or not cloud(m))
    effective  = {m ∈ discovered | allowed(m)}

``allow_all`` and ``allowed_models`` are first resolved key → tenant by :func:`inherit` (a
NULL on the key inherits the tenant's; Check's principal and the admin API both call it);
``allow_cloud`` is the tenant's. Models that run on Ollama's cloud (``:cloud`` / ``-cloud``
tags) leave the building and are removed unless the tenant opted in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol

_DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/")


class Grant(Protocol):
    """What the rule reads of a caller; :class:`authz.principal.Principal` is one."""

    @property
    def allow_all(self) -> bool: ...
    @property
    def allowed_models(self) -> frozenset[str]: ...
    @property
    def allow_cloud(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ModelGrant:
    """A :class:`Grant` from plain values (the admin API's view of a tenant or key)."""

    allow_all: bool
    allowed_models: frozenset[str]
    allow_cloud: bool


@dataclass(frozen=True, slots=True)
class Inherited:
    """A key's model grant after inheritance: its own values or its tenant's."""

    allow_all: bool
    allowed: tuple[str, ...]
    source: Literal["key", "tenant"]  # "key" when the key sets either value


def inherit(
    tenant_allow_all: bool,
    tenant_models: Sequence[str],
    key_allow_all: bool | None,
    key_models: Sequence[str] | None,
) -> Inherited:
    """Key → tenant, each value on its own: a NULL (None) on the key takes the tenant's.
    Without a key, pass None for both key values."""
    allow_all = tenant_allow_all if key_allow_all is None else key_allow_all
    allowed = tenant_models if key_models is None else key_models
    own = key_allow_all is not None or key_models is not None
    return Inherited(allow_all, tuple(allowed), "key" if own else "tenant")


@lru_cache(maxsize=4096)
def canonical(name: str) -> str:
    """Ollama's notion of the same model: case-insensitive, ``:latest`` when no tag is given,
    the default registry and ``library/`` namespace dropped (``llama3`` ≡ ``llama3:latest``
    ≡ ``registry.ollama.ai/library/llama3:latest``). Empty for an empty name."""
    text = name.strip().lower()
    if not text:
        return ""
    for prefix in _DEFAULT_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if ":" not in text.rsplit("/", 1)[-1]:
        text += ":latest"
    return text


def is_cloud(name: str) -> bool:
    tag = canonical(name).rsplit(":", 1)[-1]
    return tag == "cloud" or tag.endswith("-cloud")


@lru_cache(maxsize=1024)
def canonical_set(names: frozenset[str]) -> frozenset[str]:
    return frozenset(c for c in (canonical(n) for n in names) if c)


def _allowed(grant: Grant, name: str) -> bool:
    """The rule for one canonical, discovered name."""
    if not grant.allow_all and name not in canonical_set(grant.allowed_models):
        return False
    return grant.allow_cloud or not is_cloud(name)


def effective(grant: Grant, discovered: frozenset[str]) -> frozenset[str]:
    """The canonical names this caller may use, among the discovered (canonical) ones."""
    return frozenset(m for m in discovered if _allowed(grant, m))


def permits(grant: Grant, discovered: frozenset[str], model: str) -> str | None:
    """The canonical name when ``model`` is in the caller's effective set, else None."""
    name = canonical(model)
    return name if name in discovered and _allowed(grant, name) else None
