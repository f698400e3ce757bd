"""Accounting benchmark: what ext_proc adds to a stream, and how fast audit rows are written.

    .venv/bin/python -m bench.accounting [--seconds 5] [--concurrency 32] [--frames 50]

Starts the local stack, then a second Envoy with the same config minus the ext_proc filter
and the access log (authz and the RLS stay in both), and measures on loopback:

* **time to first byte** of a streamed chat, with and without accounting, at concurrency 1;
* **per-chunk delay**: a stream of ``--frames`` frames (the mock pauses 2 ms between frames so
  each is its own chunk): total stream time with and without accounting, divided by the
  frames, at concurrency 1 and N;
* **audit write rate**: rows per second the batched writer puts into ``gateway.audit_log``
  (multi-row INSERT … ON CONFLICT DO NOTHING, batches of 500), measured directly against the
  stack's Postgres; and the rows the running gateway wrote during the load above.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from accounting import audit
from bench.run import BENCH_TENANT, CHAT, percentile, start_envoy
from devstack import envoyconf
from devstack.client import StackClient
from devstack.processes import Proc
from devstack.stack import Stack, StackConfig


@dataclass
class StreamRow:
    target: str
    concurrency: int
    streams: int
    errors: int
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    total_p50_ms: float
    per_chunk_ms: float  # total stream time / frames (p50)


def without_accounting(stack: Stack, port: int, admin: int) -> dict[str, Any]:
    """The shipped config minus ext_proc (filter and per-route entries) and the access log."""
    return envoyconf.without_filters(
        stack.envoy_config(port, admin), list(envoyconf.ACCOUNTING_FILTERS), access_log=False
    )


async def streams(
    url: str, headers: dict[str, str], body: dict[str, Any], concurrency: int, seconds: float
) -> tuple[list[float], list[float], int]:
    """(time to first byte, total time, errors) of streamed chats, ``concurrency`` at once."""
    ttfb: list[float] = []
    total: list[float] = []
    errors = 0
    payload = json.dumps(body).encode()
    hdrs = {**headers, "content-type": "application/json"}
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    async with session.post(url, data=payload, headers=hdrs) as resp:
                        await resp.content.readany()
                        first = time.perf_counter()
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                            continue
                    ttfb.append(first - start)
                    total.append(time.perf_counter() - start)
                except aiohttp.ClientError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfb, total, errors


async def stream_rows(
    target: str, url: str, key: str, seconds: float, concurrency: int, frames: int
) -> list[StreamRow]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {**CHAT, "stream": True, "options": {"num_predict": frames, "mock_frame_delay_ms": 2}}
    await streams(f"{url}/api/chat", headers, body, 4, 1.0)  # warm caches and connections
    rows = []
    for conc in (1, concurrency):
        ttfb, total, errors = await streams(f"{url}/api/chat", headers, body, conc, seconds)
        rows.append(
            StreamRow(
                target=target,
                concurrency=conc,
                streams=len(total),
                errors=errors,
                ttfb_p50_ms=percentile(ttfb, 0.5) * 1000,
                ttfb_p99_ms=percentile(ttfb, 0.99) * 1000,
                total_p50_ms=percentile(total, 0.5) * 1000,
                per_chunk_ms=percentile(total, 0.5) * 1000 / frames,
            )
        )
    return rows


async def audit_write_rate(database_url: str, rows: int = 50_000, batch: int = 500) -> float:
    """Rows/s of the audit writer itself (synthetic rows, the gateway's batch size)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    try:
        start = time.perf_counter()
        for offset in range(0, rows, batch):
            await audit.write(
                pool,
                [
                    audit.AuditRow(
                        request_id=f"bench-{run}-{i}",
                        ts=now,
                        tenant_id=None,
                        key_prefix="benchbenchbe",
                        method="POST",
                        endpoint="/api/chat",
                        model="llama3.2:latest",
                        status=200,
                        tokens_in=4,
                        tokens_out=50,
                        tokens_estimated=False,
                        latency_ms=12.5,
                        bytes_in=120,
                        bytes_out=9000,
                        client_ip="127.0.0.1",
                        response_flags="",
                        error=None,
                    )
                    for i in range(offset, offset + batch)
                ],
            )
        elapsed = time.perf_counter() - start
        await pool.execute(
            "DELETE FROM gateway.audit_log WHERE request_id LIKE $1", f"bench-{run}-%"
        )
        return rows / elapsed
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    stack = Stack(StackConfig(log_level="warning")).start()
    bare: Proc | None = None
    try:
        gw = StackClient(stack)
        key = gw.new_key(tenant=BENCH_TENANT)
        bare, url = start_envoy(
            stack, "no accounting", lambda port, admin: without_accounting(stack, port, admin)
        )
        without = asyncio.run(
            stream_rows(
                "no ext_proc",
                url,
                key,
                args.seconds,
                args.concurrency,
                args.frames,
            )
        )
        before = gw.sql("SELECT count(*) AS n FROM gateway.audit_log")[0]["n"]
        started = time.perf_counter()
        with_acc = asyncio.run(
            stream_rows("gateway", stack.listener, key, args.seconds, args.concurrency, args.frames)
        )
        time.sleep(1.0)  # let the last rows land
        gateway_rows = gw.sql("SELECT count(*) AS n FROM gateway.audit_log")[0]["n"] - before
        gateway_rate = gateway_rows / (time.perf_counter() - started)
        writer_rate = asyncio.run(audit_write_rate(stack.database_url))
    finally:
        if bare is not None:
            bare.stop()
        stack.stop()

    print(
        f"\nmachine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; "
        f"streams of {args.frames} frames, 2 ms apart\n"
    )
    print(
        f"{'target':<12} {'conc':>4} {'streams':>7} {'err':>4} {'TTFB p50':>9} "
        f"{'TTFB p99':>9} {'total p50':>10} {'per chunk':>10}"
    )
    for r in [*without, *with_acc]:
        print(
            f"{r.target:<12} {r.concurrency:>4} {r.streams:>7} {r.errors:>4} "
            f"{r.ttfb_p50_ms:>8.2f}ms {r.ttfb_p99_ms:>8.2f}ms {r.total_p50_ms:>9.2f}ms "
            f"{r.per_chunk_ms:>9.3f}ms"
        )
    print("\nadded by accounting (ext_proc + access log):")
    for base, acc in zip(without, with_acc, strict=True):
        print(
            f"  c={acc.concurrency:<3} TTFB p50 +{acc.ttfb_p50_ms - base.ttfb_p50_ms:.2f} ms, "
            f"per chunk +{acc.per_chunk_ms - base.per_chunk_ms:.3f} ms"
        )
    print(f"\naudit rows written by the gateway during the load: {gateway_rate:.0f} rows/s")
    print(f"audit writer alone (batches of 500): {writer_rate:.0f} rows/s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "streams": [asdict(r) for r in [*without, *with_acc]],
                    "gateway_audit_rows_per_s": gateway_rate,
                    "audit_writer_rows_per_s": writer_rate,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
