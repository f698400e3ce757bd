"""The whole gateway on a Redis Cluster (three masters, three replicas; devstack's LocalCluster,
``NZ_REDIS_CLUSTER=1``): it answers as on one Redis, and when the master owning a tenant's slot
dies mid-load that tenant gets 503 in its surface's shape — never a 200 while its slot has no
master — while tenants on the other masters keep getting 200, until the replica is promoted and
the tenant is served again, nothing restarted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis.cluster import RedisCluster

from authz import keys as keycache
from devstack.rediscluster import LocalCluster, Node, keyslot
from devstack.stack import Stack, StackConfig
from gateway.signals import DENY_MODE_KEY
from tests.e2e import test_accounting_budgets as budgets_on_one_redis
from tests.e2e import test_ratelimit as ratelimit_on_one_redis
from tests.gateway_client import Caller, Gateway
from tests.polling import poll
from tests.redisclient import sync_client

CHAT: dict[str, Any] = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
}
OPENAI_CHAT: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
LIMITS = {"requests_per_minute": 100_000, "budget_total": 10_000_000}  # touch the tenant slot


@pytest.fixture(scope="module")
def cgw() -> Iterator[Gateway]:
    """A stack of its own on a Redis Cluster of its own (this module kills its nodes)."""
    config = StackConfig(redis_cluster=True, extra_env={"NZ_DISCOVERY_INTERVAL_S": "1"})
    running = Stack(config).start()
    try:
        yield Gateway(running)
    finally:
        running.stop()


def _cluster(gw: Gateway) -> LocalCluster:
    assert gw.stack.redis_cluster is not None
    return gw.stack.redis_cluster


# -- as on one Redis ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check",
    [
        ratelimit_on_one_redis.test_requests_per_minute_per_key_then_429_with_retry_after,
        ratelimit_on_one_redis.test_two_keys_of_one_tenant_share_the_tenant_window,
        ratelimit_on_one_redis.test_64_concurrent_requests_against_limit_10_admit_exactly_10,
        ratelimit_on_one_redis.test_tokens_per_minute_debited_after_the_stream_then_429,
        ratelimit_on_one_redis.test_openai_surface_headers_and_error_shape,
        budgets_on_one_redis.test_64_concurrent_streams_never_overshoot_a_small_budget,
    ],
    ids=lambda check: check.__name__,
)
def test_the_gateway_answers_as_on_one_redis(
    cgw: Gateway, check: Callable[[Gateway], None]
) -> None:
    check(cgw)


def test_a_requests_keys_of_its_tenant_share_the_tenants_slot(cgw: Gateway) -> None:
    who = cgw.caller(LIMITS)
    assert httpx.post(f"{cgw.url}/api/chat", json=CHAT, headers=who.headers).status_code == 200
    client = sync_client(cgw.stack)
    assert isinstance(client, RedisCluster)
    tenant_keys = [k for k in client.scan_iter(match=f"nz:{{{who.tenant_id}}}:*")]
    assert tenant_keys  # windows, budget counters
    assert {int(client.cluster_keyslot(k)) for k in tenant_keys} == {
        keyslot(f"{{{who.tenant_id}}}")
    }
    client.close()


# -- a master dies mid-load -----------------------------------------------------------------


def _global_masters(cluster: LocalCluster) -> set[int]:
    """The masters holding what every request of any tenant reads: the deny-mode flag, and
    the key-failure counter of the test client's address (read by an uncached key check)."""
    shared = [DENY_MODE_KEY, keycache.address_key(keycache.address_bucket("127.0.0.1"))]
    return {cluster.master_of(k).port for k in shared}


def _caller_on(gw: Gateway, cluster: LocalCluster, want: Callable[[int], bool]) -> Caller:
    """A fresh tenant and key whose tenant slot's and key prefix's masters satisfy ``want``."""
    for _ in range(60):
        who = gw.caller(LIMITS)
        tenant = cluster.master_of(f"{{{who.tenant_id}}}").port
        prefix = cluster.master_of(keycache.cache_key(who.prefix)).port
        if want(tenant) and (want(prefix) or tenant == prefix):
            return who
    raise AssertionError("no tenant landed where the test needs it")


@dataclass
class Load:
    """Requests sent back to back by one thread per caller, each answer recorded with the
    monotonic time it was sent and answered."""

    gw: Gateway
    callers: dict[str, Caller]
    answers: list[tuple[str, float, float, int, dict[str, object]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for name, who in self.callers.items():
            thread = threading.Thread(target=self._run, args=(name, who), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, name: str, who: Caller) -> None:
        with httpx.Client(timeout=10) as client:
            openai = False
            while not self._stop.is_set():
                sent = time.monotonic()
                if openai:
                    url, body = f"{self.gw.url}/v1/chat/completions", OPENAI_CHAT
                else:
                    url, body = f"{self.gw.url}/api/chat", CHAT
                answer = client.post(url, json=body, headers=who.headers)
                shape: dict[str, object] = {"surface": "openai" if openai else "native"}
                if answer.status_code != 200:
                    shape["body"] = answer.json()
                    shape["content-type"] = answer.headers.get("content-type", "")
                self.answers.append((name, sent, time.monotonic(), answer.status_code, shape))
                openai = not openai

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def of(self, name: str, after: float, before: float) -> list[tuple[int, dict[str, object]]]:
        """The answers to ``name``'s requests sent after ``after`` and answered before
        ``before``."""
        return [
            (status, shape)
            for who, sent, answered, status, shape in self.answers
            if who == name and sent >= after and answered <= before
        ]


def test_a_dead_master_fails_its_tenants_closed_until_its_replica_is_promoted(
    cgw: Gateway,
) -> None:
    cluster = _cluster(cgw)
    shared = _global_masters(cluster)
    # The master of slot 0 (the services' clients' default node) when it can be.
    first = cluster.slot_owners()[0]
    ordered = [first, *(m for m in cluster.primaries() if m is not first)]
    candidates = [m for m in ordered if m.port not in shared]
    assert candidates, "every master holds a key every request reads"
    victim: Node = candidates[0]
    lost = _caller_on(cgw, cluster, lambda port: port == victim.port)
    kept = [_caller_on(cgw, cluster, lambda port: port != victim.port) for _ in range(2)]
    callers = {"lost": lost, "kept-1": kept[0], "kept-2": kept[1]}
    for who in callers.values():  # every key checked once: cached in authz
        answer = httpx.post(f"{cgw.url}/api/chat", json=CHAT, headers=who.headers, timeout=10)
        assert answer.status_code == 200, answer.text

    replicas = cluster.replicas_of(victim)
    assert replicas
    load = Load(cgw, callers).start()
    try:
        time.sleep(1.0)
        killed = time.monotonic()
        cluster.kill(victim)
        # Until a replica says it is a master, no master serves the slot: the last time that
        # was seen bounds the outage from below (promotion is for good).
        headless = killed
        deadline = killed + 30
        while True:
            seen = time.monotonic()
            if any(cluster.is_master(r) for r in replicas):
                break
            headless = seen
            assert seen < deadline, "no replica was promoted"
            time.sleep(0.05)
        promoted = cluster.wait_promoted(f"{{{lost.tenant_id}}}", timeout_s=30)
        assert promoted is not victim

        def served_again() -> bool:
            recent = load.of("lost", time.monotonic() - 0.5, time.monotonic())
            return bool(recent) and all(status == 200 for status, _ in recent)

        poll(served_again, timeout_s=20, interval_s=0.1, what="the tenant served again")
    finally:
        load.stop()

    # Before the kill: everyone served.
    for name in callers:
        before = load.of(name, 0.0, killed)
        assert before and {status for status, _ in before} == {200}, name
    # Sent after the kill and answered while no master served its slot: the lost tenant
    # refused, every time, in its surface's shape; the others served.
    outage = load.of("lost", killed + 0.05, headless)
    assert len(outage) >= 3
    assert {status for status, _ in outage} == {503}
    native = [shape for _, shape in outage if shape["surface"] == "native"]
    openai = [shape for _, shape in outage if shape["surface"] == "openai"]
    assert native and all(s["body"] == {"error": "service unavailable"} for s in native)
    assert openai and all(
        s["body"]["error"]["code"] == "service_unavailable"  # type: ignore[index]
        for s in openai
    )
    for name in ("kept-1", "kept-2"):
        during = load.of(name, killed, headless)
        assert len(during) >= 3
        assert {status for status, _ in during} == {200}, name
    # Nothing was restarted: the same service processes throughout.
    assert all(cgw.stack.procs[name].running for name in ("authz", "ratelimit", "accounting"))
