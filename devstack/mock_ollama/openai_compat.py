"""Ollama's OpenAI compatibility layer: ``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings`` and ``/v1/models``."""

from __future__ import annotations

import base64
import calendar
import json
import struct
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from devstack.mock_ollama.generation import (
    MOCK_ERROR,
    Plan,
    Renderer,
    as_count,
    body_options,
    message_word_count,
    new_id,
    word_count,
)
from devstack.mock_ollama.go_json import go_type_name
from devstack.mock_ollama.models import ModelInfo
from devstack.mock_ollama.surface import ApiError, Surface
from devstack.mock_ollama.vectors import embedding_dims, embedding_inputs, pseudo_embedding
from devstack.mock_ollama.wire import SSE_CT, JSONObj, json_response, sse


class OpenAIApi(Surface):
    """``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models`` and
    ``/v1/models/{model}``."""

    @staticmethod
    def _openai_error_bytes(message: str, etype: str = "api_error") -> bytes:
        return sse({"error": {"message": message, "type": etype, "param": None, "code": None}})

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = self.body("openai.ChatCompletionRequest", "EOF")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "[] is too short - 'messages'")
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                        raise ApiError(400, "invalid message format")
            elif not isinstance(content, str) and not (
                isinstance(msg, dict) and msg.get("tool_calls")
            ):
                raise ApiError(
                    400,
                    "invalid message content type: <nil>"
                    if content is None
                    else f"invalid message content type: {go_type_name(content)}",
                )
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise ApiError(400, f"{json.dumps(name)} does not support chat")
        n_out = body.get("max_tokens")
        if as_count(n_out) is None:
            n_out = body.get("max_completion_tokens")
        opts = body_options(body)
        plan = self.plan(message_word_count(messages), n_out, opts)
        cid = new_id("chatcmpl-", 999)
        created = int(time.time())
        prompt, output = plan.usage()
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        }

        if body.get("stream") is not True:
            return self.whole(
                plan,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "system_fingerprint": "fp_ollama",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": plan.text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
                newline=True,
            )

        so = body.get("stream_options")
        include_usage = isinstance(so, dict) and so.get("include_usage") is True

        def chunk(content: str, finish: str | None) -> JSONObj:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": content},
                        "finish_reason": finish,
                    }
                ],
            }

        return await self.openai_stream(request, plan, chunk, usage if include_usage else None)

    async def openai_stream(
        self,
        request: web.Request,
        plan: Plan,
        chunk: Callable[[str, str | None], JSONObj],
        usage: JSONObj | None,
    ) -> web.StreamResponse:
        """An OpenAI SSE stream: a chunk per token, the finish chunk, the usage chunk (only when
        the client set ``stream_options.include_usage``), then ``data: [DONE]``."""

        def done() -> bytes:
            out = sse(chunk("", "stop"))
            if usage is not None:
                last = chunk("", "stop")
                last["choices"] = []
                last["usage"] = usage
                out += sse(last)
            return out + b"data: [DONE]\n\n"

        return await self.pump(
            request,
            plan,
            Renderer(
                content_type=SSE_CT,
                token=lambda _i, piece: sse(chunk(piece, None)),
                done=done,
                error=lambda: self._openai_error_bytes(MOCK_ERROR),
            ),
        )

    async def openai_completions(self, request: web.Request) -> web.StreamResponse:
        body = self.body("openai.CompletionRequest", "EOF")
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise ApiError(
                400,
                "json: cannot unmarshal "
                f"{go_type_name(prompt)} into Go struct field "
                "CompletionRequest.prompt of type string",
            )
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise ApiError(400, f"{json.dumps(name)} does not support generate")
        opts = body_options(body)
        plan = self.plan(word_count(prompt), body.get("max_tokens"), opts)
        cid = new_id("cmpl-", 999)
        created = int(time.time())
        prompt_n, output = plan.usage()
        usage = {
            "prompt_tokens": prompt_n,
            "completion_tokens": output,
            "total_tokens": prompt_n + output,
        }

        if body.get("stream") is not True:
            return self.whole(
                plan,
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": name,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"text": plan.text, "index": 0, "finish_reason": "stop"}],
                    "usage": usage,
                },
                newline=True,
            )

        so = body.get("stream_options")
        include_usage = isinstance(so, dict) and so.get("include_usage") is True
        zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

        def chunk(text: str, finish: str | None) -> JSONObj:
            out: JSONObj = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "choices": [{"text": text, "index": 0, "finish_reason": finish}],
                "model": name,
                "system_fingerprint": "fp_ollama",
            }
            if include_usage:
                out["usage"] = zero
            return out

        return await self.openai_stream(request, plan, chunk, usage if include_usage else None)

    async def openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = self.body("openai.EmbedRequest", "EOF")
        fmt = body.get("encoding_format") or ""
        if not isinstance(fmt, str) or (fmt and fmt.lower() not in ("float", "base64")):
            raise ApiError(
                400,
                f"Invalid value for 'encoding_format' = {fmt}. "
                "Supported values: ['float', 'base64'].",
            )
        raw = body.get("input")
        if raw == "":
            raw = [""]
        if raw is None or raw == []:
            raise ApiError(400, "invalid input")
        name, _info = self.model(body)
        inputs = [raw] if isinstance(raw, str) else embedding_inputs(raw)
        dims = embedding_dims(body)
        data = []
        for i, text in enumerate(inputs):
            vec = pseudo_embedding(text, dims, normalize=True)
            emb: Any = vec
            if fmt.lower() == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "embedding": emb, "index": i})
        words = sum(word_count(t) for t in inputs)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": words, "total_tokens": words},
            },
            newline=True,
        )

    @staticmethod
    def _unix(rfc3339: str) -> int:
        try:
            return calendar.timegm(time.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return int(time.time())

    def _openai_model_obj(self, m: ModelInfo, model_id: str) -> JSONObj:
        return {
            "id": model_id,
            "object": "model",
            "created": self._unix(m.modified_at),
            "owned_by": "library",
        }

    async def openai_models(self, request: web.Request) -> web.StreamResponse:
        data = [self._openai_model_obj(m, m.name) for m in self.state.models.values()]
        return json_response({"object": "list", "data": data}, newline=True)

    async def openai_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        m = self.state.resolve(name)
        if m is None:
            raise ApiError(404, f"model '{name}' not found")
        return json_response(self._openai_model_obj(m, name), newline=True)
