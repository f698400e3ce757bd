"""A service's metrics port answers the kubelet (gateway/metrics.py): ``/livez`` 200 while the
process serves, ``/readyz`` 200 only while its gRPC health is SERVING (503 before the server
listens and from the moment it shuts down, gateway/grpcserver.py), ``/metrics`` as before, on
the address ``NZ_METRICS_ADDR`` names."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from devstack.processes import free_port
from gateway import grpcserver, metrics
from gateway.settings import load_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str, str]:
    """Status, Content-Type and body of ``GET path``, as the kubelet's httpGet asks it."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode()
    finally:
        conn.close()


class Flag:
    def __init__(self) -> None:
        self.on = False

    def __call__(self) -> bool:
        return self.on


@pytest.fixture
def flag() -> Flag:
    return Flag()


@pytest.fixture
def served(flag: Flag) -> Iterator[metrics.Probes]:
    registry = CollectorRegistry()
    Counter("nz_probe_test", "a counter of this test", registry=registry).inc(3)
    probes = metrics.serve(free_port(), "127.0.0.1", flag, registry=registry)
    try:
        yield probes
    finally:
        probes.close()


def test_livez_answers_while_the_process_serves(served: metrics.Probes) -> None:
    assert get(served.port, "/livez") == (200, "text/plain; charset=utf-8", "ok\n")


def test_readyz_follows_readiness(served: metrics.Probes, flag: Flag) -> None:
    assert get(served.port, "/readyz") == (503, "text/plain; charset=utf-8", "not ready\n")
    flag.on = True
    assert get(served.port, "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
    flag.on = False
    assert get(served.port, "/readyz") == (503, "text/plain; charset=utf-8", "not ready\n")


def test_a_readiness_check_that_raises_is_not_ready(flag: Flag) -> None:
    def broken() -> bool:
        raise RuntimeError("no answer")

    probes = metrics.serve(free_port(), "127.0.0.1", broken)
    try:
        assert get(probes.port, "/readyz") == (503, "text/plain; charset=utf-8", "not ready\n")
    finally:
        probes.close()


def test_metrics_still_served(served: metrics.Probes) -> None:
    status, content_type, body = get(served.port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "nz_probe_test_total 3.0" in body.splitlines()


def test_other_paths_are_not_found(served: metrics.Probes) -> None:
    assert get(served.port, "/healthz") == (404, "text/plain; charset=utf-8", "not found\n")
    assert get(served.port, "/readyz/x") == (404, "text/plain; charset=utf-8", "not found\n")


def test_the_bind_address_is_honoured(flag: Flag) -> None:
    # 127.0.0.2 is loopback too, but another address: a server bound there is not on .1.
    port = free_port()
    probes = metrics.serve(port, "127.0.0.2", flag)
    try:
        assert get(port, "/livez", host="127.0.0.2")[0] == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        probes.close()


def test_port_zero_serves_nothing(flag: Flag) -> None:
    assert metrics.serve(0, "127.0.0.1", flag).port == 0


def test_the_address_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NZ_METRICS_ADDR", raising=False)
    assert load_settings().metrics_addr == "127.0.0.1"
    monkeypatch.setenv("NZ_METRICS_ADDR", "0.0.0.0")
    assert load_settings().metrics_addr == "0.0.0.0"


# -- the gRPC server's health is what /readyz says ------------------------------------------


@pytest.fixture
async def grpc_service() -> AsyncIterator[tuple[grpc.aio.Server, int, int]]:
    """A gRPC server (grpcserver.start) and its probes: the server, its port, the probes'."""
    health = grpcserver.Health()
    port = free_port()
    probes = metrics.serve(free_port(), "127.0.0.1", health.serving)
    assert await asyncio.to_thread(get, probes.port, "/readyz") == (
        503,
        "text/plain; charset=utf-8",
        "not ready\n",
    )  # not listening yet
    server = await grpcserver.start(f"127.0.0.1:{port}", [], ["nz.Test"], health=health)
    try:
        yield server, port, probes.port
    finally:
        await server.stop(grace=None)
        probes.close()


async def test_readyz_is_200_while_grpc_health_serves(
    grpc_service: tuple[grpc.aio.Server, int, int],
) -> None:
    _server, _port, probe_port = grpc_service
    assert await asyncio.to_thread(get, probe_port, "/readyz") == (
        200,
        "text/plain; charset=utf-8",
        "ready\n",
    )


async def test_shutdown_turns_grpc_health_and_readyz_not_serving_at_once(
    grpc_service: tuple[grpc.aio.Server, int, int],
) -> None:
    """SIGTERM: a watcher of the gRPC health hears NOT_SERVING, and /readyz answers 503 while
    the service is still shutting down (its on_stop work runs)."""
    server, grpc_port, probe_port = grpc_service
    loop = asyncio.get_running_loop()
    seen_during_stop: list[tuple[int, str, str]] = []

    async def on_stop() -> None:
        seen_during_stop.append(await asyncio.to_thread(get, probe_port, "/readyz"))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        serving = asyncio.create_task(grpcserver.serve_until_signalled([server], on_stop))
        try:
            await asyncio.sleep(0.05)  # the task has put the loop's SIGTERM handler in place
            os.kill(os.getpid(), signal.SIGTERM)
            assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
            watch.cancel()
            await asyncio.wait_for(serving, 10)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    assert seen_during_stop == [(503, "text/plain; charset=utf-8", "not ready\n")]
