"""Readiness tells the truth (gateway/readiness.py): a service's gRPC health and ``/readyz``
go NOT_SERVING while a store it needs does not answer, and back once it does; shutdown's
NOT_SERVING stays whatever the stores say; SIGHUP does not stop a service."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from devstack.processes import Proc, free_port
from gateway import grpcserver
from gateway.readiness import Readiness, postgres_probe, redis_probe

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NAMES = ["nz.Test", ""]


class Served:
    def __init__(self, server: grpc.aio.Server, health: grpcserver.Health, port: int) -> None:
        self.server, self.health, self.port = server, health, port

    async def statuses(self) -> list[int]:
        """The gRPC health of each name, as a client asks it."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return [
                (await stub.Check(health_pb2.HealthCheckRequest(service=n), timeout=5)).status
                for n in NAMES
            ]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    health = grpcserver.Health()
    port = free_port()
    server = await grpcserver.start(f"127.0.0.1:{port}", [], ["nz.Test"], health=health)
    try:
        yield Served(server, health, port)
    finally:
        await server.stop(grace=None)


def up(dependency: str) -> float | None:
    return REGISTRY.get_sample_value("neuronetz_dependency_up", {"dependency": dependency})


async def test_redis_down_is_not_ready_and_back_is_ready(
    served: Served, redis_proc: Proc, redis: aioredis.Redis
) -> None:
    readiness = Readiness(served.health, {"redis": redis_probe(redis)}, timeout_s=0.5)
    assert await readiness.check()
    assert served.health.serving()
    assert await served.statuses() == [SERVING, SERVING]
    assert up("redis") == 1
    redis_proc.stop()
    try:
        assert not await readiness.check()
        assert not served.health.serving()  # /readyz: 503
        assert await served.statuses() == [NOT_SERVING, NOT_SERVING]
        assert readiness.down == ["redis"]
        assert up("redis") == 0
    finally:
        redis_proc.start()
    assert await readiness.check()
    assert served.health.serving()
    assert await served.statuses() == [SERVING, SERVING]


async def test_a_store_back_is_ready_again_within_the_recheck_not_the_interval(
    served: Served,
) -> None:
    answering = False

    async def flaky() -> None:
        if not answering:
            raise ConnectionError("refused")

    readiness = Readiness(served.health, {"flaky": flaky}, interval_s=30.0)
    running = asyncio.create_task(readiness.run())
    try:
        await asyncio.sleep(0.05)
        assert not served.health.serving()
        answering = True
        back = asyncio.get_running_loop().time()
        while not served.health.serving():
            assert asyncio.get_running_loop().time() - back < 1.0, "still not ready after 1 s"
            await asyncio.sleep(0.01)
    finally:
        running.cancel()


async def test_postgres_unreachable_is_not_ready(served: Served, no_postgres: asyncpg.Pool) -> None:
    readiness = Readiness(served.health, {"postgresql": postgres_probe(no_postgres)})
    assert not await readiness.check()
    assert await served.statuses() == [NOT_SERVING, NOT_SERVING]
    assert up("postgresql") == 0


async def test_a_probe_that_hangs_is_not_ready_after_the_timeout(served: Served) -> None:
    async def hangs() -> None:
        await asyncio.sleep(60)

    readiness = Readiness(served.health, {"slow": hangs}, timeout_s=0.1)
    assert not await asyncio.wait_for(readiness.check(), 2)
    assert not served.health.serving()


async def test_shutdown_stays_not_serving_when_the_stores_answer(served: Served) -> None:
    async def answers() -> None:
        return None

    readiness = Readiness(served.health, {"fine": answers})
    await served.health.shut_down()
    assert await readiness.check()  # the stores answer…
    assert not served.health.serving()  # …and the server still is going away
    assert await served.statuses() == [NOT_SERVING, NOT_SERVING]


async def test_sighup_reloads_and_does_not_stop(served: Served) -> None:
    reloads: list[str] = []
    serving = asyncio.create_task(
        grpcserver.serve_until_signalled([served.server], on_reload=lambda: reloads.append("x"))
    )
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(0.05)  # the handlers are in place
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.1)
        assert reloads == ["x"]
        assert not serving.done()
        assert await served.statuses() == [SERVING, SERVING]
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 10)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
