"""What a Prometheus scrape shows about the RPCs a service serves (gateway/rpcmetrics.py, put
on every server by gateway/grpcserver.py): each call lands in
``neuronetz_rpc_seconds{service, method, code}`` with the code the client got, streams
included; a method nobody registered makes no series; the service's build is announced; no
``*_created`` series, in one process or several (gateway/workers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, generate_latest

from devstack.processes import free_port
from gateway import grpcserver, metrics

SERVICE = "test.Probe"


def _unary(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/{SERVICE}/{method}")


def _count(method: str, code: str, service: str = SERVICE) -> float:
    labels = {"service": service, "method": method, "code": code}
    return REGISTRY.get_sample_value("neuronetz_rpc_seconds_count", labels) or 0.0


async def _answer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


async def _refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "no")
    raise AssertionError("abort raises")


async def _crash(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    raise RuntimeError("bug")


async def _three(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    for _ in range(3):
        yield request


def _register(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Answer": grpc.unary_unary_rpc_method_handler(_answer),
                    "Refuse": grpc.unary_unary_rpc_method_handler(_refuse),
                    "Crash": grpc.unary_unary_rpc_method_handler(_crash),
                    "Three": grpc.unary_stream_rpc_method_handler(_three),
                },
            ),
        )
    )


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    listen = f"127.0.0.1:{free_port()}"
    server = await grpcserver.start(listen, [_register], [SERVICE])
    try:
        async with grpc.aio.insecure_channel(listen) as opened:
            yield opened
    finally:
        await server.stop(grace=None)


async def test_every_call_is_timed_under_the_code_the_client_got(
    channel: grpc.aio.Channel,
) -> None:
    before = {
        (m, c): _count(m, c)
        for m, c in (("Answer", "OK"), ("Refuse", "RESOURCE_EXHAUSTED"), ("Crash", "UNKNOWN"))
    }
    for _ in range(2):
        assert await _unary(channel, "Answer")(b"hi", timeout=5) == b"hi"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _unary(channel, "Refuse")(b"hi", timeout=5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as crashed:
        await _unary(channel, "Crash")(b"hi", timeout=5)
    assert crashed.value.code() == grpc.StatusCode.UNKNOWN

    assert _count("Answer", "OK") == before["Answer", "OK"] + 2
    assert _count("Refuse", "RESOURCE_EXHAUSTED") == before["Refuse", "RESOURCE_EXHAUSTED"] + 1
    assert _count("Crash", "UNKNOWN") == before["Crash", "UNKNOWN"] + 1
    labels = {"service": SERVICE, "method": "Answer", "code": "OK"}
    seconds = REGISTRY.get_sample_value("neuronetz_rpc_seconds_sum", labels)
    assert seconds is not None and 0 < seconds < 5


async def test_a_stream_is_timed_once_it_ends_and_health_is_timed_too(
    channel: grpc.aio.Channel,
) -> None:
    before = _count("Three", "OK")
    three: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
        f"/{SERVICE}/Three"
    )
    answers = [a async for a in three(b"x", timeout=5)]
    assert answers == [b"x"] * 3
    assert _count("Three", "OK") == before + 1

    health = "grpc.health.v1.Health"
    before = _count("Check", "OK", service=health)
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert _count("Check", "OK", service=health) == before + 1


async def test_a_method_nobody_registered_makes_no_series(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await _unary(channel, "MadeUp")(b"hi", timeout=5)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert b'method="MadeUp"' not in generate_latest(REGISTRY)


async def test_the_service_announces_its_build_and_no_created_series(
    channel: grpc.aio.Channel,
) -> None:
    # the server's start announced the build (under the service name the logs carry)
    builds = [
        sample
        for family in REGISTRY.collect()
        if family.name == "neuronetz_build_info"
        for sample in family.samples
    ]
    assert builds and all(b.labels["version"] == metrics.version() for b in builds)
    metrics.build_info("authz")
    assert REGISTRY.get_sample_value(
        "neuronetz_build_info", {"version": metrics.version(), "service": "authz"}
    )
    exposed = generate_latest(REGISTRY).decode()
    assert "neuronetz_rpc_seconds_bucket" in exposed
    assert "_created" not in exposed


def test_several_workers_expose_no_created_series(tmp_path: os.PathLike[str]) -> None:
    """A worker writes its series to PROMETHEUS_MULTIPROC_DIR; the parent's scrape of them
    (gateway/workers.py) carries the counts and build info, and no ``_created``."""
    script = textwrap.dedent(
        """
        import sys
        from prometheus_client import CollectorRegistry, Counter, generate_latest, multiprocess
        from gateway import metrics, rpcmetrics
        metrics.build_info("ratelimit")
        Counter("probe_events_total", "x", ["kind"]).labels("a").inc()
        rpcmetrics.RPC_SECONDS.labels("s", "m", "OK").observe(0.01)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
        sys.stdout.write(generate_latest(registry).decode())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert 'probe_events_total{kind="a"} 1.0' in out
    assert 'neuronetz_rpc_seconds_count{code="OK",method="m",service="s"} 1.0' in out
    assert 'service="ratelimit"' in out and "neuronetz_build_info" in out
    assert "_created" not in out
