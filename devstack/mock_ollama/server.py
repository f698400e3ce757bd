"""The mock's aiohttp app: routing, the middleware that records every request, reads its body as
Go would and its ``x-mock-frame-delay-ms`` header, and answers errors in each surface's shape;
``start``/``main`` serve it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import secrets
import signal
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from devstack.mock_ollama.anthropic_messages import AnthropicApi
from devstack.mock_ollama.go_json import as_go_reads, go_json_error
from devstack.mock_ollama.native import OLLAMA_VERSION, NativeApi
from devstack.mock_ollama.openai_compat import OpenAIApi
from devstack.mock_ollama.openai_responses import ResponsesApi
from devstack.mock_ollama.state import MockOllama, RecordedRequest
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
    return app


async def start(
    host: str, port: int, state: MockOllama | None = None
) -> tuple[web.AppRunner, MockOllama]:
    """Serve a mock on ``host:port`` (port 0: a free one, see :func:`bound_port`).
    Stop it with ``await runner.cleanup()``."""
    state = MockOllama() if state is None else state
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, state


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("runner is not listening on a TCP port")


async def _serve(host: str, port: int, frame_delay_s: float) -> None:
    runner, _state = await start(host, port, MockOllama(frame_delay_s=frame_delay_s))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("mock ollama %s listening on http://%s:%d", OLLAMA_VERSION, host, bound_port(runner))
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve(args.host, args.port, args.frame_delay_s))
