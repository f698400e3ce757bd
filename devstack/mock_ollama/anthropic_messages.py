"""Ollama's Anthropic compatibility layer: ``/v1/messages``."""

from __future__ import annotations

import json
import secrets

from aiohttp import web

from devstack.mock_ollama.generation import (
    MOCK_ERROR,
    Renderer,
    body_options,
    message_word_count,
    word_count,
)
from devstack.mock_ollama.surface import ApiError, Surface
from devstack.mock_ollama.wire import SSE_CT, sse


class AnthropicApi(Surface):
    """``/v1/messages``: the final counts in ``message_delta.usage``; a cut stream ends on
    ``event: error``."""

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = self.body("anthropic.MessagesRequest", "EOF")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ApiError(400, "messages is required")
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise ApiError(400, f"{json.dumps(name)} does not support chat")
        system = body.get("system")
        words = message_word_count(msgs)
        if isinstance(system, str):
            words += word_count(system)
        elif isinstance(system, list):
            words += sum(word_count(b.get("text")) for b in system if isinstance(b, dict))
        opts = body_options(body)
        plan = self.plan(words, body.get("max_tokens"), opts)
        msg_id = "msg_" + secrets.token_hex(12)
        prompt_n, output_n = plan.usage()

        if body.get("stream") is not True:
            content = [{"type": "text", "text": plan.text}] if plan.pieces else None
            return self.whole(
                plan,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": name,
                    "content": content,
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": prompt_n, "output_tokens": output_n},
                },
                newline=True,
            )

        def head() -> bytes:
            return sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": name,
                        "content": [],
                        "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": 0},
                    },
                },
                event="message_start",
            )

        def token(i: int, piece: str) -> bytes:
            out = b""
            if i == 0:
                out += sse(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                    event="content_block_start",
                )
            return out + sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
                event="content_block_delta",
            )

        def done() -> bytes:
            out = b""
            if plan.pieces:
                out += sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
            out += sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"input_tokens": prompt_n, "output_tokens": output_n},
                },
                event="message_delta",
            )
            return out + sse({"type": "message_stop"}, event="message_stop")

        def error() -> bytes:
            return sse(
                {"type": "error", "error": {"type": "api_error", "message": MOCK_ERROR}},
                event="error",
            )

        return await self.pump(
            request,
            plan,
            Renderer(
                content_type=SSE_CT,
                token=token,
                done=done,
                error=error,
                head=head,
            ),
        )
