"""Model policy: Ollama's name comparison, the effective set, cloud models.

``effective = discovered if allow_all else (key.allowed ?? tenant.allowed) ∩ discovered``
(``allow_all = key.allow_all ?? tenant.allow_all``; the NULL inheritance is resolved in
``principal.py``). Models that run on Ollama's cloud (``:cloud`` / ``-cloud`` tags) leave the
building and are removed unless the tenant opted in.
"""

from __future__ import annotations

from functools import lru_cache

from authz.principal import Principal

_DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/")


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


def effective(principal: Principal, discovered: frozenset[str]) -> frozenset[str]:
    """The canonical names this principal may use, among the discovered ones."""
    if principal.allow_all:
        chosen = discovered
    else:
        chosen = canonical_set(principal.allowed_models) & discovered
    if not principal.allow_cloud:
        chosen = frozenset(m for m in chosen if not is_cloud(m))
    return chosen


def permits(principal: Principal, discovered: frozenset[str], model: str) -> str | None:
    """The canonical name when ``model`` is in the principal's effective set, else None."""
    name = canonical(model)
    if not name or name not in discovered:
        return None
    if not principal.allow_all and name not in canonical_set(principal.allowed_models):
        return None
    if not principal.allow_cloud and is_cloud(name):
        return None
    return name
