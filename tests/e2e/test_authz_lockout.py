"""Wrong secrets never lock a key's owner out (issue 11, finding 2) — through Envoy's listener.

Each test speaks from its own loopback source addresses (Linux routes all of 127.0.0.0/8 to
``lo``; the listener on 127.0.0.1 accepts connections from 127.0.11.x), so the per-address
limits of one test never touch another test or the rest of the suite (127.0.0.1).
"""

from __future__ import annotations

import base64
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from authz.keys import FAILURE_LIMIT
from gateway import apikeys
from gateway.settings import Settings
from tests.e2e.test_authz_support import CHAT, UNAUTHORIZED, argon2_verifies, caller, poll, rds
from tests.gateway_client import Caller, Gateway

_DEFAULTS = Settings()
ADDRESS_LIMIT = _DEFAULTS.key_failures_per_address  # the stack runs with the defaults
TOO_MANY = {"error": "too many requests"}
_BODY = {**CHAT, "stream": False, "options": {"num_predict": 2}}


def client_from(address: str) -> httpx.Client:
    """A client whose connections leave from ``address`` (a loopback address)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=15)


def wrong_secret(key: str) -> str:
    """The key's public prefix with a random (wrong) secret."""
    prefix = apikeys.parse_prefix(key)
    return f"nz_{prefix}_{secrets.token_urlsafe(32)}"


def unknown_key() -> str:
    """A well-formed key whose prefix no key has."""
    prefix = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[:12]
    return f"nz_{prefix}_{secrets.token_urlsafe(32)}"


def chat_from(client: httpx.Client, gw: Gateway, key: str, **headers: str) -> httpx.Response:
    return client.post(
        f"{gw.url}/api/chat", json=_BODY, headers={"Authorization": f"Bearer {key}", **headers}
    )


class Tally:
    """Statuses counted by several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: Counter[int] = Counter()

    def add(self, status: int) -> None:
        with self._lock:
            self._seen[status] += 1

    def snapshot(self) -> Counter[int]:
        with self._lock:
            return Counter(self._seen)

    def total(self) -> int:
        return sum(self.snapshot().values())


@contextmanager
def hammering(
    gw: Gateway, key: str, address: str, threads: int = 4, *, also_unknown: bool = False
) -> Iterator[Tally]:
    """Wrong secrets for ``key``'s prefix (with ``also_unknown``, every other one for an
    unknown prefix) from ``address`` in ``threads`` threads until the block ends; yields the
    statuses seen so far."""
    seen = Tally()
    stop = threading.Event()

    def attack() -> None:
        with client_from(address) as client:
            while not stop.is_set():
                forged = wrong_secret(key)
                if also_unknown and seen.total() % 2:
                    forged = unknown_key()
                seen.add(chat_from(client, gw, forged).status_code)

    workers = [threading.Thread(target=attack, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield seen
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)


def restart_authz(gw: Gateway) -> None:
    """A fresh authz process: this process's caches are gone, Redis keeps what it has."""
    authz = gw.stack.procs["authz"]
    try:
        authz.stop()
    finally:
        authz.start()
    # A well-formed key: a request without one is answered by Envoy, authz up or not.
    unknown = {"authorization": f"Bearer {unknown_key()}"}
    poll(
        lambda: httpx.post(f"{gw.url}/api/chat", json=CHAT, headers=unknown).status_code == 401,
        timeout_s=15,
        interval_s=0.1,
    )


def expire_cached_principal(gw: Gateway, who: Caller) -> None:
    """What the key cache TTL does to the shared cache; the remembered secret stays."""
    rds(gw).delete(f"nz:key:{{{who.prefix}}}")


@pytest.mark.parametrize(
    ("warm", "owner_address", "attacker_address"),
    [
        (False, "127.0.11.2", "127.0.11.1"),
        (True, "127.0.11.4", "127.0.11.3"),
    ],
    ids=["cold", "warm-after-cache-expiry"],
)
def test_the_owner_keeps_getting_200_while_another_address_hammers_its_prefix(
    gw: Gateway, warm: bool, owner_address: str, attacker_address: str
) -> None:
    who = caller(gw)
    with client_from(owner_address) as owner:
        if warm:
            assert chat_from(owner, gw, who.key).status_code == 200  # verified once
            restart_authz(gw)
            expire_cached_principal(gw, who)
        with hammering(gw, who.key, attacker_address) as seen:
            # Past the old per-prefix lock: every further verify of the prefix was rationed.
            poll(lambda: seen.total() >= FAILURE_LIMIT + 10, timeout_s=20)
            statuses = [chat_from(owner, gw, who.key).status_code for _ in range(10)]
    assert statuses == [200] * 10
    assert set(seen.snapshot()) <= {401, 429}, seen.snapshot()


def test_an_owner_behind_the_attackers_address_needs_no_argon2_for_a_key_it_used(
    gw: Gateway,
) -> None:
    shared = "127.0.11.5"
    who = caller(gw)
    with client_from(shared) as client:
        assert chat_from(client, gw, who.key).status_code == 200  # verified once
        restart_authz(gw)
        expire_cached_principal(gw, who)
        # Wrong secrets from the same address, for this prefix (rationed after FAILURE_LIMIT)
        # and for unknown ones, until the address has used up its failed checks.
        with hammering(gw, who.key, shared, also_unknown=True) as seen:
            poll(lambda: seen.snapshot()[401] >= ADDRESS_LIMIT, timeout_s=20)
        assert set(seen.snapshot()) == {401, 429}, seen.snapshot()
        assert chat_from(client, gw, unknown_key()).status_code == 429
        before = argon2_verifies(gw)
        statuses = [chat_from(client, gw, who.key).status_code for _ in range(5)]
        assert statuses == [200] * 5
        assert argon2_verifies(gw) == before


def test_an_address_past_the_401_limit_gets_429_without_argon2_and_others_are_unaffected(
    gw: Gateway,
) -> None:
    noisy, quiet = "127.0.11.6", "127.0.11.7"
    used = caller(gw)  # a key verified (and cached) before the address ran out
    assert httpx.post(f"{gw.url}/api/chat", json=_BODY, headers=used.headers).status_code == 200
    with client_from(noisy) as client:
        before = argon2_verifies(gw)
        for n in range(ADDRESS_LIMIT):
            resp = chat_from(client, gw, unknown_key())
            assert resp.status_code == 401, n
            assert resp.json() == UNAUTHORIZED
        assert argon2_verifies(gw) == before + ADDRESS_LIMIT  # each one cost a verify
        before = argon2_verifies(gw)
        fresh = caller(gw)  # a valid key no replica has seen: it would need argon2 too
        for key in [unknown_key() for _ in range(10)] + [wrong_secret(used.key), fresh.key]:
            resp = chat_from(client, gw, key)
            assert resp.status_code == 429
            assert resp.json() == TOO_MANY
            assert 1 <= int(resp.headers["retry-after"]) <= _DEFAULTS.key_failure_window_s
            assert "www-authenticate" not in resp.headers
        resp = client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {unknown_key()}"},
        )
        assert resp.status_code == 429
        assert resp.json()["error"]["code"] == "rate_limit_exceeded"
        assert resp.headers["retry-after-ms"] == str(int(resp.headers["retry-after"]) * 1000)
        # A client's X-Forwarded-For does not make it someone else: Envoy decides the address.
        resp = chat_from(client, gw, unknown_key(), **{"X-Forwarded-For": "203.0.113.9"})
        assert resp.status_code == 429
        assert argon2_verifies(gw) == before  # none of that cost a verify
        # A key verified before still works from the noisy address.
        assert chat_from(client, gw, used.key).status_code == 200
    with client_from(quiet) as client:
        resp = chat_from(client, gw, unknown_key())
        assert resp.status_code == 401
        assert resp.json() == UNAUTHORIZED
        assert resp.headers["www-authenticate"] == 'Bearer realm="neuronetz"'
        assert chat_from(client, gw, fresh.key).status_code == 200
    assert argon2_verifies(gw) == before + 2


def _production_hash(gw: Gateway, who: Caller) -> Caller:
    """Fixture keys are hashed cheaply; hash this one as the admin API does (the service's
    argon2 parameters), so its verify costs what a real key's does."""
    ph = apikeys.hasher(_DEFAULTS.argon2_time_cost, _DEFAULTS.argon2_memory_kib)
    gw.sql(
        "UPDATE gateway.api_keys SET key_hash = $1 WHERE id = $2::uuid",
        ph.hash(who.key),
        who.key_id,
    )
    return who


def test_unknown_and_live_prefixes_answer_in_the_same_time(gw: Gateway) -> None:
    live = [_production_hash(gw, caller(gw)) for _ in range(6)]
    unknown: list[float] = []
    wrong: list[float] = []
    # 8 addresses x (6 live + 6 unknown): far below every per-address and per-prefix limit.
    for a in range(8):
        with client_from(f"127.0.11.{20 + a}") as client:
            for who in live:
                for key, times in ((unknown_key(), unknown), (wrong_secret(who.key), wrong)):
                    start = time.perf_counter()
                    resp = chat_from(client, gw, key)
                    times.append(time.perf_counter() - start)
                    assert resp.status_code == 401
                    assert resp.json() == UNAUTHORIZED
    unknown_ms = statistics.median(unknown) * 1000
    wrong_ms = statistics.median(wrong) * 1000
    # A wrong secret costs an argon2 verify (tens of ms); so must an unknown prefix.
    assert wrong_ms >= 5, (unknown_ms, wrong_ms)
    assert unknown_ms >= 5, (unknown_ms, wrong_ms)
    assert 0.5 < unknown_ms / wrong_ms < 2, (unknown_ms, wrong_ms)
