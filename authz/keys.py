"""The key check: presented bearer key → Principal, argon2id only on the cold path.

Verified keys are cached by :func:`gateway.apikeys.cache_id` (a hash of the whole presented
key, never the prefix alone) in process and in Redis, both with a TTL. Redis holds one hash
per prefix, ``nz:key:{<prefix>}`` (field = cache id, value = the principal as JSON), so a
revocation drops every cached entry of a key at once and leaves a ``revoked`` tombstone that
stops a verification already in flight from caching the key again.

A wrong key costs one argon2 verify, then nothing while it is in the negative cache; wrong
keys for one prefix are counted in Redis (``nz:keyfail:{<prefix>}``) and past
``FAILURE_LIMIT`` in ``FAILURE_WINDOW_S`` a prefix gets at most one verify per
``LOCKED_VERIFY_INTERVAL_MS`` across all replicas (``nz:keytry:{<prefix>}``), so replaying a
known prefix cannot burn CPU, and the key's owner is slowed down, never locked out.
Concurrent cold checks of one key share one verify; verifies run in worker threads, at most
``VERIFY_CONCURRENCY`` at a time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from prometheus_client import Counter
from redis.exceptions import RedisError

from authz.principal import PRINCIPAL_SQL, Principal, from_row
from gateway import apikeys, logs

ARGON2_VERIFIES = Counter(
    "authz_argon2_verifications_total", "argon2id verifications performed (cold key checks)"
)
KEY_CACHE = Counter("authz_key_cache_total", "key lookups by where they were answered", ["tier"])

NEGATIVE_TTL_S = 10.0
FAILURE_LIMIT = 10
FAILURE_WINDOW_S = 60
LOCKED_VERIFY_INTERVAL_MS = 1000
VERIFY_CONCURRENCY = 4
_MAX_ENTRIES = 100_000
_REVOKED = "revoked"
_log = logs.get("authz.keys")

# Cache a verified principal unless the prefix carries the revocation tombstone.
_STORE = """
if redis.call('HEXISTS', KEYS[1], 'revoked') == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
# Drop every cached entry of a prefix and leave the tombstone.
_REVOKE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'revoked', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""

_STORE_ERRORS = (TimeoutError, OSError, RedisError, asyncpg.PostgresError, asyncpg.InterfaceError)


class StoreUnavailable(Exception):
    """The key could not be checked (Postgres or Redis unreachable): the caller answers 503."""


def cache_key(prefix: str) -> str:
    return f"nz:key:{{{prefix}}}"


def failure_key(prefix: str) -> str:
    return f"nz:keyfail:{{{prefix}}}"


def trickle_key(prefix: str) -> str:
    return f"nz:keytry:{{{prefix}}}"


@dataclass(slots=True)
class _Cached:
    principal: Principal
    until: float


class KeyStore:
    def __init__(
        self, pool: asyncpg.Pool, redis: aioredis.Redis, ph: PasswordHasher, ttl_s: float
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._ph = ph
        self._ttl = ttl_s
        self._redis_ttl = max(1, round(ttl_s))
        self._cache: dict[str, _Cached] = {}
        self._by_prefix: dict[str, set[str]] = {}
        self._negative: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[Principal | None]] = {}
        self._epoch = 0  # bumped by every eviction: a cold check that straddles one is not cached
        self._verify_slots = asyncio.Semaphore(VERIFY_CONCURRENCY)
        self._store = redis.register_script(_STORE)
        self._revoke = redis.register_script(_REVOKE)
        self._fail = redis.register_script(_FAIL)

    async def lookup(self, presented: str) -> Principal | None:
        """The principal for a presented key, None when it is not a valid key.

        Raises :class:`StoreUnavailable` when the answer depends on a store that is down.
        """
        prefix = apikeys.parse_prefix(presented)
        if prefix is None:
            return None
        ident = apikeys.cache_id(presented)
        now = time.monotonic()
        cached = self._cache.get(ident)
        if cached is not None and cached.until > now:
            KEY_CACHE.labels("process").inc()
            return cached.principal
        if self._negative.get(ident, 0.0) > now:
            KEY_CACHE.labels("negative").inc()
            return None
        task = self._inflight.get(ident)
        if task is None:
            task = asyncio.ensure_future(self._cold(prefix, ident, presented))
            self._inflight[ident] = task
            task.add_done_callback(lambda _: self._inflight.pop(ident, None))
        return await asyncio.shield(task)

    async def _cold(self, prefix: str, ident: str, presented: str) -> Principal | None:
        epoch = self._epoch
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(cache_key(prefix), [ident, _REVOKED])
                pipe.get(failure_key(prefix))
                (shared, revoked), failures = await pipe.execute()
        except _STORE_ERRORS as exc:
            raise StoreUnavailable from exc
        if revoked is not None:
            self._reject(ident)
            return None
        if shared is not None:
            KEY_CACHE.labels("redis").inc()
            principal = Principal.from_json(shared)
            self._remember(ident, principal, epoch)
            return principal
        if failures is not None and int(failures) >= FAILURE_LIMIT:
            try:
                turn = await self._redis.set(
                    trickle_key(prefix), "1", nx=True, px=LOCKED_VERIFY_INTERVAL_MS
                )
            except _STORE_ERRORS as exc:
                raise StoreUnavailable from exc
            if not turn:
                KEY_CACHE.labels("prefix_locked").inc()
                return None
        try:
            row = await self._pool.fetchrow(PRINCIPAL_SQL, prefix)
        except _STORE_ERRORS as exc:
            raise StoreUnavailable from exc
        if row is None:
            self._reject(ident)
            return None
        principal = from_row(row)
        if not principal.active:
            self._reject(ident)
            return None
        async with self._verify_slots:
            ARGON2_VERIFIES.inc()
            ok = await asyncio.to_thread(apikeys.verify, self._ph, principal.key_hash, presented)
        KEY_CACHE.labels("argon2").inc()
        try:
            if not ok:
                await self._fail(keys=[failure_key(prefix)], args=[FAILURE_WINDOW_S])
                self._reject(ident)
                return None
            if epoch != self._epoch:
                return principal  # evicted meanwhile: answer this Check, cache nothing
            await self._store(
                keys=[cache_key(prefix)], args=[ident, principal.to_json(), self._redis_ttl]
            )
        except _STORE_ERRORS as exc:
            raise StoreUnavailable from exc
        self._remember(ident, principal, epoch)
        return principal

    def _reject(self, ident: str) -> None:
        if len(self._negative) >= _MAX_ENTRIES:
            self._negative.clear()
        self._negative[ident] = time.monotonic() + NEGATIVE_TTL_S

    def _remember(self, ident: str, principal: Principal, epoch: int) -> None:
        if epoch != self._epoch:
            return  # an eviction happened meanwhile: do not resurrect what it removed
        if len(self._cache) >= _MAX_ENTRIES:
            self._drop_local()
        self._cache[ident] = _Cached(principal, time.monotonic() + self._ttl)
        self._by_prefix.setdefault(principal.prefix, set()).add(ident)

    def _drop_local(self) -> None:
        self._epoch += 1
        self._cache.clear()
        self._by_prefix.clear()

    async def evict(self, prefix: str, *, revoked: bool = True) -> None:
        """Forget a key everywhere: this process at once, then the shared cache (retried for a
        cache lifetime if Redis is unreachable). A revocation leaves the tombstone; a mere
        change (``revoked=False``) just drops the cached copies."""
        self._epoch += 1
        for ident in self._by_prefix.pop(prefix, set()):
            self._cache.pop(ident, None)
        delay = 0.1
        deadline = time.monotonic() + max(self._ttl, 1.0)
        while True:
            try:
                if revoked:
                    await self._revoke(
                        keys=[cache_key(prefix)], args=[max(60, 2 * self._redis_ttl)]
                    )
                else:
                    await self._redis.delete(cache_key(prefix))
                return
            except _STORE_ERRORS as exc:
                if time.monotonic() > deadline:
                    _log.warning("revocation not written to the shared cache", error=str(exc))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def flush(self) -> None:
        """Forget every cached key (after a LISTEN gap a revocation may have been missed).

        The shared cache goes first and this process's last: a Check arriving while the scan
        runs could otherwise copy a stale Redis entry back into the emptied local cache, where
        it would live for a whole cache lifetime. The final drop bumps the epoch, so a cold
        check that read the old Redis entry does not store it either."""
        try:
            batch: list[str] = []
            async for name in self._redis.scan_iter(match="nz:key:{*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    await self._redis.delete(*batch)
                    batch.clear()
            if batch:
                await self._redis.delete(*batch)
        except _STORE_ERRORS as exc:
            _log.warning("shared key cache not flushed", error=str(exc))
        self._drop_local()
        self._negative.clear()
