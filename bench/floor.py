"""The design's floor: the shipped Envoy config with do-nothing Python gRPC services.

    .venv/bin/python -m bench.floor [--seconds 5] [--concurrency 64] [--variants]

What the three-Python-services design costs before any policy runs. In one run, against the
same mock Ollama:

* **raw envoy**: router only (bench/run.py's baseline);
* **floor**: the shipped config, every filter and both access logs, but its ext_authz, RLS,
  ext_proc and access-log calls answered by trivial grpc-aio servers (uvloop, one process
  each, as the real services run): ``Check`` returns a canned OK (the real authz's answer for
  the same request, captured once: the same metadata, so Envoy runs the same descriptors and
  matchers), ``ShouldRateLimit`` returns OK for every descriptor, ext_proc reads the messages
  and answers none (observability mode), the access-log stream is drained;
* **gateway**: the real services.

``--variants`` adds floors with fewer hops (``VARIANTS``): without the RLS, without accounting,
authz's alone, and "one hop" (authz only; Envoy's Lua copies the response's last 4 KiB, its
final frame, into dynamic metadata, which the gRPC access log carries: what the trivial
access-log server receives is printed, the proof that the frame arrives).

If the floor misses a target, no work inside the services can meet it: only fewer Python hops
per request (a design change) can. Results: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import platform
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import uvloop
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2

from bench.authz_check import check_request
from bench.run import (
    ACCOUNTING,
    BENCH_TENANT,
    CHAT,
    RATELIMIT,
    Row,
    load,
    print_latency,
    raw_envoy_config,
    start_envoy,
)
from devstack import envoyconf
from devstack.client import StackClient
from devstack.processes import Proc, free_port
from devstack.stack import Stack, StackConfig

AUTHZ_FILTER = "envoy.filters.http.ext_authz"
FLOOR_AUTHZ = "floor_authz"  # the authz cluster stays: Envoy's EDS comes from the real authz


# -- the trivial services ---------------------------------------------------------------


class _Authz(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, answer: bytes) -> None:
        self._answer = external_auth_pb2.CheckResponse.FromString(answer)

    async def Check(self, request: Any, context: Any) -> Any:
        return self._answer


class _RateLimit(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        ok = rls_pb2.RateLimitResponse.DescriptorStatus(
            code=rls_pb2.RateLimitResponse.OK,
            current_limit=rls_pb2.RateLimitResponse.RateLimit(
                requests_per_unit=1_000_000, unit=rls_pb2.RateLimitResponse.RateLimit.MINUTE
            ),
            limit_remaining=999_999,
            duration_until_reset=duration_pb2.Duration(seconds=60),
        )
        return rls_pb2.RateLimitResponse(
            overall_code=rls_pb2.RateLimitResponse.OK,
            statuses=[ok for _ in request.descriptors],
        )


class _ExtProc(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for message in requests:
            # Observability mode wants no answer, and the stream closed by us once the response
            # ended (Envoy would hold it for deferred_close_timeout); the rewrite and strip
            # filters (not taken by the benchmark's request) would want "continue".
            observing = message.observability_mode
            if message.HasField("request_body") and not observing:
                yield ep.ProcessingResponse(request_body=ep.BodyResponse())
            elif message.HasField("response_body"):
                if not observing:
                    yield ep.ProcessingResponse(response_body=ep.BodyResponse())
                elif message.response_body.end_of_stream:
                    return


class _AccessLog(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(self, tails: Path) -> None:
        self._tails = tails

    async def StreamAccessLogs(self, requests: AsyncIterator[Any], context: Any) -> Any:
        async for message in requests:
            if self._tails.exists():
                continue
            for entry in message.http_logs.log_entry:
                found = entry.common_properties.metadata.filter_metadata.get("nz.tail")
                if found is not None:
                    # The proof that the final frame arrived (bench output, once).
                    self._tails.write_text(found.fields["tail"].string_value)
        return als_pb2.StreamAccessLogsResponse()


async def _serve(kind: str, port: int, answer: bytes, tails: Path) -> None:
    server = grpc.aio.server()
    if kind == "authz":
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Authz(answer), server)
    elif kind == "ratelimit":
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(_RateLimit(), server)
    else:
        ep_grpc.add_ExternalProcessorServicer_to_server(_ExtProc(), server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(_AccessLog(tails), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- wiring ----------------------------------------------------------------------------


def _canned_check(stack: Stack, key: str) -> bytes:
    """The real authz's answer to the benchmark's request, as bytes."""
    body = json.dumps(CHAT).encode()
    request = check_request(key, "POST", "/api/chat", body, str(uuid.uuid4()))
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['authz']}") as channel:
        answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
    if not answer.HasField("ok_response"):
        raise SystemExit(f"authz refused the benchmark's request: {answer}")
    data: bytes = answer.SerializeToString()
    return data


def _tail_filter() -> dict[str, Any]:
    return {
        "name": "nz.tail",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": TAIL_LUA},
        },
    }


def _point(cluster: dict[str, Any], port: int) -> None:
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}


def floor_config(stack: Stack, ports: dict[str, int], listener: int, admin: int) -> dict[str, Any]:
    """The stack's Envoy config with ext_authz, the RLS and accounting on the floor servers."""
    config = stack.envoy_config(listener, admin)
    clusters = config["static_resources"]["clusters"]
    by_name = {c["name"]: c for c in clusters}
    for name in ("ratelimit", "accounting"):
        _point(by_name[name], ports[name])
    floor_authz = copy.deepcopy(by_name["authz"])
    floor_authz["name"] = floor_authz["load_assignment"]["cluster_name"] = FLOOR_AUTHZ
    _point(floor_authz, ports["authz"])
    clusters.append(floor_authz)
    for hcm in envoyconf.http_connection_managers(config):
        for flt in hcm["http_filters"]:
            if flt["name"] == AUTHZ_FILTER:
                flt["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = FLOOR_AUTHZ
    return config


def _start_floor(stack: Stack, answer: bytes) -> tuple[list[Proc], dict[str, int]]:
    answer_file = stack.work_dir / "floor-check.bin"
    answer_file.write_bytes(answer)
    ports = {name: free_port() for name in ("authz", "ratelimit", "accounting")}
    procs = []
    for name, port in ports.items():
        argv = [sys.executable, "-m", "bench.floor", "serve", name, str(port), str(answer_file)]
        proc = Proc(f"floor-{name}", argv, stack.work_dir / "logs", port=port)
        proc.start()
        procs.append(proc)
    return procs, ports


def _cpu_of(procs: list[Proc]) -> float:
    total = 0.0
    for proc in procs:
        if proc.popen is not None:
            times = psutil.Process(proc.popen.pid).cpu_times()
            total += times.user + times.system
    return total


async def _rows(name: str, url: str, key: str, seconds: float, concurrency: int) -> list[Row]:
    headers = {"Authorization": f"Bearer {key}"}
    await load(f"{url}/api/chat", headers, CHAT, 4, 1.0)
    rows = []
    for scenario, conc in (("chat c=1", 1), (f"chat c={concurrency}", concurrency)):
        lat, errors = await load(f"{url}/api/chat", headers, CHAT, conc, seconds)
        rows.append(Row.measured(name, scenario, conc, lat, errors, seconds))
    return rows


# Floors with fewer hops: what one design change or another could at best give.
# (filters dropped, access logs kept, the response tail copied by Lua into the access log)
VARIANTS: dict[str, tuple[list[str], bool, bool]] = {
    "floor": ([], True, False),
    "floor -rls": ([RATELIMIT], True, False),
    "floor -acct": ([*ACCOUNTING], False, False),
    "floor authz": ([RATELIMIT, *ACCOUNTING], False, False),
    "floor 1 hop": ([RATELIMIT, *ACCOUNTING], True, True),
}

# "floor 1 hop": no ext_proc stream per request; Envoy's Lua keeps the response's last 4 KiB
# (its final frame) in dynamic metadata, which the gRPC access log carries to accounting.
TAIL_LUA = """
function envoy_on_response(handle)
  local tail = ""
  for chunk in handle:bodyChunks() do
    local n = chunk:length()
    local take = math.min(n, 4096)
    tail = string.sub(tail .. chunk:getBytes(n - take, take), -4096)
  end
  handle:streamInfo():dynamicMetadata():set("nz.tail", "tail", tail)
end
"""


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        answer_file = Path(sys.argv[4])
        tails = answer_file.with_name("floor-tail.txt")
        uvloop.run(_serve(sys.argv[2], int(sys.argv[3]), answer_file.read_bytes(), tails))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also the floor without the RLS hop, without accounting's, and authz's alone",
    )
    args = parser.parse_args()
    variants = list(VARIANTS) if args.variants else ["floor"]

    stack = Stack(StackConfig(log_level="warning")).start()
    floor: list[Proc] = []
    rows: list[Row] = []
    cpu_ms: dict[str, float] = {}
    try:
        gw = StackClient(stack)
        key = gw.new_key(tenant=BENCH_TENANT)
        raw, raw_url = start_envoy(
            stack, "raw envoy", lambda port, admin: raw_envoy_config(stack, port, admin)
        )
        try:
            rows += asyncio.run(_rows("raw envoy", raw_url, key, args.seconds, args.concurrency))
        finally:
            raw.stop()
        floor, ports = _start_floor(stack, _canned_check(stack, key))
        for name in variants:
            drop, access_log, tail = VARIANTS[name]
            envoy, url = start_envoy(stack, name, _variant(stack, ports, drop, access_log, tail))
            try:
                before = _cpu_of(floor)
                measured = asyncio.run(_rows(name, url, key, args.seconds, args.concurrency))
                served = sum(r.requests for r in measured)
                cpu_ms[name] = (_cpu_of(floor) - before) / max(served, 1) * 1000
                rows += measured
            finally:
                envoy.stop()
        rows += asyncio.run(
            _rows(
                "gateway",
                stack.listener,
                gw.new_key(tenant=BENCH_TENANT),
                args.seconds,
                args.concurrency,
            )
        )
        tail_file = stack.work_dir / "floor-tail.txt"
        tail_seen = tail_file.read_text() if tail_file.exists() else None
    finally:
        for proc in floor:
            proc.stop()
        stack.stop()

    print(
        f"\nmachine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}\n"
    )
    print_latency(rows, 2, False)
    raw_c1, raw_cn = rows[0], rows[1]
    print("\nfloors over raw Envoy (trivial Python services, the shipped Envoy config):")
    for name in variants:
        c1, cn = (r for r in rows if r.target == name)
        print(
            f"  {name:<12} c=1 p50 +{c1.p50_ms - raw_c1.p50_ms:.2f} ms, "
            f"c={cn.concurrency} {cn.rps:.0f} req/s (x{cn.rps / raw_cn.rps:.2f}), "
            f"trivial services' CPU {cpu_ms[name]:.3f} ms/request"
        )
    if tail_seen is not None:
        print(f"\nthe final frame in the access log (floor 1 hop): {tail_seen[-200:]!r}")


def _variant(
    stack: Stack, ports: dict[str, int], drop: list[str], access_log: bool, tail: bool
) -> Callable[[int, int], dict[str, Any]]:
    def config(listener: int, admin: int) -> dict[str, Any]:
        full = floor_config(stack, ports, listener, admin)
        trimmed = envoyconf.without_filters(full, drop, access_log=access_log)
        if tail:
            for hcm in envoyconf.http_connection_managers(trimmed):
                hcm["http_filters"].insert(-1, _tail_filter())
        return trimmed

    return config


if __name__ == "__main__":
    main()
