"""Scaling figures (issue 16 §5, docs/SCALING.md): what a request costs Redis and PostgreSQL,
and the gateway's throughput at one and two replicas on one Redis and one PostgreSQL.

    .venv/bin/python -m bench.scaling [--seconds 5] [--requests 200] [--json out.json]
    .venv/bin/python -m bench.scaling --redis-cluster     # on a 3 masters + 3 replicas cluster

Three parts, on the real local stack (devstack.stack.Stack), loopback only:

* ``cost``: for each request shape (non-streamed and streamed ``/api/chat``, a streamed OpenAI
  ``/v1/chat/completions``, 401 for a wrong key, 429 over requests/min) a batch of
  ``--requests``; per request: Redis commands by name (a script as one op, and the key
  operations the scripts ran), Redis round trips, script and gRPC calls by the services' own
  counters, PostgreSQL write transactions, commits and rows per table, counted once accounting
  has written the batch's audit rows (bench/request_cost.py says how each is counted);
* ``replicas`` (bench/replicas.py): non-streamed ``/api/chat`` at ``--concurrency`` against
  raw Envoy, one replica and two replicas sharing PostgreSQL and Redis;
* ``redis`` (bench/redis_ceiling.py): ``redis-benchmark`` of GET/SET and of the rate-limit
  script's EVALSHA against one of the stack's Redis nodes, the per-shard ceiling.

``--only cost|replicas|redis`` runs one part. Bounded in time; every process it starts is
stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench import redis_ceiling, replicas, request_cost, streams
from bench.request_cost import PG_STATS_DELAY_S, Background, Meter, PgStats, Window
from bench.run import BENCH_TENANT, CHAT
from devstack.client import StackClient
from devstack.stack import SERVICES, Stack, StackConfig

OPENAI_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Shape:
    name: str
    path: str
    body: dict[str, Any]
    status: int  # what every request of the batch should get
    key: str  # "main", "wrong" (one never-issued key), "distinct" (a new one each), "rpm1"
    requests: int


def shapes(requests: int, frames: int) -> list[Shape]:
    openai = {
        "model": streams.MODEL,
        "messages": [{"role": "user", "content": "stream me please"}],
        "stream": True,
        "max_tokens": frames - 1,
    }
    return [
        # First after the idle window: its one admitted warm-up request is < 60 s old.
        Shape("429 over requests/min", "/api/chat", CHAT, 429, "rpm1", requests),
        Shape("chat", "/api/chat", CHAT, 200, "main", requests),
        Shape(
            f"chat stream x{frames}",
            "/api/chat",
            streams.stream_body(frames),
            200,
            "main",
            requests,
        ),
        Shape(f"openai stream x{frames}", OPENAI_PATH, openai, 200, "main", requests),
        Shape("401 same wrong key", "/api/chat", CHAT, 401, "wrong", requests),
        # Fresh wrong keys from one address: within the per-address limit (authz/keys.py: 60
        # keys in no cache per window) each costs an argon2 verify and a database read.
        Shape("401 new wrong keys", "/api/chat", CHAT, 401, "distinct", min(requests, 40)),
    ]


def wrong_key() -> str:
    """A well-formed key (gateway/apikeys.py) that was never issued."""
    prefix = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"nz_{prefix}_{secret}"


async def send(
    url: str, body: dict[str, Any], keys: Callable[[], str], count: int, concurrency: int
) -> Counter[int]:
    """``count`` requests, ``concurrency`` at a time, each read to its end: statuses."""
    payload = json.dumps(body).encode()
    statuses: Counter[int] = Counter()
    left = count
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                headers = {"Authorization": f"Bearer {keys()}", "content-type": "application/json"}
                try:
                    async with session.post(url, data=payload, headers=headers) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                except (aiohttp.ClientError, TimeoutError):
                    statuses[0] += 1

        await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return statuses


# -- part 1: per-request cost ---------------------------------------------------------------


@dataclass
class CostRow:
    """One shape's cost per request, the stack's idle background subtracted."""

    shape: str
    requests: int
    statuses: dict[int, int]
    seconds: float
    redis_commands: dict[str, float]  # INFO commandstats, by name (inside scripts included)
    redis_sent: float  # commands the services sent (a script: one)
    redis_sent_by_name: dict[str, float]
    redis_scripts: float  # EVALSHA / EVAL among them
    redis_in_scripts: float  # key operations the scripts ran
    redis_in_scripts_by_name: dict[str, float]
    redis_reads: float  # socket reads by Redis: round trips
    script_calls: dict[str, float]  # neuronetz_redis_script_seconds_count by script
    rpcs: dict[str, float]  # neuronetz_rpc_seconds_count by service.method
    pg_write_xacts: float  # transaction ids assigned
    pg_commits: float  # pg_stat_database.xact_commit
    pg_rows: dict[str, tuple[float, float, float]]  # table -> inserted, updated, deleted
    # rows inserted or updated per write transaction (the batching of audit and ledger rows)
    rows_per_write_xact: float


def per_request(
    shape: Shape,
    statuses: Counter[int],
    w: Window,
    bg: Background,
    pg_seconds: float,
    commits: int,
    rows: dict[str, tuple[int, int, int]],
) -> CostRow:
    n = shape.requests

    def net(count: float, rate: float, seconds: float = w.seconds) -> float:
        return (count - rate * seconds) / n

    def nets(counts: dict[str, int], rates: dict[str, float]) -> dict[str, float]:
        names = sorted(set(counts) | set(rates))
        found = {k: net(counts.get(k, 0), rates.get(k, 0.0)) for k in names}
        return {k: v for k, v in found.items() if round(v, 2) != 0}

    split = w.split
    sent = sum(v for (src, _), v in split.items() if src == "client")
    sent_bg = sum(v for (src, _), v in bg.split.items() if src == "client")
    sent_by_name = {name: v for (src, name), v in split.items() if src == "client"}
    sent_by_name_bg = {name: v for (src, name), v in bg.split.items() if src == "client"}
    lua = {name: v for (src, name), v in split.items() if src == "lua"}
    lua_bg = {name: v for (src, name), v in bg.split.items() if src == "lua"}
    scripts = sum(split.get(("client", s), 0) for s in ("evalsha", "eval"))
    scripts_bg = sum(bg.split.get(("client", s), 0.0) for s in ("evalsha", "eval"))
    table_rows: dict[str, tuple[float, float, float]] = {}
    for table in sorted(set(rows) | set(bg.rows)):
        got, rate = rows.get(table, (0, 0, 0)), bg.rows.get(table, (0.0, 0.0, 0.0))
        delta = tuple(net(got[i], rate[i], pg_seconds) for i in range(3))
        if any(round(v, 2) for v in delta):
            table_rows[table] = (delta[0], delta[1], delta[2])
    xacts = net(w.xids, bg.xids)
    return CostRow(
        shape=shape.name,
        requests=n,
        statuses=dict(sorted(statuses.items())),
        seconds=w.seconds,
        redis_commands=nets(dict(w.commands), bg.commands),
        redis_sent=net(sent, sent_bg),
        redis_sent_by_name=nets(sent_by_name, sent_by_name_bg),
        redis_scripts=net(scripts, scripts_bg),
        redis_in_scripts=net(sum(lua.values()), sum(lua_bg.values())),
        redis_in_scripts_by_name=nets(lua, lua_bg),
        redis_reads=net(w.reads, bg.reads),
        script_calls=nets(
            {k[7:]: v for k, v in w.counters.items() if k.startswith("script:")},
            {k[7:]: v for k, v in bg.counters.items() if k.startswith("script:")},
        ),
        rpcs=nets(
            {k[4:]: v for k, v in w.counters.items() if k.startswith("rpc:")},
            {k[4:]: v for k, v in bg.counters.items() if k.startswith("rpc:")},
        ),
        pg_write_xacts=xacts,
        pg_commits=net(commits, bg.commits, pg_seconds),
        pg_rows=table_rows,
        rows_per_write_xact=_ratio(sum(i + u for i, u, _ in table_rows.values()), xacts),
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def callers(stack: Stack) -> dict[str, Callable[[], str]]:
    """The keys of the shapes (Shape.key): what each request presents."""
    gw = StackClient(stack)
    main_key = gw.new_key(tenant=BENCH_TENANT)
    rpm1_key = gw.new_key(tenant={**BENCH_TENANT, "requests_per_minute": 1})
    the_wrong = wrong_key()
    return {
        "main": lambda: main_key,
        "rpm1": lambda: rpm1_key,
        "wrong": lambda: the_wrong,
        "distinct": wrong_key,
    }


async def measure_costs(
    stack: Stack, keys: dict[str, Callable[[], str]], args: argparse.Namespace
) -> tuple[list[CostRow], Background]:
    todo = shapes(args.requests, args.frames)
    conn = await asyncpg.connect(stack.database_url)
    try:
        metrics = {name: stack.metrics_url(name) for name in SERVICES}
        meter = Meter(redis_nodes(stack), metrics, conn)
        # Warm up: connections, caches, the bench's prepared statements (each of its SQL
        # statements then costs exactly one transaction: PgStats and the polls subtract them).
        for shape in todo:
            if shape.key != "distinct":
                # as many at once as a batch sends: the services' connection pools grow here
                conc = args.cost_concurrency
                count = 1 if shape.key == "rpm1" else 2 * conc
                await send(stack.listener + shape.path, shape.body, keys[shape.key], count, conc)
        await request_cost.next_xid(conn)
        await request_cost.audited(conn)
        await PgStats.take(conn)
        await meter.window(asyncio.sleep(0), 0)  # settles the warm-up's audit rows
        await asyncio.sleep(PG_STATS_DELAY_S)
        pg_before = await PgStats.take(conn)
        pg_started = time.perf_counter()

        async def pg_window(w: Window) -> tuple[float, int, dict[str, tuple[int, int, int]]]:
            nonlocal pg_before, pg_started
            await asyncio.sleep(PG_STATS_DELAY_S)
            pg_after = await PgStats.take(conn)
            now = time.perf_counter()
            own = w.own_statements + PgStats.STATEMENTS
            commits, _, rows = pg_after.minus(pg_before, own)
            seconds = now - pg_started
            pg_before, pg_started = pg_after, now
            return seconds, commits, rows

        idle = await meter.window(asyncio.sleep(args.idle_seconds), 0)
        bg = Background.of(idle, *await pg_window(idle))
        rows = []
        for shape in todo:
            sent: Counter[int] = Counter()

            async def batch(shape: Shape = shape, sent: Counter[int] = sent) -> None:
                url = stack.listener + shape.path
                sent.update(
                    await send(
                        url, shape.body, keys[shape.key], shape.requests, args.cost_concurrency
                    )
                )

            w = await meter.window(batch(), shape.requests)
            pg_seconds, commits, table_rows = await pg_window(w)
            rows.append(per_request(shape, sent, w, bg, pg_seconds, commits, table_rows))
            unexpected = sum(n for status, n in sent.items() if status != shape.status)
            warning = f" ({unexpected} not {shape.status}!)" if unexpected else ""
            print(f"  measured {shape.name}: {dict(sent)}{warning}", flush=True)
    finally:
        await conn.close()
    return rows, bg


def print_costs(rows: list[CostRow], bg: Background, concurrency: int) -> None:
    print(f"\nper request ({concurrency} at a time; the idle stack's background subtracted)")
    print(
        f"{'shape':<24} {'n':>4} {'statuses':<10} {'redis':>6} {'scripts':>7} {'in lua':>6} "
        f"{'trips':>6} {'pg wr':>6} {'rows/wr':>7} {'commit*':>7}"
    )
    for r in rows:
        statuses = ",".join(f"{k}:{v}" for k, v in r.statuses.items())
        print(
            f"{r.shape:<24} {r.requests:>4} {statuses:<10} {r.redis_sent:>6.2f} "
            f"{r.redis_scripts:>7.2f} {r.redis_in_scripts:>6.2f} {r.redis_reads:>6.2f} "
            f"{r.pg_write_xacts:>6.3f} {r.rows_per_write_xact:>7.2f} {r.pg_commits:>7.3f}"
        )
    print(
        "  redis: commands the services sent (a script counts one); scripts: EVALSHA or EVAL;"
        "\n  in lua: key operations the scripts ran; trips: Redis's socket reads (round trips);"
        "\n  pg wr: write transactions (xids assigned); rows/wr: rows inserted or updated per"
        "\n  write transaction; commit*: pg_stat_database.xact_commit, which PostgreSQL publishes"
        "\n  for a backend only with its table statistics (probes' commits come in lumps)"
    )
    for r in rows:
        print(f"\n{r.shape}:")
        print("  commandstats (scripts' commands included): " + fmt(r.redis_commands))
        print("  sent by the services: " + fmt(r.redis_sent_by_name))
        print("  run inside scripts: " + fmt(r.redis_in_scripts_by_name))
        print("  script calls (services' counters): " + fmt(r.script_calls))
        print("  gRPC calls: " + fmt(r.rpcs))
        tables = ", ".join(f"{t} +{i:.2f} ~{u:.2f} -{d:.2f}" for t, (i, u, d) in r.pg_rows.items())
        print(f"  PostgreSQL rows (+inserted ~updated -deleted): {tables or 'none'}")
    sent = sum(v for (src, _), v in bg.split.items() if src == "client")
    print(
        f"\nidle background per second: Redis commands sent {sent:.1f}, round trips "
        f"{bg.reads:.1f}; PostgreSQL write transactions {bg.xids:.2f}, commits* {bg.commits:.2f}"
    )


def fmt(values: dict[str, float]) -> str:
    return (
        ", ".join(f"{k} {v:.2f}" for k, v in sorted(values.items(), key=lambda kv: -kv[1]))
        or "none"
    )


# -- main -------------------------------------------------------------------------------------


def redis_nodes(stack: Stack) -> list[str]:
    """The Redis nodes that serve the stack's commands: one, or a cluster's masters."""
    if stack.redis_cluster is not None:
        return [node.url for node in stack.redis_cluster.primaries()]
    return [stack.redis_url]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each throughput run")
    parser.add_argument("--concurrency", type=int, default=64, help="the replicas' load")
    parser.add_argument("--requests", type=int, default=200, help="requests per cost batch")
    parser.add_argument("--cost-concurrency", type=int, default=16, help="a cost batch's")
    parser.add_argument("--frames", type=int, default=50, help="NDJSON/SSE frames of a stream")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="the idle window")
    parser.add_argument("--redis-requests", type=int, default=200_000, help="redis-benchmark -n")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="on a 3 masters + 3 replicas Redis Cluster"
    )
    parser.add_argument("--only", choices=("cost", "replicas", "redis"), help="run one part")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    parts = {args.only} if args.only else {"cost", "replicas", "redis"}
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "redis": "cluster, 3 masters + 3 replicas" if args.redis_cluster else "one node",
        "load_average_before": os.getloadavg(),
    }
    costs: list[CostRow] = []
    replica_rows: list[replicas.ReplicaRow] = []
    redis_rows: list[redis_ceiling.RedisBenchRow] = []
    config = StackConfig(log_level="warning", redis_cluster=args.redis_cluster)
    stack = Stack(config).start()
    try:
        if "cost" in parts:
            costs, bg = asyncio.run(measure_costs(stack, callers(stack), args))
            result["cost"] = [asdict(r) for r in costs]
            idle = asdict(bg)
            idle["split"] = {f"{src}:{name}": v for (src, name), v in bg.split.items()}
            result["idle_background_per_s"] = idle
        if "replicas" in parts:
            replica_rows = replicas.run(stack, args.concurrency, args.seconds)
            result["replicas"] = [asdict(r) for r in replica_rows]
        if "redis" in parts:
            if stack.redis_cluster is None:
                redis_rows = redis_ceiling.run(stack.redis_url, args.redis_requests)
                result["redis_benchmark"] = [asdict(r) for r in redis_rows]
            else:
                # A shard is one redis-server: its ceiling is the one-node run's.
                print("redis: the per-shard ceiling is measured without --redis-cluster")
    finally:
        stack.stop()
    result["load_average_after"] = os.getloadavg()
    print(
        f"\n{result['date']}; machine: {result['machine']}; Redis: {result['redis']}; "
        f"load average before {fmt_load(result['load_average_before'])}, "
        f"after {fmt_load(result['load_average_after'])}"
    )
    if costs:
        print_costs(costs, bg, args.cost_concurrency)
    if replica_rows:
        replicas.report(replica_rows)
    redis_ceiling.report(redis_rows)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
