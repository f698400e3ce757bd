"""Start and stop a grpcio aio server with gRPC health and server reflection on."""

from __future__ import annotations

import asyncio
import signal
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health as health_v1
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway import logs, metrics, poolmetrics, rpcmetrics

Register = Callable[[grpc.aio.Server], None]


class Health:
    """A server's gRPC health (``grpc.health.v1``: its services and ""), and the same state
    as a flag a plain thread may read: ``/readyz`` (gateway/metrics.py) answers from it.
    SERVING once the server listens and while the stores it needs answer (gateway/readiness.py
    calls :meth:`dependencies`); NOT_SERVING for good from the moment it shuts down."""

    def __init__(self) -> None:
        self.servicer = health_v1.aio.HealthServicer()
        self._names: list[str] = [""]
        self._listening = False
        self._dependencies_ok = True  # until a readiness probe says otherwise
        self._shut_down = False

    def serving(self) -> bool:
        return self._listening and self._dependencies_ok and not self._shut_down

    async def start(self, names: Iterable[str]) -> None:
        self._names = [*names, ""]
        await self._publish()

    def listening(self) -> None:
        self._listening = True

    async def dependencies(self, ok: bool) -> None:
        """The stores the service needs answer (``ok``) or not: SERVING follows, unless the
        server is shutting down (then NOT_SERVING stays)."""
        if ok != self._dependencies_ok:
            self._dependencies_ok = ok
            await self._publish()

    async def shut_down(self) -> None:
        self._shut_down = True
        await self.servicer.enter_graceful_shutdown()

    async def _publish(self) -> None:
        if self._shut_down:
            return  # enter_graceful_shutdown set NOT_SERVING for good
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._dependencies_ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self.servicer.set(name, status)


_HEALTH: weakref.WeakKeyDictionary[grpc.aio.Server, Health] = weakref.WeakKeyDictionary()


async def start(
    listen: str,
    register: Iterable[Register],
    service_names: Iterable[str],
    *,
    reuse_port: bool = False,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    health: Health | None = None,
) -> grpc.aio.Server:
    """Bind ``listen`` (host:port), add the services, health (all SERVING) and reflection.
    ``reuse_port``: one of several workers on the port (gateway/workers.py); otherwise a port
    already taken is an error, not a silent second server. ``interceptors`` see every call,
    health and reflection included (the admin API's guards only its own service). ``health``:
    the one ``/readyz`` reads (gateway/metrics.py); by default a health of its own. Every
    handler is timed where it is registered (gateway/rpcmetrics.py: ``neuronetz_rpc_seconds``),
    and the server's start sets ``neuronetz_build_info`` (gateway/metrics.py)."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ],
    )
    timed = rpcmetrics.TimedRegistration(server).server  # every handler registered is timed
    for add in register:
        add(timed)
    names = list(service_names)
    state = health if health is not None else Health()
    health_pb2_grpc.add_HealthServicer_to_server(state.servicer, timed)
    await state.start(names)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        timed,
    )
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot bind gRPC server to {listen}")
    await server.start()
    metrics.build_info()
    poolmetrics.start()  # the pools' gauges, sampled off the request path
    state.listening()
    _HEALTH[server] = state
    return server


async def serve_until_signalled(
    servers: list[grpc.aio.Server],
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_reload: Callable[[], object] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then NOT_SERVING, stop ``servers`` and ``on_stop``.
    SIGHUP never stops the service (its default would kill it): it calls ``on_reload`` (the
    RLS reloads its YAML), or is logged and ignored."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def hangup() -> None:
        if on_reload is not None:
            on_reload()
        else:
            logs.get("grpcserver").info("SIGHUP: nothing to reload")

    loop.add_signal_handler(signal.SIGHUP, hangup)
    await stop.wait()
    # NOT_SERVING (gRPC health and /readyz) the moment the shutdown starts.
    await asyncio.gather(*(_HEALTH[s].shut_down() for s in servers if s in _HEALTH))
    await asyncio.gather(*(s.stop(grace=2) for s in servers))
    if on_stop is not None:
        await on_stop()
