"""Envoy's endpoints of the ``ollama`` cluster, from discovery: EDS (state of the world) over gRPC.

Every backend is an endpoint per address, at the priority level of its configured priority
(distinct priorities, lowest first, become levels 0, 1, …), with metadata:

* ``envoy.lb`` ``{"model": [<canonical names it hosts>]}``: the subset load balancer
  (``list_as_any``) puts the endpoint in one subset per model; the request's ``envoy.lb``
  ``model`` (from authz's ``x-nz-model`` header, docs/ARCHITECTURE.md) picks the subset. A
  backend whose list expired has no ``model`` key: it is in no model's subset;
* ``nz.backend`` ``{"name": …, <credential header>: <value>…}``: the audit log's backend name,
  and the headers Envoy adds upstream (the cluster's ``header_mutation``);
* ``envoy.transport_socket_match`` ``{"tls": true}`` for an ``https://`` backend.

A stream gets the current assignment on its first request and again whenever discovery's
generation moves; an ACK of what was sent gets nothing more. Versions are digests of the
assignment, so every authz worker publishes the same version for the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from google.protobuf import any_pb2

from authz.discovery import Discovery
from gateway import logs
from gateway.backends import Backend

SERVICE_NAME = "envoy.service.endpoint.v3.EndpointDiscoveryService"
CLUSTER = "ollama"  # envoy/envoy.yaml's cluster of the backends
TYPE_URL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_log = logs.get("authz.eds")


def assignment(
    backends: tuple[Backend, ...],
    models: dict[str, frozenset[str]],
    addresses: dict[str, tuple[str, ...]],
) -> Any:
    """The ``ollama`` ClusterLoadAssignment: ``models`` by backend URL (live lists only),
    ``addresses`` by backend name (a backend not resolved yet has no endpoint)."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=CLUSTER)
    levels = {p: level for level, p in enumerate(sorted({b.priority for b in backends}))}
    localities: dict[int, Any] = {}
    for backend in backends:
        ips = addresses.get(backend.name, ())
        if not ips:
            continue
        level = levels[backend.priority]
        if level not in localities:
            localities[level] = cla.endpoints.add(priority=level)
        hosted = sorted(models.get(backend.url, frozenset()))
        for ip in ips:
            lb = localities[level].lb_endpoints.add()
            lb.endpoint.hostname = backend.host  # the Host header (auto_host_rewrite) and SNI
            socket = lb.endpoint.address.socket_address
            socket.address, socket.port_value = ip, backend.port
            metadata = lb.metadata.filter_metadata
            if hosted:
                metadata["envoy.lb"].update({"model": hosted})
            metadata["nz.backend"].update({"name": backend.name, **backend.upstream_headers()})
            if backend.tls:
                metadata["envoy.transport_socket_match"].update({"tls": True})
    # Envoy wants levels 0..n without gaps: a level whose backends are all unresolved is empty.
    for level in range(max(localities, default=-1) + 1):
        if level not in localities:
            localities[level] = cla.endpoints.add(priority=level)
    return cla


def response(cla: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(cla, type_url_prefix="type.googleapis.com/")
    body = cla.SerializeToString(deterministic=True)
    version = hashlib.sha256(body).hexdigest()[:16]
    return discovery_pb2.DiscoveryResponse(
        version_info=version, resources=[packed], type_url=TYPE_URL, nonce=version
    )


class EndpointDiscovery(eds_pb2_grpc.EndpointDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, discovery: Discovery) -> None:
        self._discovery = discovery

    def current(self) -> Any:
        d = self._discovery
        return response(assignment(d.backends, d.snapshot(), d.addresses))

    async def StreamEndpoints(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await inbox.put(request)
            finally:
                await inbox.put(None)

        reader = asyncio.create_task(read())
        sent = ""  # the version this stream last sent
        subscribed = False  # Envoy asked for the ollama cluster's endpoints
        seen = self._discovery.generation
        try:
            while True:
                next_request = asyncio.ensure_future(inbox.get())
                change = asyncio.ensure_future(self._discovery.changed_since(seen))
                done, _ = await asyncio.wait(
                    {next_request, change}, return_when=asyncio.FIRST_COMPLETED
                )
                for pending in (next_request, change):
                    if pending not in done:
                        pending.cancel()
                if change in done:
                    seen = change.result()
                if next_request in done:
                    request = next_request.result()
                    if request is None:
                        return
                    if request.type_url and request.type_url != TYPE_URL:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "EDS only")
                    if request.HasField("error_detail"):
                        # Envoy refused an assignment (NACK): say so, keep serving the current
                        _log.warning("envoy rejected endpoints", error=request.error_detail.message)
                    subscribed = CLUSTER in request.resource_names
                if not subscribed:
                    continue
                reply = self.current()
                if reply.version_info == sent:
                    continue  # an ACK, or a change that changed nothing Envoy sees
                sent = reply.version_info
                yield reply
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def register(discovery: Discovery) -> Any:
    def add(server: grpc.aio.Server) -> None:
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(
            EndpointDiscovery(discovery), server
        )

    return add
