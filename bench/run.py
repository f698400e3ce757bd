"""Gateway overhead benchmark: raw Envoy → mock Ollama vs the full gateway, in one run.

    .venv/bin/python -m bench.run [--seconds 5] [--concurrency 64] [--json out.json]

Starts the local stack (real Envoy, PostgreSQL, Redis, our services, the mock Ollama) and a
second Envoy with the same listener but no filters (router only), both on loopback, then
drives both with the same requests from this process:

* latency at concurrency 1 (p50/p99), non-streamed chat;
* throughput at concurrency N (requests/s, p50/p99);
* time to first byte of a streamed chat, at concurrency 1;
* resident memory of our services after the load.

Reports the overhead as a ratio and in milliseconds. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from devstack import envoyconf
from devstack.processes import Proc, envoy_argv, free_port
from devstack.stack import SERVICES, Stack, StackConfig
from tests.gateway_client import Gateway

CHAT = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "benchmark me please"}],
    "stream": False,
    "options": {"num_predict": 4},
}
STREAM = {**CHAT, "stream": True}


@dataclass
class Row:
    target: str
    scenario: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def measured(
        cls, target: str, scenario: str, conc: int, lat: list[float], errors: int, seconds: float
    ) -> Row:
        return cls(
            target=target,
            scenario=scenario,
            concurrency=conc,
            requests=len(lat),
            errors=errors,
            rps=len(lat) / seconds,
            p50_ms=percentile(lat, 0.5) * 1000,
            p99_ms=percentile(lat, 0.99) * 1000,
        )


# Every check on, none binding: the limits a benchmark tenant runs under.
BENCH_TENANT: dict[str, Any] = {
    "requests_per_minute": 10_000_000,
    "tokens_per_minute": 1_000_000_000,
    "max_concurrent": 10_000,
    "budget_daily": 10**15,
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def load(
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    concurrency: int,
    seconds: float,
    first_byte: bool = False,
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    payload = json.dumps(body).encode()
    hdrs = {**headers, "content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    async with session.post(url, data=payload, headers=hdrs) as resp:
                        if first_byte:
                            await resp.content.readany()
                            latencies.append(time.perf_counter() - start)
                            await resp.read()
                        else:
                            await resp.read()
                            latencies.append(time.perf_counter() - start)
                        if resp.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def raw_envoy_config(stack: Stack, port: int, admin: int) -> dict[str, Any]:
    """The shipped config with every HTTP filter but the router removed, and no access log."""
    config = stack.envoy_config(port, admin)
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    names = [f["name"] for f in filters[0]["typed_config"]["http_filters"]]
    drop = [n for n in names if n != "envoy.filters.http.router"]
    return envoyconf.without_filters(config, drop, access_log=False)


AUTHZ, RATELIMIT, EXT_PROC = (
    "envoy.filters.http.ext_authz",
    "envoy.filters.http.ratelimit",
    "envoy.filters.http.ext_proc",
)


def baselines(
    stack: Stack, breakdown: bool
) -> list[tuple[str, Callable[[int, int], dict[str, Any]]]]:
    """Envoys to compare the gateway with: raw (router only), and with --breakdown the gateway
    with ext_authz only and with ext_authz + ratelimit (no access log in either)."""

    def minus(drop: list[str]) -> Callable[[int, int], dict[str, Any]]:
        return lambda port, admin: envoyconf.without_filters(
            stack.envoy_config(port, admin), drop, access_log=False
        )

    found = [("raw envoy", lambda port, admin: raw_envoy_config(stack, port, admin))]
    if breakdown:
        found += [("authz only", minus([RATELIMIT, EXT_PROC])), ("authz+rl", minus([EXT_PROC]))]
    return found


def start_envoy(
    stack: Stack, name: str, config: Callable[[int, int], dict[str, Any]]
) -> tuple[Proc, str]:
    """A second Envoy beside the stack's, from ``config(listener_port, admin_port)``: the
    process (stop it when done) and its base URL."""
    port, admin = free_port(), free_port()
    slug = name.replace(" ", "-")
    path = envoyconf.write(config(port, admin), stack.work_dir / f"{slug}.yaml")
    proc = Proc(f"envoy-{slug}", envoy_argv(path), stack.work_dir / "logs", port=port)
    proc.start()
    return proc, f"http://127.0.0.1:{port}"


def services_rss_mb(stack: Stack) -> float:
    total = 0
    for name in SERVICES:
        popen = stack.procs[name].popen
        if popen is None:
            continue
        proc = psutil.Process(popen.pid)
        total += proc.memory_info().rss
        total += sum(c.memory_info().rss for c in proc.children(recursive=True))
    return total / (1 << 20)


async def scenario_rows(
    name: str, url: str, key: str, seconds: float, concurrency: int
) -> list[Row]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    rows = []
    await load(f"{url}/api/chat", headers, CHAT, 4, 1.0)  # warm caches and connections
    for scenario, body, conc, first_byte in (
        ("chat c=1", CHAT, 1, False),
        (f"chat c={concurrency}", CHAT, concurrency, False),
        ("stream TTFB c=1", STREAM, 1, True),
    ):
        lat, errors = await load(f"{url}/api/chat", headers, body, conc, seconds, first_byte)
        rows.append(Row.measured(name, scenario, conc, lat, errors, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also measure Envoy with ext_authz only, and with ext_authz + ratelimit",
    )
    args = parser.parse_args()

    stack = Stack(StackConfig(log_level="warning")).start()
    try:
        gw = Gateway(stack)

        def bench_key() -> str:
            # A fresh tenant per target: the baselines without accounting never release their
            # slots or reservations, which must not count against the gateway's run.
            return gw.new_key(tenant=BENCH_TENANT)

        rows: list[Row] = []
        for name, config in baselines(stack, args.breakdown):
            other, url = start_envoy(stack, name, config)
            try:
                rows += asyncio.run(
                    scenario_rows(
                        name,
                        url,
                        bench_key(),
                        args.seconds,
                        args.concurrency,
                    )
                )
            finally:
                other.stop()
        rows += asyncio.run(
            scenario_rows("gateway", stack.listener, bench_key(), args.seconds, args.concurrency)
        )
        rss = services_rss_mb(stack)
    finally:
        stack.stop()

    print(
        f"\nmachine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}\n"
    )
    print(
        f"{'target':<10} {'scenario':<16} {'req':>7} {'err':>4} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    for r in rows:
        print(
            f"{r.target:<10} {r.scenario:<16} {r.requests:>7} {r.errors:>4} {r.rps:>8.0f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
        )
    print("\noverhead of the gateway over raw Envoy:")
    per_target = 3
    raw_rows, gateway_rows = rows[:per_target], rows[-per_target:]
    for base, gate in zip(raw_rows, gateway_rows, strict=True):
        print(
            f"  {gate.scenario:<16} p50 +{gate.p50_ms - base.p50_ms:.2f} ms "
            f"(x{gate.p50_ms / base.p50_ms:.2f}), p99 +{gate.p99_ms - base.p99_ms:.2f} ms "
            f"(x{gate.p99_ms / base.p99_ms:.2f}), throughput x{gate.rps / base.rps:.2f}"
        )
    print(f"  services RSS after load: {rss:.0f} MB ({', '.join(SERVICES)})")
    if args.breakdown:
        print("\nwhere the time goes (chat c=1, p50 added over raw Envoy):")
        for r in rows[per_target:]:
            if r.scenario == "chat c=1":
                print(f"  {r.target:<16} +{r.p50_ms - raw_rows[0].p50_ms:.2f} ms")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": [asdict(r) for r in rows], "services_rss_mb": rss}, indent=2)
        )


if __name__ == "__main__":
    main()
