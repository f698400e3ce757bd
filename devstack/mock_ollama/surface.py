"""What every API surface shares: the request being answered (its parsed body and delay header,
set by the server's middleware), the error a handler raises, and the streaming pump."""

from __future__ import annotations

import asyncio
import contextvars
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from devstack.mock_ollama.generation import MOCK_ERROR, Plan, Renderer, as_count
from devstack.mock_ollama.go_json import go_type_name
from devstack.mock_ollama.models import ModelInfo
from devstack.mock_ollama.state import MockOllama
from devstack.mock_ollama.wire import JSONObj, json_response


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ParsedBody:
    value: Any = None
    error: str | None = None  # Go-style JSON decode error
    empty: bool = True


BODY: contextvars.ContextVar[ParsedBody | None] = contextvars.ContextVar(
    "mock_ollama_body", default=None
)
# The ``x-mock-frame-delay-ms`` header of the request being answered.
DELAY_HEADER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mock_ollama_delay_header", default=None
)


class Surface:
    """What every API surface's handlers share: the mock's state, the request body, the model
    it names, the generation plan (with its frame delay) and the streaming pump."""

    def __init__(self, state: MockOllama) -> None:
        self.state = state

    @staticmethod
    def body(go_type: str, empty_message: str = "missing request body") -> JSONObj:
        b = BODY.get() or ParsedBody()
        if b.error is not None:
            raise ApiError(400, b.error)
        if b.empty:
            raise ApiError(400, empty_message)
        if not isinstance(b.value, dict):
            kind = go_type_name(b.value)
            raise ApiError(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
        return b.value

    def model(self, body: JSONObj) -> tuple[str, ModelInfo]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            name = body.get("name")  # the deprecated field name
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        info = self.state.resolve(name)
        if info is None:
            raise ApiError(404, f"model {json.dumps(name)} not found, try pulling it first")
        return name, info

    def whole(self, plan: Plan, body: Any, newline: bool = False) -> web.Response:
        """A whole (not streamed) answer: ``body`` as JSON, or the 500 the plan's
        ``mock_error_after`` asks for (a whole answer fails before any of it is sent)."""
        if plan.error_after is not None:
            raise ApiError(500, MOCK_ERROR)
        return json_response(body, newline=newline)

    async def pump(self, request: web.Request, plan: Plan, r: Renderer) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": r.content_type, **r.extra_headers})
        await resp.prepare(request)
        delay = plan.delay_s
        try:
            if r.head is not None:
                await resp.write(r.head())
            for i, piece in enumerate(plan.frames):
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(r.token(i, piece))
            if plan.frames and delay > 0:
                await asyncio.sleep(delay)
            await resp.write(r.error() if plan.error_after is not None else r.done())
            await resp.write_eof()
        except ConnectionResetError:
            self.state.disconnects += 1
        except asyncio.CancelledError:
            self.state.disconnects += 1
            raise
        return resp

    def plan(self, prompt_words: int, n_out: Any, opts: JSONObj) -> Plan:
        delay_ms = as_count(opts.get("mock_frame_delay_ms"))
        header = DELAY_HEADER.get()
        if delay_ms is None and header is not None and header.isdigit():
            delay_ms = int(header)
        delay = self.state.frame_delay_s if delay_ms is None else delay_ms / 1000
        return Plan.build(prompt_words, n_out, opts, delay)
