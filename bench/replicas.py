"""Throughput at one and two gateway replicas on one PostgreSQL and one Redis (bench/scaling.py).

Non-streamed ``/api/chat`` at a fixed concurrency, split evenly across the replicas' listeners,
against raw Envoy (router only, the reference), one replica, and two replicas: a second
complete Stack on the first one's PostgreSQL, Redis (or Redis Cluster) and mock Ollama, as
tests/gateway_client.beside starts one. Each target has a fresh tenant; its failed requests are
read back from the audit log by status and reason. The CPU of every process is read from the
start of the load until accounting has written its audit rows (psutil, bench/streams.CpuMeter)
and reported per request, by kind of process; so are the write transactions PostgreSQL assigned.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bench.run import BENCH_TENANT, CHAT, Row, load, raw_envoy_config, start_envoy
from bench.streams import CpuMeter
from devstack.client import Caller, StackClient
from devstack.processes import Proc
from devstack.stack import SERVICES, Stack, StackConfig


@dataclass
class ReplicaRow:
    load: Row  # throughput and latency, as bench/run.py measures them
    # failed requests by "status reason flags" (audit log; raw Envoy audits nothing)
    failed: dict[str, int] = field(default_factory=dict)
    pg_connections: int = 0  # to the gateway database, after the load
    # PostgreSQL write transactions (xids assigned) per request, the audit rows written
    pg_write_xacts_per_request: float = 0.0
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)


def pids(stacks: list[Stack], envoy: Proc | None = None) -> dict[str, int]:
    """Every process of the stacks, named ``<kind>#<n>`` (``envoy`` given: it replaces the
    stacks' Envoys, and the services are left out: raw Envoy calls none)."""
    found: dict[str, list[int]] = {}
    for stack in stacks:
        for name, proc in stack.procs.items():
            if envoy is not None and (name == "envoy" or name in SERVICES):
                continue
            if proc.popen is not None:
                kind = "mock" if name.startswith("mock_ollama") else name
                found.setdefault(kind, []).append(proc.popen.pid)
        if stack.redis_cluster is not None:  # the cluster this stack started: its nodes
            for node in stack.redis_cluster.nodes:
                if node.proc.popen is not None:
                    found.setdefault("redis", []).append(node.proc.popen.pid)
    if envoy is not None and envoy.popen is not None:
        found["envoy"] = [envoy.popen.pid]
    return {f"{kind}#{i}": pid for kind, pids in found.items() for i, pid in enumerate(pids)}


async def _split(
    urls: list[str], key: str, concurrency: int, seconds: float
) -> tuple[list[float], int]:
    headers = {"Authorization": f"Bearer {key}"}
    share = max(1, concurrency // len(urls))
    done = await asyncio.gather(
        *(load(f"{url}/api/chat", headers, CHAT, share, seconds) for url in urls)
    )
    return [x for latencies, _ in done for x in latencies], sum(e for _, e in done)


def _settled(gw: StackClient, caller: Caller, timeout_s: float = 30.0) -> None:
    """Until the tenant's audit rows have stopped growing (accounting writes them in batches
    after the responses): three polls in a row with the same count, or ``timeout_s``."""
    count_sql = "SELECT coalesce(sum(count), 0) AS n FROM gateway.audit_log WHERE tenant_id = $1"
    deadline, last, still = time.monotonic() + timeout_s, -1, 0
    while still < 3 and time.monotonic() < deadline:
        now = int(gw.sql(count_sql, caller.tenant_id)[0]["n"])
        still, last = (still + 1 if now == last else 0), now
        time.sleep(0.3)


def _failed(gw: StackClient, caller: Caller) -> dict[str, int]:
    """The tenant's refused or failed requests by status, reason and Envoy's flags."""
    rows = gw.sql(
        "SELECT status, reason, response_flags AS flags, sum(count) AS n FROM gateway.audit_log"
        " WHERE tenant_id = $1 AND status <> 200 GROUP BY status, reason, response_flags",
        caller.tenant_id,
    )
    return {
        " ".join(str(r[c]) for c in ("status", "reason", "flags") if r[c]): int(r["n"])
        for r in rows
    }


def _next_xid(gw: StackClient) -> int:
    return int(gw.sql("SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS x")[0]["x"])


def pg_connections(gw: StackClient) -> int:
    """The gateway database's client connections now, the bench's own query left out."""
    rows = gw.sql(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return int(rows[0]["n"])


def measure(
    target: str,
    urls: list[str],
    gw: StackClient,
    concurrency: int,
    seconds: float,
    processes: dict[str, int],
    audited: bool = True,
) -> ReplicaRow:
    caller = gw.caller(tenant=BENCH_TENANT)
    asyncio.run(_split(urls, caller.key, 4 * len(urls), 1.0))  # warm caches and connections
    meter = CpuMeter(processes)
    xid = _next_xid(gw)
    before = meter.sample()
    latencies, errors = asyncio.run(_split(urls, caller.key, concurrency, seconds))
    if audited:
        _settled(gw, caller)  # accounting's work for these requests ends here
    after = meter.sample()
    xacts = _next_xid(gw) - xid if audited else 0
    done = max(1, len(latencies))
    cpu: dict[str, float] = {}
    for name in before:
        kind = name.split("#")[0]
        cpu[kind] = cpu.get(kind, 0.0) + (after[name] - before[name]) * 1000 / done
    return ReplicaRow(
        Row.measured(target, "replicas", concurrency, latencies, errors, seconds),
        _failed(gw, caller) if audited and errors else {},
        pg_connections(gw),
        xacts / done,
        cpu,
    )


def _serving(gw: StackClient, url: str, timeout_s: float = 60.0) -> None:
    """Until a chat through ``url`` answers 200 (the replica has discovered the models)."""
    caller = gw.caller(tenant=BENCH_TENANT)
    deadline = time.monotonic() + timeout_s
    while True:
        _, errors = asyncio.run(_split([url], caller.key, 1, 0.2))
        if not errors:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer a chat with 200 in {timeout_s:.0f} s")
        time.sleep(0.5)


def run(stack: Stack, concurrency: int, seconds: float) -> list[ReplicaRow]:
    gw = StackClient(stack)
    rows = []
    raw, raw_url = start_envoy(stack, "raw envoy", lambda p, a: raw_envoy_config(stack, p, a))
    try:
        procs = pids([stack], raw)
        rows.append(measure("raw envoy", [raw_url], gw, concurrency, seconds, procs, False))
    finally:
        raw.stop()
    rows.append(measure("1 replica", [stack.listener], gw, concurrency, seconds, pids([stack])))
    second = Stack(
        StackConfig(
            database_url=stack.database_url,
            redis_url=stack.redis_url,
            ollama_urls=stack.ollama_urls,
            log_level=stack.config.log_level,
            redis_cluster=stack.config.redis_cluster,
        )
    ).start()
    try:
        _serving(gw, second.listener)
        urls = [stack.listener, second.listener]
        procs = pids([stack, second])
        rows.append(measure("2 replicas", urls, gw, concurrency, seconds, procs))
    finally:
        second.stop()
    return rows


def report(rows: list[ReplicaRow]) -> None:
    print("\nreplicas: non-streamed /api/chat, the load split evenly across the listeners")
    print(
        f"{'target':<12} {'conc':>4} {'req':>7} {'err':>4} {'req/s':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8}  failed"
    )
    for r in rows:
        failed = ", ".join(f"{k}: {v}" for k, v in r.failed.items())
        print(
            f"{r.load.target:<12} {r.load.concurrency:>4} {r.load.requests:>7} "
            f"{r.load.errors:>4} {r.load.rps:>7.0f} {r.load.p50_ms:>8.2f} {r.load.p99_ms:>8.2f}"
            f"  {failed}"
        )
    print(
        "PostgreSQL write transactions per request: "
        + ", ".join(f"{r.load.target} {r.pg_write_xacts_per_request:.3f}" for r in rows[1:])
    )
    print(
        "PostgreSQL connections after the load: "
        + ", ".join(f"{r.load.target} {r.pg_connections}" for r in rows)
    )
    print("CPU ms per request by process (a kind's processes summed over the replicas):")
    for r in rows:
        total = sum(v for k, v in r.cpu_ms_per_request.items() if k != "client")
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_ms_per_request.items())
        print(f"  {r.load.target:<12} {parts} | all but the client {total:.2f}")
    base = rows[0]
    for r in rows[1:]:
        print(f"  {r.load.target} / raw envoy throughput: x{r.load.rps / base.load.rps:.3f}")
