"""The services' Redis work on a real Redis Cluster (three masters, three replicas: devstack's
LocalCluster): every Lua script runs (Redis itself refuses a script whose keys span slots:
CROSSSLOT), the keys of one call share one slot (``CLUSTER KEYSLOT``), pipelines may span
slots, the shared key cache is flushed on every master, the RLS's announcements reach a
subscriber on another node, and a killed master fails its slots closed (StoreUnavailable) while
the others serve, until its replica is promoted — then the same client serves it again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest
from argon2 import PasswordHasher
from redis.asyncio.cluster import RedisCluster

from accounting import inflight
from authz import keys as keycache
from authz.admission import Admitter, Outcome
from authz.keys import KeyStore
from authz.principal import Principal
from authz.throttle import Subscriber, Throttles
from devstack.rediscluster import LocalCluster, keyslot
from gateway import budgets, leases, poolmetrics, readiness, slots
from gateway.budgets import Budget
from gateway.leases import Leases
from gateway.periods import Period
from gateway.rls import Descriptor
from gateway.settings import SettingsError, load_settings
from gateway.signals import DENY_MODE_KEY
from gateway.storage import CLUSTER_MAX_CONNECTIONS_PER_NODE, redis_client
from gateway.storeerrors import StoreUnavailable
from gateway.throttlemap import CHANNEL
from ratelimit.decide import window_key
from ratelimit.windows import Hit, Mode, Windows
from tests.unit.test_authz_policy import NO_LIMITS, principal


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    running = LocalCluster().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def cluster(local_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """The services' client of the cluster (gateway.storage), emptied before the test."""
    client = redis_client(local_cluster.seed_url, 2.0, cluster=True)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


async def _slot(client: RedisCluster, key: str) -> int:
    return int(await client.cluster_keyslot(key))


async def _one_slot(client: RedisCluster, keys: list[str]) -> int:
    found = {await _slot(client, k) for k in keys}
    assert len(found) == 1, keys
    return found.pop()


def _principal(tenant_id: str = "") -> Principal:
    return principal(
        key_id=str(uuid.uuid4()),
        tenant_id=tenant_id or str(uuid.uuid4()),
        allow_all=True,
        key_limits=replace(NO_LIMITS, budget_daily=5000, max_concurrent=2),
        tenant_limits=replace(NO_LIMITS, budget_daily=1000, max_concurrent=3),
    )


# -- settings and the client --------------------------------------------------------------


def test_cluster_mode_takes_one_or_several_seed_urls() -> None:
    one = load_settings({"NZ_REDIS_CLUSTER": "1", "NZ_REDIS_URL": "redis://10.0.0.1:6379"})
    assert (one.redis_cluster, one.redis_url) == (True, "redis://10.0.0.1:6379")
    several = load_settings(
        {"NZ_REDIS_CLUSTER": "true", "NZ_REDIS_URL": "rediss://a:6379, rediss://b:6380"}
    )
    assert several.redis_url == "rediss://a:6379,rediss://b:6380"
    assert load_settings({}).redis_cluster is False


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"NZ_REDIS_CLUSTER": "maybe"},
            "NZ_REDIS_CLUSTER: Input should be a valid boolean, unable to interpret input "
            "(got 'maybe')",
        ),
        (
            {"NZ_REDIS_URL": "redis://a:1,redis://b:2"},
            "NZ_REDIS_URL: several URLs name a cluster: set NZ_REDIS_CLUSTER=1 "
            "(got 'redis://a:1,redis://b:2')",
        ),
        (
            {"NZ_REDIS_CLUSTER": "1", "NZ_REDIS_URL": "unix:///run/redis.sock"},
            "NZ_REDIS_URL: not a redis/rediss URL (e.g. "
            "redis://10.0.0.1:6379,redis://10.0.0.2:6379) (got 'unix:///run/redis.sock')",
        ),
        (
            {"NZ_REDIS_CLUSTER": "1", "NZ_REDIS_URL": "redis://a:1/2"},
            "NZ_REDIS_URL: a cluster has database 0 only (e.g. "
            "redis://10.0.0.1:6379,redis://10.0.0.2:6379) (got 'redis://a:1/2')",
        ),
        (
            {"NZ_REDIS_CLUSTER": "1", "NZ_REDIS_URL": "redis://a:1,,redis://b:2"},
            "NZ_REDIS_URL: an empty seed URL (e.g. redis://10.0.0.1:6379,redis://10.0.0.2:6379) "
            "(got 'redis://a:1,,redis://b:2')",
        ),
    ],
)
def test_a_bad_cluster_setting_is_one_line(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(env)
    assert error.value.problems == [problem]


async def test_the_client_knows_every_node_with_a_bounded_pool_each(
    local_cluster: LocalCluster, cluster: RedisCluster
) -> None:
    # One seed is enough: the client discovers the other five nodes.
    client = redis_client(local_cluster.nodes[0].url, 0.5, cluster=True)
    try:
        assert await client.ping() is True
        assert sorted(n.port for n in client.get_nodes()) == sorted(
            n.port for n in local_cluster.nodes
        )
        assert {n.max_connections for n in client.get_nodes()} == {CLUSTER_MAX_CONNECTIONS_PER_NODE}
        await client.set("nz:{a}:x", "1")
        idle, in_use, most = poolmetrics._redis_counts(client)
        assert (in_use, most) == (0, 6 * CLUSTER_MAX_CONNECTIONS_PER_NODE)
        assert idle >= 1
    finally:
        await client.aclose()


# -- every script, keys of one call in one slot -------------------------------------------


async def test_admission_renewal_and_settlement_run_in_the_tenants_slot(
    cluster: RedisCluster, no_postgres: asyncpg.Pool
) -> None:
    who = _principal()
    now = datetime.now(UTC)
    tenant_budget = Budget(who.tenant_id, None, Period.DAILY, 1000)
    key_budget = Budget(who.tenant_id, who.key_id, Period.DAILY, 5000)
    for budget in (tenant_budget, key_budget):
        await cluster.set(budget.used_key(now), 100)  # exists: no ledger read
    admit_keys = [
        key_budget.used_key(now),
        key_budget.reserved_key(now),
        tenant_budget.used_key(now),
        tenant_budget.reserved_key(now),
        slots.key_slots(who.tenant_id, who.key_id),
        slots.tenant_slots(who.tenant_id),
        budgets.reservation_key(who.tenant_id, "r1"),
    ]
    tenant_slot = await _one_slot(cluster, [*admit_keys, f"{{{who.tenant_id}}}"])

    admitter = Admitter(cluster, no_postgres)
    first = await admitter.admit(who, "r1", 300, take=True)
    assert (first.outcome, first.remaining, first.reserved) == (Outcome.OK, 900, 300)
    assert await cluster.zcard(slots.tenant_slots(who.tenant_id)) == 1
    await leases.renew_all(cluster, Leases(), [(who.tenant_id, who.key_id, "r1")])
    await budgets.settle(cluster, who.tenant_id, "r1", 250)
    assert await cluster.get(tenant_budget.used_key(now)) == "350"
    assert await cluster.exists(budgets.reservation_key(who.tenant_id, "r1")) == 0
    await slots.release(cluster, who.tenant_id, who.key_id, "r1")
    assert await cluster.zcard(slots.tenant_slots(who.tenant_id)) == 0
    reading = await budgets.read(cluster, tenant_budget, now, time.time())
    assert reading == budgets.Reading(350, 0)
    assert await _slot(cluster, tenant_budget.reserved_key(now) + ":sum") == tenant_slot

    # The deny-mode key lives in another slot: the admission pipeline spans two slots.
    await cluster.set(DENY_MODE_KEY, "1")
    refused = await admitter.admit(who, "r2", 10, take=True)
    assert refused.outcome == Outcome.DENY_MODE
    assert await cluster.zcard(slots.tenant_slots(who.tenant_id)) == 0  # given back


async def test_the_key_cache_scripts_run_in_the_prefixs_slot(
    cluster: RedisCluster, no_postgres: asyncpg.Pool
) -> None:
    store = KeyStore(
        no_postgres, cluster, PasswordHasher(time_cost=1, memory_cost=64, parallelism=1), 30.0
    )
    prefix, address = "abcdefghijkl", "203.0.113.0/24"
    await _one_slot(cluster, [keycache.cache_key(prefix), keycache.verified_key(prefix)])
    await _one_slot(
        cluster, [keycache.failure_key(prefix, address), keycache.trickle_key(prefix, address)]
    )
    await cluster.hset(keycache.verified_key(prefix), "id", "fp")
    await store.evict(prefix)  # key_revoke.lua
    assert await cluster.hgetall(keycache.cache_key(prefix)) == {"revoked": "1"}
    assert await cluster.exists(keycache.verified_key(prefix)) == 0
    await store._count_failure(prefix, address)  # key_failure.lua, twice in one pipeline
    assert await cluster.get(keycache.failure_key(prefix, address)) == "1"
    assert await cluster.get(keycache.address_key(address)) == "1"
    # key_store.lua: a revoked prefix's cache takes nothing
    stored = await store._store(
        keys=[keycache.cache_key(prefix), keycache.verified_key(prefix)],
        args=["id", "{}", 30, "fp", 60],
    )
    assert stored == 0


async def test_a_flush_of_the_key_cache_scans_every_master(
    local_cluster: LocalCluster, cluster: RedisCluster, no_postgres: asyncpg.Pool
) -> None:
    store = KeyStore(
        no_postgres, cluster, PasswordHasher(time_cost=1, memory_cost=64, parallelism=1), 30.0
    )
    prefixes = [f"p{i:03d}" for i in range(60)]
    for prefix in prefixes:
        await cluster.hset(keycache.cache_key(prefix), "id", "{}")
        await cluster.hset(keycache.verified_key(prefix), "id", "fp")
    await cluster.set("nz:{t}:bu:t:daily:x", "5")
    owners = {local_cluster.master_of(keycache.cache_key(p)).port for p in prefixes}
    assert len(owners) == 3  # the keys sit on every master
    await store.flush()
    left = [p for p in prefixes if await cluster.exists(keycache.cache_key(p))]
    assert left == []
    assert await cluster.get("nz:{t}:bu:t:daily:x") == "5"


async def test_the_windows_of_one_request_share_one_slot_and_one_call(
    cluster: RedisCluster,
) -> None:
    tenant, key = str(uuid.uuid4()), str(uuid.uuid4())
    descriptors = [
        (("limit", "key_rpm"), ("tenant_id", tenant), ("key_id", key)),
        (("limit", "tenant_rpm"), ("tenant_id", tenant)),
        (("limit", "key_tpm"), ("tenant_id", tenant), ("key_id", key)),
        (("limit", "tenant_tpm"), ("tenant_id", tenant)),
    ]
    names = [window_key("gateway", Descriptor(entries)) for entries in descriptors]
    assert await _one_slot(cluster, names) == keyslot(f"nz:{{{tenant}}}:x")
    windows = Windows(cluster, deadline_s=1.0)
    hits = [Hit(name, 2, 60_000, 1, Mode.ADMIT) for name in names]
    rejected, outcomes = await windows.apply(hits)
    assert rejected is False
    assert [(o.before, o.after) for o in outcomes] == [(0.0, 1.0)] * 4
    assert await cluster.hget(names[0], "l") is not None


async def test_an_announcement_reaches_a_subscriber_on_another_node(
    local_cluster: LocalCluster, cluster: RedisCluster
) -> None:
    from tests.unit.test_authz_throttle_subscription import _announcement

    heard = Throttles()
    # The subscriber's first seed is a replica; the cluster client publishes on some master.
    replica = next(n for n in local_cluster.nodes if n not in local_cluster.primaries())
    subscriber = Subscriber(f"{replica.url},{local_cluster.seed_url}", heard, 0.5)
    task = asyncio.create_task(subscriber.run())
    try:
        async with asyncio.timeout(5):
            await subscriber.connected.wait()
            while not len(heard):
                await cluster.publish(CHANNEL, _announcement())
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- a master dies --------------------------------------------------------------------------


def _tags_on(local_cluster: LocalCluster, master: int, count: int) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        tag = str(uuid.uuid4())
        if local_cluster.master_of(f"{{{tag}}}").port == master:
            found.append(tag)
    return found


async def test_accountings_take_script_runs_on_a_cluster(cluster: RedisCluster) -> None:
    await cluster.hset(inflight.key("pod-a"), "r1", "not json")
    assert await inflight.take(cluster, "pod-a") == []  # taken (and unreadable)
    assert await cluster.exists(inflight.key("pod-a")) == 0


def _slots_only(tenant_id: str) -> Principal:
    """A principal whose admission needs no ledger: concurrency limits only."""
    who = _principal(tenant_id)
    return replace(
        who,
        key_limits=replace(NO_LIMITS, max_concurrent=100),
        tenant_limits=replace(NO_LIMITS, max_concurrent=100),
    )


async def test_a_new_client_s_first_command_may_be_the_readiness_probe(
    local_cluster: LocalCluster,
) -> None:
    # The RLS's first Redis command at start is its readiness probe: it must find the masters.
    client = redis_client(local_cluster.seed_url, 2.0, cluster=True)
    try:
        assert client.get_primaries() == []  # nothing sent yet: no node known
        assert await readiness.redis_probe(client)() is True
        assert len(client.get_primaries()) == 3
    finally:
        await client.aclose()


async def test_a_dead_master_fails_its_slots_closed_and_its_promoted_replica_serves_them(
    local_cluster: LocalCluster, no_postgres: asyncpg.Pool
) -> None:
    client = redis_client(local_cluster.seed_url, 0.25, cluster=True)
    await client.flushall()
    # The master of slot 0: the client's default node (redis-py asked it for the command
    # table at every slot map refresh; all slots failed while it was down).
    victim = local_cluster.slot_owners()[0]
    other = next(m for m in local_cluster.primaries() if m is not victim)
    (lost,) = _tags_on(local_cluster, victim.port, 1)
    (kept,) = _tags_on(local_cluster, other.port, 1)
    windows = Windows(client, deadline_s=0.3)
    admitter = Admitter(client, no_postgres)  # its script loaded on the masters now
    deny_flag_lost = local_cluster.master_of(DENY_MODE_KEY) is victim
    probe = readiness.redis_probe(client)

    async def decide(tag: str) -> bool:
        rejected, _ = await windows.apply([Hit(f"nz:{{{tag}}}:rl:w", 1000, 60_000, 1, Mode.ADMIT)])
        return rejected

    assert await decide(lost) is False
    assert (await admitter.admit(_slots_only(lost), "a1", 1, take=True)).outcome == Outcome.OK
    await client.set(f"nz:{{{lost}}}:written", "1")
    await asyncio.sleep(0.2)  # replicated (asynchronously) to the replica
    try:
        local_cluster.kill(victim)
        failed = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # before any promotion (node timeout 1 s)
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await decide(lost)
            assert time.monotonic() - began < 0.5  # fails fast, closed
            assert await decide(kept) is False  # the other masters serve on
            with pytest.raises(StoreUnavailable):
                await admitter.admit(_slots_only(lost), "a2", 1, take=True)
            assert await probe() is True  # still ready: the other masters answer
            if deny_flag_lost:  # every admission reads it: all fail closed
                with pytest.raises(StoreUnavailable):
                    await admitter.admit(_slots_only(kept), "a2", 1, take=True)
            else:
                admitted = await admitter.admit(_slots_only(kept), "a2", 1, take=True)
                assert admitted.outcome == Outcome.OK
            failed += 1
        assert failed >= 3
        promoted = await asyncio.to_thread(local_cluster.wait_promoted, f"{{{lost}}}", 30.0)
        assert promoted is not victim
        deadline = time.monotonic() + 10
        while True:  # the same client, never restarted, reads the new slot map
            try:
                assert await decide(lost) is False
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the promoted replica was never used"
                await asyncio.sleep(0.1)
        assert await client.get(f"nz:{{{lost}}}:written") == "1"
        # The admission script runs on the promoted replica too (loaded again if it lacks it).
        assert (await admitter.admit(_slots_only(lost), "a3", 1, take=True)).outcome == Outcome.OK
    finally:
        await client.aclose()
        if not victim.proc.running:
            await asyncio.to_thread(local_cluster.restart, victim)
