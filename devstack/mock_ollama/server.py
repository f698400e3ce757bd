"""The mock's aiohttp app: routing, the middleware that records every request, reads its body as
Go would and its ``x-mock-frame-delay-ms`` header, plays the fault ``/_mock/fault`` set, and
answers errors in each surface's shape; ``start``/``main`` serve it.

Test-only control (Envoy never routes ``/_mock`` to a backend):

* ``GET /_mock/requests``: the request log.
* ``POST /_mock/fault`` ``{"status": 500}`` / ``{"delay_s": 2.5}`` / both / ``{}``: every later
  request outside ``/_mock`` waits ``delay_s`` before its answer starts, then, with ``status``,
  gets that status and the surface's error body (``{"error":"mock fault"}`` on ``/api/*``).
  ``"paths": ["/api/chat", ...]`` limits the fault to those paths (its chat broken, its
  ``/api/tags`` still answering discovery). A faulted request is still recorded, so a test sees
  the attempt. ``{}`` heals the mock.
* ``GET /_mock/info``: ``{"name": ..., "models": [...]}``, which backend this mock plays.

A mock with a name (``--name``) sends ``x-mock-backend: <name>`` on every answer, so a test going
through the gateway sees which backend served it. With ``--tls-cert``/``--tls-key`` it serves
https, as a hosted API does."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import secrets
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from devstack.mock_ollama.anthropic_messages import AnthropicApi
from devstack.mock_ollama.go_json import as_go_reads, go_json_error
from devstack.mock_ollama.models import hosted_models
from devstack.mock_ollama.native import OLLAMA_VERSION, NativeApi
from devstack.mock_ollama.openai_compat import OpenAIApi
from devstack.mock_ollama.openai_responses import ResponsesApi
from devstack.mock_ollama.state import Fault, MockOllama, RecordedRequest
from devstack.mock_ollama.surface import BODY, DELAY_HEADER, ApiError, ParsedBody
from devstack.mock_ollama.wire import json_response

log = logging.getLogger("devstack.mock_ollama")

_OPENAI_PATHS: Final = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
)
FAULT_MESSAGE: Final = "mock fault"
BACKEND_HEADER: Final = "x-mock-backend"
_CONTROL_PREFIX: Final = "/_mock/"


def _error_response(path: str, status: int, message: str) -> web.Response:
    if path == "/v1/messages":
        etype = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            503: "overloaded_error",
        }.get(status, "api_error")
        return json_response(
            {
                "type": "error",
                "error": {"type": etype, "message": message},
                "request_id": "req_" + secrets.token_hex(12),
            },
            status,
            newline=True,
        )
    if path.startswith(_OPENAI_PATHS):
        etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return json_response(
            {"error": {"message": message, "type": etype, "param": None, "code": None}},
            status,
            newline=True,
        )
    return json_response({"error": message}, status)


def _middleware(state: MockOllama) -> Middleware:
    @web.middleware
    async def record_and_translate(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = ParsedBody()
        raw = b""
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = ParsedBody(value=as_go_reads(json.loads(raw)), empty=False)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                    body = ParsedBody(error=go_json_error(raw, exc), empty=False)
        state.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body.value,
                raw=raw.decode("utf-8", "replace"),
            )
        )
        fault = state.fault
        if not request.path.startswith(_CONTROL_PREFIX) and fault.applies(request.path):
            if fault.delay_s > 0:
                await asyncio.sleep(fault.delay_s)
            if fault.status is not None:
                return _error_response(request.path, fault.status, FAULT_MESSAGE)
        token = BODY.set(body)
        delay_token = DELAY_HEADER.set(request.headers.get("x-mock-frame-delay-ms"))
        try:
            return await handler(request)
        except ApiError as exc:
            return _error_response(request.path, exc.status, exc.message)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            # gin answers unknown routes and wrong methods alike
            return web.Response(status=404, text="404 page not found", content_type="text/plain")
        finally:
            BODY.reset(token)
            DELAY_HEADER.reset(delay_token)

    return record_and_translate


def _request_log(state: MockOllama) -> Handler:
    """``GET /_mock/requests``: the requests the mock received, oldest first."""

    async def recorded(request: web.Request) -> web.StreamResponse:
        return json_response([dataclasses.asdict(r) for r in state.requests])

    return recorded


def _fault_control(state: MockOllama) -> Handler:
    """``POST /_mock/fault``: replace the fault (not merge); answers the fault now in effect."""

    async def set_fault(request: web.Request) -> web.StreamResponse:
        body = (BODY.get() or ParsedBody()).value
        body = {} if body is None else body
        if not isinstance(body, dict) or set(body) - {"status", "delay_s", "paths"}:
            raise ApiError(
                400,
                'fault: expected {"status": 400..599, "delay_s": seconds, "paths": [...]} or {}',
            )
        paths = body.get("paths", [])
        if not isinstance(paths, list) or not all(
            isinstance(p, str) and p.startswith("/") and not p.startswith(_CONTROL_PREFIX)
            for p in paths
        ):
            raise ApiError(400, "fault: paths must be a list of model-server paths (/api/chat)")
        status = body.get("status")
        if status is not None and (
            not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599
        ):
            raise ApiError(400, "fault: status must be an integer from 400 to 599")
        delay = body.get("delay_s", 0)
        if (
            not isinstance(delay, int | float)
            or isinstance(delay, bool)
            or not math.isfinite(delay)
            or not 0 <= delay <= 600
        ):
            raise ApiError(400, "fault: delay_s must be a number of seconds from 0 to 600")
        state.fault = Fault(status=status, delay_s=float(delay), paths=tuple(paths))
        return json_response(dataclasses.asdict(state.fault))

    return set_fault


def _info(state: MockOllama) -> Handler:
    """``GET /_mock/info``: which backend this mock plays and the models it hosts now."""

    async def info(request: web.Request) -> web.StreamResponse:
        return json_response({"name": state.name, "models": list(state.models)})

    return info


def _backend_header(
    state: MockOllama,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Marks every answer (errors, streams, faults included) with the mock's name, if it has one;
    read when the answer starts, so a name set on the state later counts too."""

    async def mark(request: web.Request, response: web.StreamResponse) -> None:
        if state.name:
            response.headers[BACKEND_HEADER] = state.name

    return mark


def create_app(state: MockOllama) -> web.Application:
    """The aiohttp application serving ``state``."""
    native = NativeApi(state)
    openai = OpenAIApi(state)
    app = web.Application(middlewares=[_middleware(state)], client_max_size=64 * 1024 * 1024)
    r = app.router
    r.add_get("/", native.root)
    r.add_get("/api/version", native.version)
    r.add_get("/api/tags", native.tags)
    r.add_get("/api/ps", native.ps)
    r.add_post("/api/show", native.show)
    r.add_post("/api/pull", native.pull)
    r.add_delete("/api/delete", native.delete)
    r.add_post("/api/chat", native.chat)
    r.add_post("/api/generate", native.generate)
    r.add_post("/api/embed", native.embed)
    r.add_post("/api/embeddings", native.embeddings)
    r.add_post("/v1/chat/completions", openai.openai_chat)
    r.add_post("/v1/completions", openai.openai_completions)
    r.add_post("/v1/embeddings", openai.openai_embeddings)
    r.add_get("/v1/models", openai.openai_models)
    r.add_get("/v1/models/{model:.+}", openai.openai_model)
    r.add_post("/v1/responses", ResponsesApi(state).responses)
    r.add_post("/v1/messages", AnthropicApi(state).messages)
    # Test-only introspection; Envoy never routes /_mock to a backend.
    r.add_get("/_mock/requests", _request_log(state))
    r.add_post("/_mock/fault", _fault_control(state))
    r.add_get("/_mock/info", _info(state))
    app.on_response_prepare.append(_backend_header(state))
    return app


async def start(
    host: str,
    port: int,
    state: MockOllama | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, MockOllama]:
    """Serve a mock on ``host:port`` (port 0: a free one, see :func:`bound_port`), over TLS
    with ``ssl_context``. A host name is bound on every address it resolves to (``localhost``:
    127.0.0.1 and ::1 where both exist), the addresses authz publishes to Envoy for it.
    Stop it with ``await runner.cleanup()``."""
    state = MockOllama() if state is None else state
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, state


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    """A server context for an https mock (a hosted backend): the certificate chain at
    ``cert`` (PEM, leaf first) and its key at ``key``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("runner is not listening on a TCP port")


async def _serve(
    host: str, port: int, state: MockOllama, ssl_context: ssl.SSLContext | None = None
) -> None:
    runner, _state = await start(host, port, state, ssl_context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "mock ollama %s %r listening on %s://%s:%d",
        OLLAMA_VERSION,
        state.name,
        "http" if ssl_context is None else "https",
        host,
        bound_port(runner),
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.mock_ollama", description="A mock Ollama server for tests and dev."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--frame-delay-s", type=float, default=0.0, help="sleep between streamed frames (default 0)"
    )
    parser.add_argument(
        "--name",
        type=_backend_name,
        default="",
        help="the backend this mock plays: /_mock/info and the x-mock-backend header",
    )
    parser.add_argument(
        "--models",
        help="comma-separated models to host instead of the default set (e.g. llama3.2,qwen2.5:7b)",
    )
    parser.add_argument("--tls-cert", help="serve https: the certificate chain (PEM, leaf first)")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM); with --tls-cert")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    context = None if args.tls_cert is None else server_tls(args.tls_cert, args.tls_key)
    models = None
    if args.models is not None:
        models = hosted_models([m for m in (x.strip() for x in args.models.split(",")) if m])
    state = MockOllama(models=models, frame_delay_s=args.frame_delay_s, name=args.name)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve(args.host, args.port, state, context))


def _backend_name(value: str) -> str:
    """A name that fits in a header value."""
    if not value.isprintable():
        raise argparse.ArgumentTypeError("the name must be printable (it is sent as a header)")
    return value.strip()
