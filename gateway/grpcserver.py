"""Start and stop a grpcio aio server with gRPC health and server reflection on."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

Register = Callable[[grpc.aio.Server], None]


async def start(
    listen: str,
    register: Iterable[Register],
    service_names: Iterable[str],
    *,
    reuse_port: bool = False,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """Bind ``listen`` (host:port), add the services, health (all SERVING) and reflection.
    ``reuse_port``: one of several workers on the port (gateway/workers.py); otherwise a port
    already taken is an error, not a silent second server. ``interceptors`` see every call,
    health and reflection included (the admin API's guards only its own service)."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ],
    )
    for add in register:
        add(server)
    names = list(service_names)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for name in [*names, ""]:
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot bind gRPC server to {listen}")
    await server.start()
    return server


async def serve_until_signalled(
    servers: list[grpc.aio.Server], on_stop: Callable[[], Awaitable[None]] | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.gather(*(s.stop(grace=2) for s in servers))
    if on_stop is not None:
        await on_stop()
