"""Ollama's OpenAI Responses API: ``/v1/responses``."""

from __future__ import annotations

import json
import time

from aiohttp import web

from devstack.mock_ollama.generation import MOCK_ERROR, Renderer, body_options, new_id, word_count
from devstack.mock_ollama.surface import ApiError, Surface
from devstack.mock_ollama.wire import SSE_CT, JSONObj, sse


class ResponsesApi(Surface):
    """``/v1/responses``: one message output item, events as Ollama's Go maps write them."""

    @staticmethod
    def _responses_words(body: JSONObj) -> int:
        total = word_count(body.get("instructions"))
        inp = body.get("input")
        if isinstance(inp, str):
            return total + word_count(inp)
        if not isinstance(inp, list):
            return total
        for item in inp:
            if not isinstance(item, dict):
                continue
            content = item.get("content")
            if isinstance(content, str):
                total += word_count(content)
            elif isinstance(content, list):
                total += sum(word_count(p.get("text")) for p in content if isinstance(p, dict))
            if item.get("type") == "function_call_output":
                total += word_count(item.get("output"))
        return total

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = self.body("openai.ResponsesRequest", "EOF")
        inp = body.get("input")
        if inp is not None and not isinstance(inp, str | list):
            raise ApiError(400, "input must be a string or array")
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise ApiError(400, f"{json.dumps(name)} does not support chat")
        opts = body_options(body)
        plan = self.plan(self._responses_words(body), body.get("max_output_tokens"), opts)
        resp_id = new_id("resp_", 999_999)
        item_id = new_id("msg_", 999_999)
        created = int(time.time())
        prompt_n, output_n = plan.usage()
        usage = {
            "input_tokens": prompt_n,
            "output_tokens": output_n,
            "total_tokens": prompt_n + output_n,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        instructions = body.get("instructions") or None
        temperature = body.get("temperature")
        top_p = body.get("top_p")

        def part(text: str) -> JSONObj:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        def message(status: str, content: list[JSONObj]) -> JSONObj:
            return {
                "id": item_id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }

        def response_obj(
            status: str, output: list[JSONObj], usage_: JSONObj | None, completed: bool
        ) -> JSONObj:
            return {
                "id": resp_id,
                "object": "response",
                "created_at": created,
                "completed_at": int(time.time()) if completed else None,
                "status": status,
                "incomplete_details": None,
                "model": name,
                "previous_response_id": None,
                "instructions": instructions,
                "output": output,
                "error": None,
                "tools": body.get("tools") or [],
                "tool_choice": "auto",
                "truncation": body.get("truncation") or "disabled",
                "parallel_tool_calls": True,
                "text": {"format": {"type": "text"}},
                "top_p": top_p if isinstance(top_p, int | float) else 1.0,
                "presence_penalty": 0,
                "frequency_penalty": 0,
                "top_logprobs": 0,
                "temperature": temperature if isinstance(temperature, int | float) else 1.0,
                "reasoning": None,
                "usage": usage_,
                "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": None,
                "store": False,
                "background": body.get("background") is True,
                "service_tier": "default",
                "metadata": {},
                "safety_identifier": None,
                "prompt_cache_key": None,
            }

        if body.get("stream") is not True:
            return self.whole(
                plan,
                response_obj(
                    "completed", [message("completed", [part(plan.text)])], usage, completed=True
                ),
                newline=True,
            )

        seq = [0]

        def event(kind: str, data: JSONObj) -> bytes:
            data["type"] = kind
            data["sequence_number"] = seq[0]
            seq[0] += 1
            # Ollama builds these events as Go maps, which encoding/json writes key-sorted
            return sse(data, event=kind, sort_keys=True)

        def head() -> bytes:
            return event(
                "response.created", {"response": response_obj("in_progress", [], None, False)}
            ) + event(
                "response.in_progress", {"response": response_obj("in_progress", [], None, False)}
            )

        def token(i: int, piece: str) -> bytes:
            out = b""
            if i == 0:
                out += event(
                    "response.output_item.added",
                    {"output_index": 0, "item": message("in_progress", [])},
                )
                out += event(
                    "response.content_part.added",
                    {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")},
                )
            return out + event(
                "response.output_text.delta",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                },
            )

        def done() -> bytes:
            out = b""
            output: list[JSONObj] = []
            if plan.pieces:
                text = plan.text
                out += event(
                    "response.output_text.done",
                    {
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "text": text,
                        "logprobs": [],
                    },
                )
                out += event(
                    "response.content_part.done",
                    {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part(text)},
                )
                out += event(
                    "response.output_item.done",
                    {"output_index": 0, "item": message("completed", [part(text)])},
                )
                output = [message("completed", [part(text)])]
            return out + event(
                "response.completed", {"response": response_obj("completed", output, usage, True)}
            )

        def error() -> bytes:
            return event("error", {"code": "api_error", "message": MOCK_ERROR, "param": None})

        return await self.pump(
            request,
            plan,
            Renderer(
                content_type=SSE_CT,
                token=token,
                done=done,
                error=error,
                head=head,
                extra_headers={"Cache-Control": "no-cache"},
            ),
        )
