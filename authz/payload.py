"""What authz needs from a request body: the model, stream flag, prompt size, output cap.

Bodies are JSON objects. A body that is not JSON, a JSON that is not an object, one that Ollama
could read differently (keys equal under Go's case folding, :mod:`gateway.gojson`), a missing
or non-string ``model`` or a content type that is not JSON is a :class:`BadRequest` with one
status (400 or 415) and the surface's generic message — no detail about what was wrong.
Fields are read as Go reads them (:func:`gojson.field`): ``"Model"`` is the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from authz.request import AuthzRequest
from gateway import gojson

# curl's ``-d`` sends a form content type, and Ollama's own docs use ``curl -d '{…}'``: such a
# body is accepted when it is JSON. Anything else that is not JSON is refused (415).
_ACCEPTED_TYPES = ("application/json", "application/x-www-form-urlencoded")
# Fields of a request that never reach the model as prompt (tools, format, system do).
_NOT_PROMPT = frozenset(
    gojson.fold(n) for n in ("model", "stream", "options", "keep_alive", "stream_options")
)
_IMAGES = gojson.fold("images")
_PROMPT_OVERHEAD_TOKENS = 16
# An image costs the model a bounded number of tokens, not its base64 length: count each one
# (native ``images`` entries, OpenAI ``data:`` URLs) as this many characters of text.
_IMAGE_CHARS = 3 * 1024


class BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Payload:
    model: str
    stream: bool
    prompt_estimate: int  # upper-bound guess of the prompt's tokens
    output_cap: int | None  # what the request asks for; None: it sets no cap
    body: dict[str, Any]


def _json_content_type(values: list[str]) -> bool:
    if not values:
        return True
    if len(values) != 1:
        return False
    media = values[0].split(";", 1)[0].strip().lower()
    return media in _ACCEPTED_TYPES or (
        media.startswith("application/") and media.endswith("+json")
    )


def json_object(req: AuthzRequest) -> dict[str, Any]:
    if not _json_content_type(req.header("content-type")):
        raise BadRequest(415)
    try:
        body = req.json_body()
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(400) from exc
    if not isinstance(body, dict):
        raise BadRequest(400)
    return body


def _count_text(value: Any, depth: int = 0) -> int:
    if isinstance(value, str):
        return _IMAGE_CHARS if value.startswith("data:") else len(value)
    if depth > 32:
        return 0
    if isinstance(value, dict):
        return sum(
            _IMAGE_CHARS * len(v)
            if gojson.fold(k) == _IMAGES and isinstance(v, list)
            else _count_text(v, depth + 1)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(_count_text(v, depth + 1) for v in value)
    return 0


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _output_cap(body: dict[str, Any], surface: str) -> int | None:
    if surface == "ollama":
        options = gojson.field(body, "options")  # a map in Ollama: its keys match exactly
        return _positive_int(options.get("num_predict")) if isinstance(options, dict) else None
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        cap = _positive_int(gojson.field(body, name))
        if cap is not None:
            return cap
    return None


def parse(req: AuthzRequest, *, embeddings: bool) -> Payload:
    """The request's model and sizes; raises :class:`BadRequest`."""
    body = json_object(req)
    model = gojson.field(body, "model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest(400)
    stream = gojson.field(body, "stream")
    if stream is None:
        # Ollama's chat and generate stream unless told otherwise; the OpenAI API does not.
        stream = req.surface == "ollama" and not embeddings
    elif not isinstance(stream, bool):
        raise BadRequest(400)
    chars = sum(_count_text(v) for k, v in body.items() if gojson.fold(k) not in _NOT_PROMPT)
    return Payload(
        model=model,
        stream=stream,
        prompt_estimate=math.ceil(chars / 3) + _PROMPT_OVERHEAD_TOKENS,
        output_cap=0 if embeddings else _output_cap(body, req.surface),
        body=body,
    )
