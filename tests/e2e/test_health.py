"""Health that tells the truth (issue 15 §4), on a stack of this module's own (its own Redis and
PostgreSQL: the tests stop them). Readiness — the gRPC health of each service's names and "",
and ``/readyz`` — goes NOT_SERVING within seconds when a store the service cannot decide
without stops (authz: Redis and PostgreSQL; the RLS: Redis; accounting: Redis — it buffers
through a PostgreSQL outage), and SERVING again once it is back; ``/livez`` stays 200. SIGHUP
stops no service; the RLS reloads its YAML on it, and a bad new file keeps the old rules."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import Stack, StackConfig
from ratelimit.config import DEFAULT_PATH
from tests import probes
from tests.polling import poll

SERVICES = {  # service → its gRPC service names (and "")
    "authz": ["envoy.service.auth.v3.Authorization", ""],
    "ratelimit": ["envoy.service.ratelimit.v3.RateLimitService", ""],
    "accounting": ["envoy.service.ext_proc.v3.ExternalProcessor", ""],
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FLIP_S = 4.0  # probes every 1 s with 0.5 s timeouts: flipped within ~2 s, slack for a busy box
PROBE_RULE = """
      - key: probe
        rate_limit: {unit: MINUTE, requests_per_unit: 1}
"""


@pytest.fixture(scope="module")
def limits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("health") / "limits.yaml"
    path.write_text(DEFAULT_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def own(limits_file: Path) -> Iterator[Stack]:
    """A stack sharing nothing with the session's: its Redis and PostgreSQL are its own."""
    config = StackConfig(
        extra_env={
            "NZ_RATELIMIT_CONFIG": str(limits_file),
            "NZ_RATELIMIT_CONFIG_POLL_S": "0",  # SIGHUP only: the test decides when
        }
    )
    running = Stack(config).start()
    try:
        yield running
    finally:
        running.stop()


def grpc_health(stack: Stack, service: str) -> list[int]:
    """Each of the service's names' gRPC health, as a client asks it (-1: no answer)."""
    found = []
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports[service]}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in SERVICES[service]:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                found.append(int(answer.status))
            except grpc.RpcError:
                found.append(-1)
    return found


def http_get(stack: Stack, service: str, path: str) -> tuple[int, str]:
    return probes.http_get("127.0.0.1", stack.ports[f"{service}_metrics"], path)


def ready(stack: Stack, service: str) -> bool:
    health = grpc_health(stack, service)
    readyz = http_get(stack, service, "/readyz")
    return health == [SERVING] * len(health) and readyz == (200, "ready\n")


def not_ready(stack: Stack, service: str) -> bool:
    health = grpc_health(stack, service)
    readyz = http_get(stack, service, "/readyz")
    return health == [NOT_SERVING] * len(health) and readyz == (503, "not ready\n")


def all_ready(stack: Stack) -> None:
    for service in SERVICES:
        poll(partial(ready, stack, service), timeout_s=15, what=f"{service} ready")


def probe_limited(stack: Stack) -> list[int]:
    """Two ShouldRateLimit calls for a descriptor only the reloaded rule limits: their codes."""
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="probe", value=str(time.time_ns()))]
    )
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['ratelimit']}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        request = rls_pb2.RateLimitRequest(domain="gateway", descriptors=[descriptor])
        return [int(stub.ShouldRateLimit(request, timeout=5).overall_code) for _ in range(2)]


class Hammer:
    """ShouldRateLimit calls one after another in a thread until stopped: how many were
    answered, and the errors (a reload must drop none)."""

    def __init__(self, stack: Stack) -> None:
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._stack = stack
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        descriptor = ratelimit_pb2.RateLimitDescriptor(
            entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="hammer", value="x")]
        )
        request = rls_pb2.RateLimitRequest(domain="gateway", descriptors=[descriptor])
        with grpc.insecure_channel(f"127.0.0.1:{self._stack.ports['ratelimit']}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            while not self._stop.is_set():
                try:
                    stub.ShouldRateLimit(request, timeout=5)
                    self.answered += 1
                except grpc.RpcError as exc:
                    self.errors.append(str(exc.code()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def pid(stack: Stack, service: str) -> int:
    popen = stack.procs[service].popen
    assert popen is not None and popen.poll() is None
    return popen.pid


def test_all_ready_with_their_stores_up(own: Stack) -> None:
    all_ready(own)
    for service in SERVICES:
        assert http_get(own, service, "/livez") == (200, "ok\n")


def test_sighup_stops_no_service(own: Stack) -> None:
    all_ready(own)
    for service in SERVICES:
        os.kill(pid(own, service), signal.SIGHUP)
    time.sleep(1.0)
    for service in SERVICES:
        assert own.procs[service].running, f"{service} died of SIGHUP"
        assert ready(own, service)


def test_sighup_reloads_the_ratelimit_yaml(own: Stack, limits_file: Path) -> None:
    ok, over = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
    assert probe_limited(own) == [ok, ok]  # no rule for it yet
    hammer = Hammer(own)  # decisions all along the reloads
    shipped = limits_file.read_text(encoding="utf-8")
    anchor = "    descriptors:\n"
    limits_file.write_text(shipped.replace(anchor, anchor + PROBE_RULE.lstrip("\n"), 1))
    os.kill(pid(own, "ratelimit"), signal.SIGHUP)
    poll(lambda: probe_limited(own) == [ok, over], timeout_s=5, what="the new rule in force")
    # A bad new file: the rule stays in force, and the RLS says why.
    limits_file.write_text("domains: [{domain: gateway, descriptors: [{key: probe}]}]\n  - x")
    os.kill(pid(own, "ratelimit"), signal.SIGHUP)
    log = own.procs["ratelimit"].log_path
    poll(lambda: "the old rules stay" in log.read_text(errors="replace"), timeout_s=5)
    assert probe_limited(own) == [ok, over]
    assert own.procs["ratelimit"].running
    limits_file.write_text(shipped)
    os.kill(pid(own, "ratelimit"), signal.SIGHUP)
    poll(lambda: probe_limited(own) == [ok, ok], timeout_s=5, what="the shipped rules back")
    hammer.stop()
    assert hammer.errors == []
    assert hammer.answered > 10


def test_redis_down_flips_every_service_and_back(own: Stack) -> None:
    all_ready(own)
    redis = own.procs["redis"]
    redis.stop()
    try:
        for service in SERVICES:
            poll(partial(not_ready, own, service), timeout_s=FLIP_S, what=f"{service} down")
            assert http_get(own, service, "/livez") == (200, "ok\n")  # the process is fine
    finally:
        redis.start()
    for service in SERVICES:
        poll(partial(ready, own, service), timeout_s=FLIP_S, what=f"{service} back")


def test_postgres_down_flips_authz_and_back(own: Stack) -> None:
    all_ready(own)
    postgres = own.procs["postgres"]
    postgres.stop()
    try:
        poll(lambda: not_ready(own, "authz"), timeout_s=FLIP_S, what="authz down")
        assert http_get(own, "authz", "/livez") == (200, "ok\n")
        # The RLS never needs PostgreSQL; accounting buffers its rows through the outage.
        assert ready(own, "ratelimit")
        assert ready(own, "accounting")
    finally:
        postgres.start(60)
    poll(lambda: ready(own, "authz"), timeout_s=FLIP_S * 2, what="authz back")
