"""The key check: presented bearer key → Principal, argon2id only on the cold path.

Verified keys are cached by a hash of the whole presented key (never by the prefix alone), in
process with a TTL. On a miss the row is fetched by prefix and the key verified with argon2id
in a worker thread, so the event loop never blocks on hashing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
from argon2 import PasswordHasher
from prometheus_client import Counter

from authz.principal import PRINCIPAL_SQL, Principal, from_row
from gateway import apikeys

ARGON2_VERIFIES = Counter(
    "authz_argon2_verifications_total", "argon2id verifications performed (cold key checks)"
)


class StoreUnavailable(Exception):
    """The key could not be checked (Postgres unreachable): the caller answers 503."""


@dataclass(slots=True)
class _Cached:
    principal: Principal
    until: float


class KeyStore:
    def __init__(self, pool: asyncpg.Pool, ph: PasswordHasher, ttl_s: float) -> None:
        self._pool = pool
        self._ph = ph
        self._ttl = ttl_s
        self._cache: dict[str, _Cached] = {}

    async def lookup(self, presented: str) -> Principal | None:
        """The principal for a presented key, None when it is not a valid key."""
        prefix = apikeys.parse_prefix(presented)
        if prefix is None:
            return None
        ident = apikeys.cache_id(presented)
        cached = self._cache.get(ident)
        now = time.monotonic()
        if cached is not None and cached.until > now:
            return cached.principal
        try:
            row = await self._pool.fetchrow(PRINCIPAL_SQL, prefix)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable from exc
        if row is None:
            return None
        principal = from_row(row)
        ARGON2_VERIFIES.inc()
        ok = await asyncio.to_thread(apikeys.verify, self._ph, principal.key_hash, presented)
        if not ok:
            return None
        self._cache[ident] = _Cached(principal, now + self._ttl)
        return principal

    def evict_prefix(self, prefix: str) -> None:
        for ident in [i for i, c in self._cache.items() if c.principal.prefix == prefix]:
            del self._cache[ident]

    def clear(self) -> None:
        self._cache.clear()
