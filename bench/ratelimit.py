"""Rate-limit benchmark: the RLS's decision cost and the latency the ratelimit filter adds.

    .venv/bin/python -m bench.ratelimit [--seconds 5] [--concurrency 32] [--json out.json]

Starts the local stack, then measures on loopback:

* **decision cost**: ``ShouldRateLimit`` called directly over gRPC with the descriptors Envoy
  sends for an inference request (context, model, key/tenant requests/min, key/tenant
  tokens/min check), all with limits, so every decision is one Lua round trip to Redis; and the
  same call with no limits at all (no Redis), at concurrency 1 and N;
* **added latency**: the same chat through the gateway and through a second Envoy with the
  same config minus the ratelimit filter (and its descriptors), at concurrency 1 and N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import psutil
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2

from bench.run import BENCH_TENANT, CHAT, Row, load, start_envoy
from devstack import envoyconf
from devstack.client import StackClient
from devstack.processes import Proc
from devstack.stack import Stack, StackConfig

_D = ratelimit_pb2.RateLimitDescriptor
BIG = 1_000_000_000


def _descriptor(pairs: list[tuple[str, str]], limit: int | None, hits: int | None = None) -> Any:
    d = _D(entries=[_D.Entry(key=k, value=v) for k, v in pairs])
    if limit is not None:
        d.limit.requests_per_unit = limit
        d.limit.unit = ratelimit_unit_pb2.MINUTE
    if hits is not None:
        d.hits_addend.value = hits
    return d


def gateway_request(tenant_id: str, key_id: str, limited: bool) -> Any:
    limit = BIG if limited else None
    t = ("tenant_id", tenant_id)
    k = ("key_id", key_id)
    return rls_pb2.RateLimitRequest(
        domain="gateway",
        descriptors=[
            _descriptor([("surface", "ollama"), ("tenant", "bench")], None),
            _descriptor([("model", "llama3.2:latest")], None),
            _descriptor([("limit", "key_rpm"), t, k], limit),
            _descriptor([("limit", "tenant_rpm"), t], limit),
            _descriptor([("limit", "key_tpm"), t, k], limit, 0),
            _descriptor([("limit", "tenant_tpm"), t], limit, 0),
        ],
    )


async def rls_rows(target: str, request: Any, seconds: float, concurrency: int) -> list[Row]:
    rows = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        for conc in (1, concurrency):
            latencies: list[float] = []
            errors: list[int] = []
            deadline = time.perf_counter() + seconds
            await asyncio.gather(
                *(_decide_until(stub, request, deadline, latencies, errors) for _ in range(conc))
            )
            rows.append(
                Row.measured("rls", f"decide c={conc}", conc, latencies, len(errors), seconds)
            )
    return rows


async def _decide_until(
    stub: Any, request: Any, deadline: float, latencies: list[float], errors: list[int]
) -> None:
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            answer = await stub.ShouldRateLimit(request, timeout=5)
            latencies.append(time.perf_counter() - start)
            if answer.overall_code != rls_pb2.RateLimitResponse.OK:
                errors.append(1)
        except grpc.aio.AioRpcError:
            errors.append(1)


def without_ratelimit(stack: Stack, port: int, admin: int) -> dict[str, Any]:
    """The shipped config with the ratelimit filter and the descriptors removed."""
    return envoyconf.without_filters(
        stack.envoy_config(port, admin), ["envoy.filters.http.ratelimit"]
    )


async def chat_rows(name: str, url: str, key: str, seconds: float, conc: int) -> list[Row]:
    headers = {"Authorization": f"Bearer {key}"}
    await load(f"{url}/api/chat", headers, CHAT, 4, 1.0)  # warm caches and connections
    rows = []
    for c in (1, conc):
        lat, errors = await load(f"{url}/api/chat", headers, CHAT, c, seconds)
        rows.append(Row.measured(name, f"chat c={c}", c, lat, errors, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    stack = Stack(StackConfig(log_level="warning")).start()
    other: Proc | None = None
    try:
        gw = StackClient(stack)
        tenant_id, _ = gw.tenant(allow_all=True, **BENCH_TENANT)
        created = gw.key(tenant_id)
        target = f"127.0.0.1:{stack.ports['ratelimit']}"
        rows = asyncio.run(
            rls_rows(
                target,
                gateway_request(tenant_id, created.key_id, limited=True),
                args.seconds,
                args.concurrency,
            )
        )
        unlimited = asyncio.run(
            rls_rows(
                target,
                gateway_request(tenant_id, created.key_id, limited=False),
                args.seconds,
                args.concurrency,
            )
        )
        for row in unlimited:
            row.target = "rls"
            row.scenario += " (no limits)"
        rows += unlimited

        other, url = start_envoy(
            stack, "no ratelimit", lambda port, admin: without_ratelimit(stack, port, admin)
        )
        base = asyncio.run(
            chat_rows(
                "no filter",
                url,
                created.full_key,
                args.seconds,
                args.concurrency,
            )
        )
        full = asyncio.run(
            chat_rows("gateway", stack.listener, created.full_key, args.seconds, args.concurrency)
        )
        rows += base + full
    finally:
        if other is not None:
            other.stop()
        stack.stop()

    print(
        f"\nmachine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}\n"
    )
    print(
        f"{'target':<10} {'scenario':<26} {'req':>7} {'err':>4} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    for r in rows:
        print(
            f"{r.target:<10} {r.scenario:<26} {r.requests:>7} {r.errors:>4} {r.rps:>8.0f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
        )
    print("\nlatency the ratelimit filter adds to a chat (gateway - same config without it):")
    for b, g in zip(base, full, strict=True):
        print(
            f"  {g.scenario:<12} p50 +{g.p50_ms - b.p50_ms:.2f} ms, "
            f"p99 +{g.p99_ms - b.p99_ms:.2f} ms, throughput x{g.rps / b.rps:.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [asdict(r) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
