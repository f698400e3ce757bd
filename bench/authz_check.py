"""authz Check cost: cold (argon2id verify) and warm (cached key), called over gRPC.

    .venv/bin/python -m bench.authz_check [--requests 2000] [--cold 20] [--concurrency 16]

Starts the local stack (real PostgreSQL, Redis, mock Ollama, our services), creates keys with
the production argon2id parameters, then calls authz's ext_authz ``Check`` directly, with the
CheckRequest Envoy sends for a non-streamed ``/api/chat`` (headers + JSON body):

* **cold**: the first Check of a fresh key (Postgres row + argon2id verify + shared cache
  write + admission), one key per call;
* **warm**: the same key again (in-process cache, one Redis round trip for deny mode, budget
  reservation and concurrency slot), at concurrency 1 and N; each reservation is settled and
  its slot released after the call (outside the timing), as accounting would;
* **listing**: a warm ``GET /api/tags`` answered from the discovery cache;
* **gRPC floor**: a health check on the same server, i.e. what any Python gRPC call costs here.

Prints a table and how many argon2 verifications the warm runs performed (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import httpx
import psutil
import redis.asyncio as aioredis
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.admin import keystore, tenantstore
from bench.run import percentile
from devstack.stack import Stack, StackConfig
from gateway import apikeys, budgets, slots

CHAT = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "benchmark me please"}],
    "stream": False,
    "options": {"num_predict": 4},
}


@dataclass
class Row:
    scenario: str
    concurrency: int
    calls: int
    errors: int
    per_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class Key:
    tenant_id: str
    key_id: str
    full: str


def check_request(key: str, method: str, path: str, body: bytes, request_id: str) -> Any:
    headers = [
        (":authority", "gateway"),
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        ("authorization", f"Bearer {key}"),
        ("content-type", "application/json"),
        ("x-request-id", request_id),
    ]
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id="1",
        method=method,
        path=path,
        host="gateway",
        scheme="http",
        protocol="HTTP/1.1",
        raw_body=body,
        size=len(body),
        header_map=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
        ),
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )


async def make_keys(stack: Stack, count: int) -> list[Key]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        tenant_id = await tenantstore.create_tenant(
            conn, f"bench-{uuid.uuid4().hex[:8]}", allow_all=True, budget_daily=10**15
        )
        ph = apikeys.hasher()  # production argon2id parameters
        created = [await keystore.create_key(conn, ph, tenant_id) for _ in range(count)]
    finally:
        await conn.close()
    return [Key(tenant_id, c.key_id, c.full_key) for c in created]


def argon2_count(stack: Stack) -> float:
    text = httpx.get(stack.metrics_url("authz"), timeout=5).text
    found = re.search(r"^authz_argon2_verifications_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def run(stack: Stack, requests: int, cold: int, concurrency: int) -> tuple[list[Row], float]:
    keys = await make_keys(stack, cold + 1)
    warm_key = keys[-1]
    redis = aioredis.Redis.from_url(stack.redis_url, decode_responses=True)
    body = json.dumps(CHAT).encode()
    rows: list[Row] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['authz']}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)

        async def one(key: Key, method: str, path: str, payload: bytes) -> tuple[float, bool]:
            request_id = str(uuid.uuid4())
            start = time.perf_counter()
            answer = await stub.Check(check_request(key.full, method, path, payload, request_id))
            elapsed = time.perf_counter() - start
            await budgets.settle(redis, key.tenant_id, request_id, 0)
            await slots.release(redis, key.tenant_id, key.key_id, request_id)
            ok = answer.HasField("ok_response") or answer.denied_response.status.code == 200
            return elapsed, ok

        async def scenario(
            name: str, conc: int, calls: int, method: str, path: str, payload: bytes
        ) -> None:
            latencies: list[float] = []
            errors = 0
            remaining = calls

            async def worker() -> None:
                nonlocal remaining, errors
                while remaining > 0:
                    remaining -= 1
                    elapsed, ok = await one(warm_key, method, path, payload)
                    latencies.append(elapsed)
                    errors += not ok

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conc)))
            wall = time.perf_counter() - start
            rows.append(
                Row(
                    name,
                    conc,
                    len(latencies),
                    errors,
                    len(latencies) / wall,
                    percentile(latencies, 0.5) * 1000,
                    percentile(latencies, 0.99) * 1000,
                )
            )

        # Cold: one fresh key per call, sequentially.
        cold_lat: list[float] = []
        cold_errors = 0
        for key in keys[:cold]:
            elapsed, ok = await one(key, "POST", "/api/chat", body)
            cold_lat.append(elapsed)
            cold_errors += not ok
        rows.append(
            Row(
                "cold (argon2id)",
                1,
                len(cold_lat),
                cold_errors,
                len(cold_lat) / sum(cold_lat),
                percentile(cold_lat, 0.5) * 1000,
                percentile(cold_lat, 0.99) * 1000,
            )
        )
        # The floor: a gRPC health check on the same server (no policy at all).
        health = health_pb2_grpc.HealthStub(channel)
        floor: list[float] = []
        for _ in range(requests):
            start = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest())
            floor.append(time.perf_counter() - start)
        rows.append(
            Row(
                "gRPC floor (health)",
                1,
                len(floor),
                0,
                len(floor) / sum(floor),
                percentile(floor, 0.5) * 1000,
                percentile(floor, 0.99) * 1000,
            )
        )
        await one(warm_key, "POST", "/api/chat", body)  # the warm key's own cold call
        before = argon2_count(stack)
        await scenario("warm chat", 1, requests, "POST", "/api/chat", body)
        await scenario("warm chat", concurrency, requests * 2, "POST", "/api/chat", body)
        await scenario("warm /api/tags", 1, requests, "GET", "/api/tags", b"")
        warm_verifies = argon2_count(stack) - before
    await redis.aclose()
    return rows, warm_verifies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--cold", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    stack = Stack(StackConfig(log_level="warning")).start()
    try:
        rows, warm_verifies = asyncio.run(run(stack, args.requests, args.cold, args.concurrency))
    finally:
        stack.stop()
    print(
        f"\nmachine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}\n"
    )
    header = ("scenario", "conc", "calls", "err", "calls/s", "p50 ms", "p99 ms")
    print("{:<20} {:>4} {:>6} {:>4} {:>8} {:>7} {:>7}".format(*header))
    for r in rows:
        print(
            f"{r.scenario:<20} {r.concurrency:>4} {r.calls:>6} {r.errors:>4} {r.per_s:>8.0f} "
            f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f}"
        )
    print(f"\nargon2id verifications during the warm runs: {warm_verifies:.0f} (must be 0)")


if __name__ == "__main__":
    main()
