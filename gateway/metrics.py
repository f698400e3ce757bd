"""A service's HTTP port (``NZ_METRICS_PORT`` on ``NZ_METRICS_ADDR``): Prometheus metrics and
the probes the kubelet calls.

* ``GET /metrics``: Prometheus (labels are tenants at most, never keys);
* ``GET /livez``: 200 ``ok`` while the process serves this port;
* ``GET /readyz``: 200 ``ready`` while the service's gRPC health is SERVING, else 503
  ``not ready`` (starting, or shutting down: gateway/grpcserver.py sets NOT_SERVING first).

The answers are plain text; probes are never logged (the kubelet calls them every few
seconds). The server runs in a daemon thread: the service's event loop never serves it, so a
busy loop still answers ``/livez``, and ``ready`` must be safe to call from another thread.

Importing this module turns prometheus_client's ``*_created`` series off: they doubled every
counter and histogram and no query of ours reads them. (With ``NZ_WORKERS`` > 1 the parent
serves the workers' files, which carry no ``_created`` series anyway: gateway/workers.py.)
``neuronetz_build_info{version, service}`` is 1 in every service (gateway/grpcserver.py sets it
when the service's server starts): which version runs where, and a series to join on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, disable_created_metrics
from prometheus_client.exposition import choose_encoder

disable_created_metrics()  # type: ignore[no-untyped-call]

BUILD_INFO = Gauge(
    "neuronetz_build_info",
    "1: this service runs this version of neuronetz-gateway",
    ["version", "service"],
    multiprocess_mode="max",
)

LIVE = b"ok\n"
READY = b"ready\n"
NOT_READY = b"not ready\n"
NOT_FOUND = b"not found\n"
_TEXT = "text/plain; charset=utf-8"

Ready = Callable[[], bool]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ready: Ready
    registry: CollectorRegistry


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "neuronetz"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._answer(200, encoder(self.server.registry), content_type)
        elif path == "/livez":
            self._answer(200, LIVE)
        elif path == "/readyz":
            ready = _safely(self.server.ready)
            self._answer(200 if ready else 503, READY if ready else NOT_READY)
        else:
            self._answer(404, NOT_FOUND)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _answer(self, status: int, body: bytes, content_type: str = _TEXT) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a probe every few seconds is not news (errors show in the probe's status)."""


def version() -> str:
    """The installed neuronetz-gateway's version ("unknown" when run from a bare tree)."""
    try:
        return metadata.version("neuronetz-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_info(service: str | None = None) -> None:
    """Set ``neuronetz_build_info{version, service}`` to 1 (idempotent). ``service``: by
    default the name the service's logs carry (gateway/logs.py ``configure``)."""
    if service is None:
        service = str(structlog.contextvars.get_contextvars().get("service", "unknown"))
    BUILD_INFO.labels(version(), service).set(1)


def _safely(ready: Ready) -> bool:
    """A readiness check that raises is not ready (and the probe still gets its 503)."""
    try:
        return bool(ready())
    except Exception:
        return False


class Probes:
    """The running endpoint (or none, with port 0)."""

    def __init__(self, server: _Server | None) -> None:
        self._server = server

    @property
    def port(self) -> int:
        """The bound port (0: not serving)."""
        return self._server.server_address[1] if self._server is not None else 0

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def serve(
    port: int,
    addr: str,
    ready: Ready,
    registry: CollectorRegistry = REGISTRY,
) -> Probes:
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` (200 while ``ready()``) on ``addr:port``
    in a daemon thread; port 0: nothing. A port that cannot be bound is an error (OSError)."""
    if not port:
        return Probes(None)
    cls = _Server6 if ":" in addr else _Server
    server = cls((addr, port), _Handler)
    server.ready = ready
    server.registry = registry
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return Probes(server)
