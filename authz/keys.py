"""The key check: presented bearer key → Principal, argon2id only on the cold path.

Verified keys are cached by :func:`gateway.apikeys.cache_id` (a hash of the whole presented
key, never the prefix alone) in process and in Redis, both with a TTL. Redis holds one hash
per prefix, ``nz:key:{<prefix>}`` (field = cache id, value = the principal as JSON), so a
revocation drops every cached entry of a key at once and leaves a ``revoked`` tombstone that
stops a verification already in flight from caching the key again.

The principal is cached for the key cache TTL (its settings are re-read after it); the fact
that a secret verified is remembered much longer (``verified_ttl_s``, hours), in process and
in ``nz:key:{<prefix>}:verified`` (field = cache id, value = a fingerprint of the argon2 hash
it verified against). A remembered secret is answered with one Postgres read and no argon2,
so a holder who used the key recently never waits for a verify, whoever else is hammering
its prefix. Revocation, ``key_changed`` and a flush drop both.

Wrong keys never lock the owner out. They are counted per (prefix, client address) in Redis
(``nz:keyfail:{<prefix>}:<address>``): past ``FAILURE_LIMIT`` in ``FAILURE_WINDOW_S`` that
address gets at most one verify per ``LOCKED_VERIFY_INTERVAL_MS`` for the prefix
(``nz:keytry:{<prefix>}:<address>``), the others are :class:`AddressThrottled` (429, not
checked); other addresses are untouched. Every 401 that cost a check (a key in no cache) is
also counted per address (``nz:authfail:{<address>}``): past ``address_limit`` in
``address_window_s`` the address is answered :class:`AddressThrottled` for keys in no cache,
without argon2 or Postgres, from the one Redis round trip every cold check makes anyway. An
IPv6 client address counts as its /64.

An unknown prefix (or a disabled key) is verified against a dummy hash with the same
parameters, under the same semaphore, so it answers in the time of a live prefix with a
wrong secret and the answer's timing does not reveal which prefixes are live.

A wrong key costs one argon2 verify, then nothing while it is in the negative cache.
Concurrent cold checks of one key from one address share one verify; verifies run in worker
threads, at most ``VERIFY_CONCURRENCY`` at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
import time
from dataclasses import dataclass

import asyncpg
from argon2 import PasswordHasher
from prometheus_client import Counter

from authz.principal import PRINCIPAL_SQL, Principal, from_row
from gateway import apikeys, budgets, logs, scriptmetrics
from gateway.storage import Store, queue_script
from gateway.storeerrors import STORE_ERRORS, StoreUnavailable

ARGON2_VERIFIES = Counter(
    "authz_argon2_verifications_total", "argon2id verifications performed (cold key checks)"
)
KEY_CACHE = Counter("authz_key_cache_total", "key lookups by where they were answered", ["tier"])
_TIERS = ("process", "negative", "redis", "address_limited", "prefix_locked", "verified", "argon2")
for _tier in _TIERS:
    KEY_CACHE.labels(_tier)  # every tier from the start, at 0

NEGATIVE_TTL_S = 10.0
FAILURE_LIMIT = 10  # wrong keys per (prefix, client address) in FAILURE_WINDOW_S
FAILURE_WINDOW_S = 60
LOCKED_VERIFY_INTERVAL_MS = 1000
VERIFY_CONCURRENCY = 4
_MAX_ENTRIES = 100_000
_REVOKED = "revoked"
_log = logs.get("authz.keys")

# Its Redis scripts, read once at import (KEYS, ARGV and what each returns: its header).
_STORE = budgets.lua("key_store.lua", package="authz")  # cache unless revoked
_REVOKE = budgets.lua("key_revoke.lua", package="authz")  # drop all, leave the tombstone
_FAIL = budgets.lua("key_failure.lua", package="authz")  # a failure in a fixed window
_STORE_SECONDS = scriptmetrics.Timer("key_store")
_REVOKE_SECONDS = scriptmetrics.Timer("key_revoke")
_FAIL_SECONDS = scriptmetrics.Timer("key_failure")  # both of a failure's calls, one pipeline


class AddressThrottled(Exception):
    """Too many failed key checks from this client address (in all, or for this prefix): the
    key was not checked, the caller answers 429 with ``Retry-After``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


def cache_key(prefix: str) -> str:
    return f"nz:key:{{{prefix}}}"


def verified_key(prefix: str) -> str:
    """Under ``nz:key:{`` on purpose: a flush's scan finds it with the cache."""
    return f"nz:key:{{{prefix}}}:verified"


def failure_key(prefix: str, address: str) -> str:
    return f"nz:keyfail:{{{prefix}}}:{address}"


def trickle_key(prefix: str, address: str) -> str:
    return f"nz:keytry:{{{prefix}}}:{address}"


def address_key(address: str) -> str:
    return f"nz:authfail:{{{address}}}"


def address_bucket(client_ip: str) -> str:
    """What failures are counted under: the IPv4 address, or an IPv6 address's /64 (one
    subscriber's allocation), an IPv4-mapped IPv6 address as IPv4."""
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip or "-"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _fingerprint(key_hash: str) -> str:
    """What the verified-secret memory stores: enough to tell the hash it verified against."""
    return hashlib.sha256(key_hash.encode("utf-8")).hexdigest()[:32]


@dataclass(slots=True)
class _Cached:
    principal: Principal
    until: float


@dataclass(slots=True)
class _Verified:
    fingerprint: str
    until: float


class KeyStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Store,
        ph: PasswordHasher,
        ttl_s: float,
        *,
        verified_ttl_s: float = 12 * 3600.0,
        address_limit: int = 60,
        address_window_s: int = 60,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._ph = ph
        self._ttl = ttl_s
        self._redis_ttl = max(1, round(ttl_s))
        self._verified_ttl = max(ttl_s, verified_ttl_s)
        self._address_limit = address_limit
        self._address_window = max(1, address_window_s)
        # What an unknown prefix is verified against: same parameters as a real key's hash.
        self._dummy_hash = ph.hash(secrets.token_urlsafe(32))
        self._cache: dict[str, _Cached] = {}
        self._verified: dict[str, _Verified] = {}
        self._by_prefix: dict[str, set[str]] = {}
        self._negative: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[Principal | None]] = {}
        self._epoch = 0  # bumped by every eviction: a cold check that straddles one is not cached
        self._verify_slots = asyncio.Semaphore(VERIFY_CONCURRENCY)
        self._store = redis.register_script(_STORE)
        self._revoke = redis.register_script(_REVOKE)
        self._fail = redis.register_script(_FAIL)

    async def lookup(self, presented: str, client_ip: str = "") -> Principal | None:
        """The principal for a presented key, None when it is not a valid key.

        Raises :class:`StoreUnavailable` when the answer depends on a store that is down, and
        :class:`AddressThrottled` when it would need a check the client address has run out
        of.
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
        address = address_bucket(client_ip)
        flight = f"{ident}|{address}"
        task = self._inflight.get(flight)
        if task is None:
            task = asyncio.ensure_future(self._cold(prefix, ident, presented, address))
            self._inflight[flight] = task
            task.add_done_callback(lambda _: self._inflight.pop(flight, None))
        return await asyncio.shield(task)

    async def _cold(
        self, prefix: str, ident: str, presented: str, address: str
    ) -> Principal | None:
        epoch = self._epoch
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(cache_key(prefix), [ident, _REVOKED])
                pipe.hget(verified_key(prefix), ident)
                pipe.get(failure_key(prefix, address))
                pipe.get(address_key(address))
                pipe.ttl(address_key(address))
                (shared, revoked), remembered, failures, refused, refused_ttl = await pipe.execute()
        except STORE_ERRORS as exc:
            raise StoreUnavailable from exc
        if revoked is not None:
            self._reject(ident)
            return None
        if shared is not None:
            KEY_CACHE.labels("redis").inc()
            hit = Principal.from_json(shared)
            self._remember(ident, hit, epoch, remembered)
            return hit
        fingerprint = remembered or self._remembered(ident)
        if fingerprint is None:
            # A check that may cost argon2: only within the address's and the prefix's limits.
            if refused is not None and int(refused) >= self._address_limit:
                KEY_CACHE.labels("address_limited").inc()
                raise AddressThrottled(max(1, int(refused_ttl)))
            locked = failures is not None and int(failures) >= FAILURE_LIMIT
            if locked and not await self._turn(prefix, address):
                KEY_CACHE.labels("prefix_locked").inc()
                raise AddressThrottled(max(1, LOCKED_VERIFY_INTERVAL_MS // 1000))
        try:
            row = await self._pool.fetchrow(PRINCIPAL_SQL, prefix)
        except STORE_ERRORS as exc:
            raise StoreUnavailable from exc
        found = None if row is None else from_row(row)
        principal: Principal | None
        if found is not None and fingerprint == _fingerprint(found.key_hash):
            KEY_CACHE.labels("verified").inc()  # verified before: no argon2
            principal = found if found.active else None
        else:
            principal = await self._verify(found, presented)
        try:
            if principal is None:
                await self._count_failure(prefix, address)
                self._reject(ident)
                return None
            if epoch != self._epoch:
                return principal  # evicted meanwhile: answer this Check, cache nothing
            fingerprint = _fingerprint(principal.key_hash)
            await _STORE_SECONDS.run(
                self._store(
                    keys=[cache_key(prefix), verified_key(prefix)],
                    args=[
                        ident,
                        principal.to_json(),
                        self._redis_ttl,
                        fingerprint,
                        max(1, round(self._verified_ttl)),
                    ],
                )
            )
        except STORE_ERRORS as exc:
            raise StoreUnavailable from exc
        self._remember(ident, principal, epoch, fingerprint)
        return principal

    async def _verify(self, found: Principal | None, presented: str) -> Principal | None:
        """One argon2 verify, whether or not the prefix is a live key: an unknown or disabled
        one is verified against the dummy hash, so both take the same time."""
        live = found is not None and found.active
        stored = found.key_hash if found is not None and live else self._dummy_hash
        async with self._verify_slots:
            ARGON2_VERIFIES.inc()
            ok = await asyncio.to_thread(apikeys.verify, self._ph, stored, presented)
        KEY_CACHE.labels("argon2").inc()
        return found if ok and live else None

    async def _turn(self, prefix: str, address: str) -> bool:
        """Past the prefix's failure limit for this address: one verify per interval."""
        try:
            return bool(
                await self._redis.set(
                    trickle_key(prefix, address), "1", nx=True, px=LOCKED_VERIFY_INTERVAL_MS
                )
            )
        except STORE_ERRORS as exc:
            raise StoreUnavailable from exc

    async def _count_failure(self, prefix: str, address: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            # Registered scripts: EVALSHA, not the script's text with every failure.
            await queue_script(pipe, self._fail, [failure_key(prefix, address)], [FAILURE_WINDOW_S])
            await queue_script(pipe, self._fail, [address_key(address)], [self._address_window])
            await _FAIL_SECONDS.run(pipe.execute())

    def _remembered(self, ident: str) -> str | None:
        verified = self._verified.get(ident)
        if verified is None or verified.until <= time.monotonic():
            return None
        return verified.fingerprint

    def _reject(self, ident: str) -> None:
        if len(self._negative) >= _MAX_ENTRIES:
            self._negative.clear()
        self._negative[ident] = time.monotonic() + NEGATIVE_TTL_S

    def _remember(
        self, ident: str, principal: Principal, epoch: int, fingerprint: str | None
    ) -> None:
        if epoch != self._epoch:
            return  # an eviction happened meanwhile: do not resurrect what it removed
        if len(self._cache) >= _MAX_ENTRIES or len(self._verified) >= _MAX_ENTRIES:
            self._drop_local()
        now = time.monotonic()
        self._cache[ident] = _Cached(principal, now + self._ttl)
        if fingerprint is not None:
            self._verified[ident] = _Verified(fingerprint, now + self._verified_ttl)
        self._by_prefix.setdefault(principal.prefix, set()).add(ident)

    def _drop_local(self) -> None:
        self._epoch += 1
        self._cache.clear()
        self._verified.clear()
        self._by_prefix.clear()

    async def evict(self, prefix: str, *, revoked: bool = True) -> None:
        """Forget a key everywhere: this process at once, then the shared cache (retried for a
        cache lifetime if Redis is unreachable). A revocation leaves the tombstone; a mere
        change (``revoked=False``) just drops the cached copies. Both forget that the key's
        secret was verified."""
        self._epoch += 1
        for ident in self._by_prefix.pop(prefix, set()):
            self._cache.pop(ident, None)
            self._verified.pop(ident, None)
        delay = 0.1
        deadline = time.monotonic() + max(self._ttl, 1.0)
        while True:
            try:
                if revoked:
                    await _REVOKE_SECONDS.run(
                        self._revoke(
                            keys=[cache_key(prefix), verified_key(prefix)],
                            args=[max(60, 2 * self._redis_ttl)],
                        )
                    )
                else:
                    await self._redis.delete(cache_key(prefix), verified_key(prefix))
                return
            except STORE_ERRORS as exc:
                if time.monotonic() > deadline:
                    _log.warning("revocation not written to the shared cache", error=str(exc))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def flush(self) -> None:
        """Forget every cached key and every remembered secret (after a LISTEN gap a
        revocation may have been missed).

        The shared cache goes first and this process's last: a Check arriving while the scan
        runs could otherwise copy a stale Redis entry back into the emptied local cache, where
        it would live for a whole cache lifetime. The final drop bumps the epoch, so a cold
        check that read the old Redis entry does not store it either. The scan's pattern finds
        ``nz:key:{<prefix>}`` and ``nz:key:{<prefix>}:verified`` alike."""
        try:
            batch: list[str] = []
            async for name in self._redis.scan_iter(match="nz:key:{*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    await self._redis.delete(*batch)
                    batch.clear()
            if batch:
                await self._redis.delete(*batch)
        except STORE_ERRORS as exc:
            _log.warning("shared key cache not flushed", error=str(exc))
        self._drop_local()
        self._negative.clear()
