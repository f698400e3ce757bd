"""The admin server as ``authz.admin.startup`` starts it, without a stack: the interceptor
authenticates every AdminService call and maps failures to exact status codes, health and
reflection stay open, and each call is counted. PostgreSQL is a port nothing listens on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from authz.admin import startup
from devstack.processes import free_port
from gateway.settings import Settings
from protos.neuronetz.admin.v1 import admin_pb2 as pb
from protos.neuronetz.admin.v1 import admin_pb2_grpc as pb_grpc

TOKEN = "unit-test-admin-token-0123456789"
BEARER = (("authorization", f"Bearer {TOKEN}"),)


async def _serve(pool: asyncpg.Pool, token: str) -> tuple[grpc.aio.Server, str]:
    listen = f"127.0.0.1:{free_port()}"
    cfg = Settings(admin_token=token, admin_listen=listen, ollama_urls=["http://127.0.0.1:1"])
    return await startup.start(cfg, pool), listen


@pytest.fixture
async def channel(no_postgres: asyncpg.Pool) -> AsyncIterator[grpc.aio.Channel]:
    server, listen = await _serve(no_postgres, TOKEN)
    try:
        async with grpc.aio.insecure_channel(listen) as opened:
            yield opened
    finally:
        await server.stop(grace=None)


async def _code(call: grpc.aio.UnaryUnaryCall[object, object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await call
    return excinfo.value.code(), excinfo.value.details() or ""


def _count(method: str, code: str) -> float:
    labels = {"method": method, "code": code}
    return REGISTRY.get_sample_value("admin_calls_total", labels) or 0.0


async def test_a_missing_or_wrong_token_is_unauthenticated(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.AdminServiceStub(channel)
    before = _count("GetTenant", "UNAUTHENTICATED")
    for metadata in ((), (("authorization", "Bearer not-the-token"),)):
        code, message = await _code(
            stub.GetTenant(pb.GetTenantRequest(tenant="acme"), metadata=metadata, timeout=5)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert message == "missing or wrong admin token (authorization: Bearer <token>)"
        assert TOKEN not in message
    assert _count("GetTenant", "UNAUTHENTICATED") == before + 2


async def test_failures_map_to_their_status_codes(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.AdminServiceStub(channel)
    before = _count("GetTenant", "UNAVAILABLE")
    down = stub.GetTenant(pb.GetTenantRequest(tenant="acme"), metadata=BEARER, timeout=10)
    assert await _code(down) == (grpc.StatusCode.UNAVAILABLE, "the database is unavailable")
    assert _count("GetTenant", "UNAVAILABLE") == before + 1

    missing = stub.ListModels(
        pb.ListModelsRequest(backend="http://nowhere:1"), metadata=BEARER, timeout=5
    )
    assert await _code(missing) == (grpc.StatusCode.NOT_FOUND, "no backend 'http://nowhere:1'")

    bad_scope = stub.CreateKey(
        pb.CreateKeyRequest(tenant="acme", scopes=[99]),  # type: ignore[list-item]
        metadata=BEARER,
        timeout=5,
    )
    assert await _code(bad_scope) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "scopes must be SCOPE_CHAT, SCOPE_EMBEDDINGS or SCOPE_MODELS",
    )

    listed = await stub.ListModels(pb.ListModelsRequest(), metadata=BEARER, timeout=5)
    # No discovery: the backend NZ_OLLAMA_URLS names (startup's fallback) is listed, not live.
    unlisted = pb.BackendModels(name="ollama", backend="http://127.0.0.1:1", live=False)
    assert listed == pb.ListModelsResponse(backends=[unlisted])
    assert _count("ListModels", "OK") >= 1


async def test_health_and_reflection_need_no_token(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(
        health_pb2.HealthCheckRequest(service="neuronetz.admin.v1.AdminService"), timeout=5
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    services: list[str] = []
    async for reply in reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    ):
        services += [s.name for s in reply.list_services_response.service]
    assert "neuronetz.admin.v1.AdminService" in services


async def test_without_a_configured_token_every_call_is_permission_denied(
    no_postgres: asyncpg.Pool,
) -> None:
    server, listen = await _serve(no_postgres, "")
    try:
        async with grpc.aio.insecure_channel(listen) as opened:
            stub = pb_grpc.AdminServiceStub(opened)
            for metadata in ((), BEARER):
                call = stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=5)
                assert await _code(call) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "the admin API is disabled: no admin token is configured (NZ_ADMIN_TOKEN)",
                )
    finally:
        await server.stop(grace=None)
