"""Gateway overhead benchmark: raw Envoy → mock Ollama vs the full gateway, in one run.

    .venv/bin/python -m bench.run [--seconds 5] [--concurrency 64] [--json out.json]

Starts the local stack (real Envoy, PostgreSQL, Redis, our services, the mock Ollama) and a
second Envoy with the same listener but no filters (router only), both on loopback, then
drives both with the same requests from this process:

* latency at concurrency 1 (p50/p99), non-streamed chat;
* throughput at concurrency N (requests/s, p50/p99);
* time to first byte of a streamed chat, at concurrency 1;
* streams at scale (issue 10 §6, bench/streams.py): ``--streams`` concurrent streamed chats of
  exactly ``--frames`` NDJSON frames each, back to back for ``--seconds``: frames/s, p50/p99
  of a stream's duration, and the CPU of each process per frame / per stream (accounting per
  frame, authz and ratelimit per stream);
* resident memory of our services after the load.

Reports the overhead as a ratio and in milliseconds. Loopback only, bounded in time.
``--only latency`` or ``--only streams`` runs one part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench import streams
from bench.streams import StreamRun
from devstack import envoyconf
from devstack.client import StackClient
from devstack.processes import Proc, envoy_argv, free_port
from devstack.stack import SERVICES, Stack, StackConfig

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


@dataclass
class StreamRow:
    """The streams scenario on one target; CPU in ms over the scenario, per process."""

    target: str
    scenario: str
    streams: int  # complete streams
    errors: int  # refused, short, cut or failed streams
    frames: int
    seconds: float
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]
    envoy_us_per_frame: float
    accounting_us_per_frame: float
    authz_us_per_stream: float
    ratelimit_us_per_stream: float
    frame_delay_ms: int  # the mock's pause between frames
    # ext_proc messages Envoy sent accounting per stream (the gateway only): the frames of a
    # stream reach accounting in this many messages (headers, request body, response chunks)
    ext_proc_msgs_per_stream: float | None

    @classmethod
    def measured(
        cls, target: str, run: StreamRun, conc: int, frames: int, delay_ms: int
    ) -> StreamRow:
        requests = len(run.durations) + run.errors

        def per(name: str, count: int) -> float:
            return run.cpu_s.get(name, math.nan) * 1e6 / count if count else math.nan

        return cls(
            target=target,
            scenario=f"streams {conc}x{frames}",
            streams=len(run.durations),
            errors=run.errors,
            frames=run.frames,
            seconds=run.wall_s,
            frames_per_s=run.frames / run.wall_s,
            p50_ms=percentile(run.durations, 0.5) * 1000,
            p99_ms=percentile(run.durations, 0.99) * 1000,
            cpu_ms={name: cpu * 1000 for name, cpu in run.cpu_s.items()},
            envoy_us_per_frame=per("envoy", run.frames),
            accounting_us_per_frame=per("accounting", run.frames),
            authz_us_per_stream=per("authz", requests),
            ratelimit_us_per_stream=per("ratelimit", requests),
            frame_delay_ms=delay_ms,
            ext_proc_msgs_per_stream=(
                run.counted / requests if run.counted is not None and requests else None
            ),
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


AUTHZ, RATELIMIT = ("envoy.filters.http.ext_authz", "envoy.filters.http.ratelimit")
ACCOUNTING = list(envoyconf.ACCOUNTING_FILTERS)


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
        found += [
            ("authz only", minus([RATELIMIT, *ACCOUNTING])),
            ("authz+rl", minus(ACCOUNTING)),
        ]
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


def stream_row(
    stack: Stack, target: str, url: str, envoy: Proc, key: str, args: argparse.Namespace
) -> StreamRow:
    """The streams scenario against one target. The CPU meter reads every process of the
    stack (our services, PostgreSQL, Redis, the mock) with the target's Envoy in place of the
    stack's; on the gateway it waits for accounting to settle."""
    pids = {name: proc.popen for name, proc in stack.procs.items() if name != "envoy"}
    pids["envoy"] = envoy.popen
    meter = streams.CpuMeter({name: p.pid for name, p in pids.items() if p is not None})
    settled, counter = None, None
    if target == "gateway":
        settled = streams.accounting_settled(stack.metrics_url("accounting"))
        counter = streams.envoy_counter(stack.envoy_admin, "ext_proc.stream_msgs_sent")
    run = asyncio.run(
        streams.run(
            url,
            key,
            meter,
            args.streams,
            args.frames,
            args.seconds,
            args.frame_delay_ms,
            settled,
            counter,
        )
    )
    return StreamRow.measured(target, run, args.streams, args.frames, args.frame_delay_ms)


def stream_ratios(rows: list[StreamRow]) -> dict[str, float]:
    """The gateway's (last row) frames/s and stream durations over raw Envoy's (first row)."""
    base, gate = rows[0], rows[-1]

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    return {
        "frames/s": ratio(gate.frames_per_s, base.frames_per_s),
        "stream p50": ratio(gate.p50_ms, base.p50_ms),
        "stream p99": ratio(gate.p99_ms, base.p99_ms),
    }


def print_streams(rows: list[StreamRow]) -> None:
    first = rows[0]
    print(
        f"\nstreams at scale: {first.scenario} (concurrent x NDJSON frames each), "
        f"mock pausing {first.frame_delay_ms} ms between frames"
    )
    print(
        f"{'target':<10} {'streams':>7} {'err':>4} {'frames':>8} {'frames/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'envoy us/frame':>15}"
    )
    for r in rows:
        print(
            f"{r.target:<10} {r.streams:>7} {r.errors:>4} {r.frames:>8} {r.frames_per_s:>9.0f} "
            f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.envoy_us_per_frame:>15.1f}"
        )
    base, gate = rows[0], rows[-1]
    for metric, value in stream_ratios(rows).items():
        print(f"  {metric} gateway/raw: x{value:.2f}")
    print(
        f"  accounting CPU per frame: {gate.accounting_us_per_frame:.1f} us "
        f"({gate.cpu_ms.get('accounting', math.nan):.0f} ms over {gate.frames} frames)"
    )
    print(f"  authz CPU per stream: {gate.authz_us_per_stream:.0f} us")
    print(f"  ratelimit CPU per stream: {gate.ratelimit_us_per_stream:.0f} us")
    if gate.ext_proc_msgs_per_stream is not None:
        print(f"  ext_proc messages per stream: {gate.ext_proc_msgs_per_stream:.1f}")
    spent = ", ".join(f"{name} {ms:.0f}" for name, ms in gate.cpu_ms.items())
    print(f"  CPU ms over the gateway's run: {spent} (wall {gate.seconds * 1000:.0f} ms)")
    print(
        f"  Envoy CPU per frame: {gate.envoy_us_per_frame:.1f} us gateway, "
        f"{base.envoy_us_per_frame:.1f} us raw"
    )


def print_latency(rows: list[Row], per_target: int, breakdown: bool) -> None:
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
    raw_rows, gateway_rows = rows[:per_target], rows[-per_target:]
    for base, gate in zip(raw_rows, gateway_rows, strict=True):
        print(
            f"  {gate.scenario:<16} p50 +{gate.p50_ms - base.p50_ms:.2f} ms "
            f"(x{gate.p50_ms / base.p50_ms:.2f}), p99 +{gate.p99_ms - base.p99_ms:.2f} ms "
            f"(x{gate.p99_ms / base.p99_ms:.2f}), throughput x{gate.rps / base.rps:.2f}"
        )
    if breakdown:
        print("\nwhere the time goes (chat c=1, p50 added over raw Envoy):")
        for r in rows[per_target:]:
            if r.scenario == "chat c=1":
                print(f"  {r.target:<16} +{r.p50_ms - raw_rows[0].p50_ms:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--streams", type=int, default=streams.STREAMS, help="concurrent streams")
    parser.add_argument("--frames", type=int, default=streams.FRAMES, help="NDJSON frames each")
    parser.add_argument(
        "--frame-delay-ms", type=int, default=0, help="the mock's pause between stream frames"
    )
    parser.add_argument("--only", choices=("latency", "streams"), help="run only this part")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes per service (NZ_WORKERS)"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also measure Envoy with ext_authz only, and with ext_authz + ratelimit",
    )
    args = parser.parse_args()
    if args.frames < 2:
        parser.error("--frames must be at least 2 (one token and the done frame)")
    latency, stream = args.only != "streams", args.only != "latency"

    workers = {"NZ_WORKERS": str(args.workers)}
    stack = Stack(StackConfig(log_level="warning", extra_env=workers)).start()
    try:
        gw = StackClient(stack)

        def bench_key() -> str:
            # A fresh tenant per target and scenario: the baselines without accounting never
            # release their slots or reservations, which must not count against another run.
            return gw.new_key(tenant=BENCH_TENANT)

        rows: list[Row] = []
        stream_rows: list[StreamRow] = []

        def measure(name: str, url: str, envoy: Proc) -> None:
            if latency:
                rows.extend(
                    asyncio.run(
                        scenario_rows(name, url, bench_key(), args.seconds, args.concurrency)
                    )
                )
            if stream:
                stream_rows.append(stream_row(stack, name, url, envoy, bench_key(), args))

        for name, config in baselines(stack, args.breakdown):
            other, url = start_envoy(stack, name, config)
            try:
                measure(name, url, other)
            finally:
                other.stop()
        measure("gateway", stack.listener, stack.procs["envoy"])
        rss = services_rss_mb(stack)
    finally:
        stack.stop()

    print(
        f"\nmachine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}\n"
    )
    if rows:
        print_latency(rows, 3, args.breakdown)
    if stream_rows:
        print_streams(stream_rows)
    print(f"\nservices RSS after load: {rss:.0f} MB ({', '.join(SERVICES)})")
    if args.json:
        result = {
            "rows": [asdict(r) for r in rows],
            "streams": [asdict(r) for r in stream_rows],
            "streams_gateway_over_raw": stream_ratios(stream_rows) if stream_rows else {},
            "services_rss_mb": rss,
        }
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
