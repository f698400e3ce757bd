"""What one request costs the shared stores, counted (issue 16 §5, bench/scaling.py).

For a batch of requests of one shape, the deltas of:

* Redis, by command name, from ``INFO commandstats`` (a Lua script's own ``redis.call``s are
  counted there too, under their names), split by a ``MONITOR`` watcher into the commands the
  services sent and those their scripts ran; and ``total_reads_processed`` (INFO stats): the
  socket reads Redis made, one per request or pipeline a client sent — its round trips;
* the services' own counters: ``neuronetz_redis_script_seconds_count{script}`` (script round
  trips, a pipeline carrying one counted once) and ``neuronetz_rpc_seconds_count`` (the gRPC
  calls Envoy made to them);
* PostgreSQL: transaction ids assigned (write transactions, exact and immediate), and from the
  statistics views ``pg_stat_database.xact_commit`` and ``pg_stat_user_tables`` inserted /
  updated / deleted rows per table. PostgreSQL publishes a backend's statistics at most once a
  second and an idle backend's within 10 s (PGSTAT_IDLE_INTERVAL), so those are read after
  :data:`PG_STATS_DELAY_S` of quiet. ``xact_commit`` is not exact per window: a backend
  publishes its commit count only with table statistics, so the commits of transactions that
  touch no table (health probes' ``SELECT 1``) arrive in lumps, whenever that backend next
  writes or reads a table.

The bench's own commands (``INFO``, its ``MONITOR``, its SQL) are left out; what the services
do on their own, with no request (heartbeats, discovery, lease renewals), is measured over an
idle window and subtracted at its rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

# Longer than PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s): every backend has published by then.
PG_STATS_DELAY_S = 11.0
# The bench's own commands, one each per window: INFO (the snapshot after), MONITOR, and the
# ECHO that stops the watcher; each is also one socket read.
_OWN_COMMANDS = frozenset({"info", "monitor", "echo"})
_OWN_READS = len(_OWN_COMMANDS)


def redis_client(url: str) -> redis.Redis:
    parts = urlsplit(url)
    # No CLIENT SETINFO on connect: the bench's connections send only what it counts as its own.
    return redis.Redis(
        host=parts.hostname or "127.0.0.1", port=parts.port or 6379, driver_info=None
    )


@dataclass
class RedisSnapshot:
    """Summed over the nodes given (a cluster's masters: a replica's counters repeat them)."""

    calls: Counter[str]  # commandstats: calls by command name
    reads: int  # total_reads_processed
    nodes: int

    @classmethod
    def take(cls, clients: list[redis.Redis]) -> RedisSnapshot:
        calls: Counter[str] = Counter()
        reads = 0
        for client in clients:
            info: dict[str, Any] = client.info("all")
            for name, value in info.items():
                if name.startswith("cmdstat_"):
                    calls[name.removeprefix("cmdstat_").lower()] += int(value["calls"])
            reads += int(info["total_reads_processed"])
        return cls(calls, reads, len(clients))

    def minus(self, before: RedisSnapshot) -> tuple[Counter[str], int]:
        """Commands and reads since ``before``, less the bench's own (INFO, MONITOR, ECHO)."""
        calls = Counter(self.calls)
        calls.subtract(before.calls)
        for own in _OWN_COMMANDS:
            calls.pop(own, None)
        return +calls, self.reads - before.reads - _OWN_READS * self.nodes


class Monitor:
    """Counts the commands Redis runs while it watches, by (``client`` | ``lua``, name)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.counts: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._marker = f"nz-bench-monitor-{id(self)}"
        self._ready = threading.Event()
        self.failed: Exception | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("MONITOR did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._client.echo(self._marker)  # the watcher stops when it sees this
        self._thread.join(30)
        if self.failed is not None:
            raise RuntimeError("the MONITOR watcher failed: its counts are incomplete") from (
                self.failed
            )

    def _watch(self) -> None:
        try:
            self._count()
        except Exception as exc:
            self.failed = exc
            self._ready.set()

    def _count(self) -> None:
        with self._client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            while True:
                seen = monitor.next_command()
                name = str(seen["command"]).split(" ", 1)[0].lower()
                if name == "echo" and self._marker in seen["command"]:
                    if self._stop.is_set():
                        return
                    continue
                if name in _OWN_COMMANDS:
                    continue
                source = "lua" if seen.get("client_type") == "lua" else "client"
                self.counts[(source, name)] += 1


def metric_counts(urls: Mapping[str, str]) -> Counter[str]:
    """The services' script and RPC call counters, by ``script:<name>`` and
    ``rpc:<service>.<method>``, summed over their other labels."""
    found: Counter[str] = Counter()
    for url in urls.values():
        text = httpx.get(url, timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "neuronetz_redis_script_seconds_count":
                    found[f"script:{sample.labels['script']}"] += int(sample.value)
                elif sample.name == "neuronetz_rpc_seconds_count":
                    method = sample.labels["method"]
                    found[f"rpc:{sample.labels['service']}.{method}"] += int(sample.value)
    return found


_PG_TABLES = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables
WHERE schemaname = 'gateway'
"""


@dataclass
class PgStats:
    """The statistics views, published (read after :data:`PG_STATS_DELAY_S` of quiet)."""

    commits: int
    rollbacks: int
    rows: dict[str, tuple[int, int, int]]  # table -> inserted, updated, deleted

    @classmethod
    async def take(cls, conn: asyncpg.Connection) -> PgStats:
        # Each statement is a transaction of its own (counted in STATEMENTS), each reading the
        # views afresh.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        db = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        assert db is not None
        rows = {
            r["relname"]: (r["n_tup_ins"], r["n_tup_upd"], r["n_tup_del"])
            for r in await conn.fetch(_PG_TABLES)
        }
        return cls(int(db["xact_commit"]), int(db["xact_rollback"]), rows)

    STATEMENTS = 3  # the transactions :meth:`take` itself commits

    def minus(self, before: PgStats, own: int) -> tuple[int, int, dict[str, tuple[int, int, int]]]:
        """Commits (less ``own``: the bench's statements in between), rollbacks, and the rows
        changed per table (only tables that changed)."""
        tables: dict[str, tuple[int, int, int]] = {}
        for name, now in self.rows.items():
            was = before.rows.get(name, (0, 0, 0))
            delta = (now[0] - was[0], now[1] - was[1], now[2] - was[2])
            if any(delta):
                tables[name] = delta
        return self.commits - before.commits - own, self.rollbacks - before.rollbacks, tables


async def next_xid(conn: asyncpg.Connection) -> int:
    """The next transaction id PostgreSQL will assign (assigns none itself)."""
    return int(await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))


async def audited(conn: asyncpg.Connection) -> int:
    """Requests in the audit log: rows, an aggregated denial row counting ``count``."""
    return int(await conn.fetchval("SELECT coalesce(sum(count), 0) FROM gateway.audit_log"))


@dataclass
class Window:
    """Deltas over one batch (the tight window: Redis, service counters, transaction ids)."""

    seconds: float
    commands: Counter[str]
    reads: int
    split: Counter[tuple[str, str]]
    counters: Counter[str]
    xids: int
    own_statements: int = 0  # the bench's SQL statements in the window (polls)


@dataclass
class Background:
    """What the stack does per second with no request, from an idle window."""

    commands: dict[str, float] = field(default_factory=dict)
    reads: float = 0.0
    split: dict[tuple[str, str], float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    xids: float = 0.0
    commits: float = 0.0
    rows: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        idle: Window,
        pg_seconds: float,
        commits: int,
        rows: Mapping[str, tuple[int, int, int]],
    ) -> Background:
        s = idle.seconds
        return cls(
            commands={k: v / s for k, v in idle.commands.items()},
            reads=idle.reads / s,
            split={k: v / s for k, v in idle.split.items()},
            counters={k: v / s for k, v in idle.counters.items()},
            xids=idle.xids / s,
            commits=commits / pg_seconds,
            rows={
                k: (v[0] / pg_seconds, v[1] / pg_seconds, v[2] / pg_seconds)
                for k, v in rows.items()
            },
        )


class Meter:
    """Takes the snapshots around a batch; ``pg`` is a connection of the bench's own."""

    def __init__(
        self, redis_urls: list[str], metrics: Mapping[str, str], pg: asyncpg.Connection
    ) -> None:
        self.redis = [redis_client(url) for url in redis_urls]
        self.metrics = dict(metrics)
        self.pg = pg

    async def window(self, batch: Any, expect_audited: int, timeout_s: float = 60.0) -> Window:
        """Runs ``batch`` (an awaitable) inside the snapshots and waits until the audit log
        holds ``expect_audited`` more requests and accounting has written its buffers."""
        audited_before = await audited(self.pg)
        before = await asyncio.to_thread(RedisSnapshot.take, self.redis)
        counters_before = await asyncio.to_thread(metric_counts, self.metrics)
        xid_before = await next_xid(self.pg)
        started = time.perf_counter()
        with contextlib.ExitStack() as watching:
            monitors = [watching.enter_context(Monitor(redis_client_like(c))) for c in self.redis]
            await batch
            polls = await self._settle(audited_before + expect_audited, timeout_s)
        split: Counter[tuple[str, str]] = Counter()
        for monitor in monitors:
            split.update(monitor.counts)
        seconds = time.perf_counter() - started
        xids = await next_xid(self.pg) - xid_before
        counters = await asyncio.to_thread(metric_counts, self.metrics)
        after = await asyncio.to_thread(RedisSnapshot.take, self.redis)
        commands, reads = after.minus(before)
        counters.subtract(counters_before)
        # the bench's own: audited() before, next_xid twice, each poll
        return Window(
            seconds,
            commands,
            reads,
            +split,
            +counters,
            xids,
            own_statements=2 + polls,
        )

    async def _settle(self, target: int, timeout_s: float) -> int:
        """Polls until the audit log holds ``target`` requests and holds still (no buffered
        row left: the count stays for three polls). Returns the polls made."""
        deadline = time.monotonic() + timeout_s
        polls, last, still = 0, -1, 0
        while True:
            polls += 1
            now = await audited(self.pg)
            still = still + 1 if now == last and now >= target else 0
            if still >= 3:
                return polls
            if time.monotonic() > deadline:
                raise TimeoutError(f"audit log holds {now} requests, expected {target}")
            last = now
            await asyncio.sleep(0.25)


def redis_client_like(client: redis.Redis) -> redis.Redis:
    """A second client on the same server for MONITOR, which takes a connection for itself and
    may wait on a quiet node for as long as the batch runs (no read timeout)."""
    kwargs = client.connection_pool.connection_kwargs
    return redis.Redis(
        host=kwargs["host"], port=kwargs["port"], socket_timeout=None, driver_info=None
    )
