"""What authz needs from a request body: the model, stream flag, prompt size, output cap.

Bodies are JSON objects. A body that is not JSON, a JSON that is not an object, one that Ollama
could read differently (keys equal under Go's case folding, :mod:`gateway.gojson`), a field
the endpoint does not document (:mod:`authz.fields`), nesting deeper than :data:`MAX_DEPTH`,
a missing or non-string ``model`` or a content type that is not JSON is a :class:`BadRequest`
with one status (400 or 415) and the surface's generic message — no detail about what was
wrong. Fields are read as Go reads them (:func:`gojson.field`): ``"Model"`` is the model.

``prompt_estimate`` is a true upper bound of the prompt's tokens, so that a reservation of
``prompt_estimate + output cap`` is never exceeded. Every tokenizer Ollama runs is byte-level
(BPE over UTF-8 bytes, or SentencePiece with byte fallback): no text tokenizes into more tokens
than it has UTF-8 bytes. So the estimate counts

* every prompt-bearing string at its UTF-8 bytes as Go's JSON encoder writes it (quotes and
  escapes included: tools and formats reach the template as JSON), every object key likewise,
  and every number at the longest a float64 is written (:data:`_NUMBER_BYTES`);
* every token id of ``/api/generate``'s ``context`` as one token;
* every image (native ``images``, OpenAI ``image_url``, Anthropic ``source``) at a bounded
  :data:`_IMAGE_TOKENS`, not its base64 length;
* the template: :data:`_MESSAGE_TOKENS` per message (role markers, separators) and
  :data:`_REQUEST_TOKENS` per request.

Text nested deeper than :data:`MAX_DEPTH` is refused rather than skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from authz import fields
from authz.request import AuthzRequest
from gateway import endpoints, gojson
from gateway.endpoints import OutputCap, Surface

# curl's ``-d`` sends a form content type, and Ollama's own docs use ``curl -d '{…}'``: such a
# body is accepted when it is JSON. Anything else that is not JSON is refused (415).
_ACCEPTED_TYPES = ("application/json", "application/x-www-form-urlencoded")
# Fields that never reach the model as prompt text (tools, format, system, suffix do): every
# endpoint's output-cap fields (the endpoint table's) and these.
_NOT_PROMPT = frozenset(
    gojson.fold(n)
    for n in (
        *endpoints.OUTPUT_CAP_FIELDS,
        *("model", "stream", "options", "keep_alive", "stream_options"),
        *("temperature", "top_p", "top_k"),
        *("seed", "stop", "stop_sequences", "frequency_penalty", "presence_penalty", "n"),
        *("logprobs", "top_logprobs", "truncate", "shift", "raw", "dimensions", "user"),
        *("encoding_format", "metadata", "logit_bias", "store", "service_tier", "best_of"),
        *("echo", "parallel_tool_calls", "background"),
    )
)
_CONTEXT = gojson.fold("context")
_MESSAGES = frozenset(gojson.fold(n) for n in ("messages", "input"))
_IMAGES = gojson.fold("images")  # native: a list of base64 images
_IMAGE_URL = gojson.fold("image_url")  # OpenAI: a data URL, or {"url": <data URL>}
_SOURCE = gojson.fold("source")  # Anthropic: {"type": "base64", "data": ...}
MAX_DEPTH = 64
# An image costs the model a bounded number of tokens, not its base64 length.
_IMAGE_TOKENS = 1024
_MESSAGE_TOKENS = 16
_REQUEST_TOKENS = 64
_NUMBER_BYTES = 24  # "-1.2345678901234567e-308": the longest float64 Go writes
# Characters Go's JSON encoder writes as an escape (at most 6 bytes: \u003c).
_ESCAPED = re.compile(r'[\x00-\x1f"\\<>&\u2028\u2029]')


class BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Payload:
    model: str
    stream: bool
    prompt_estimate: int  # an upper bound of the prompt's tokens
    output_cap: int | None  # what the request asks for; None: it sets no cap
    options: dict[str, Any]  # Ollama's options map ({} when absent)
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


def _text(text: str) -> int:
    """Bytes of ``text`` as Go's JSON encoder writes it, quotes included: at least its UTF-8
    bytes (a lone surrogate counts as the 3 bytes Go writes for it)."""
    return len(text.encode("utf-8", "surrogatepass")) + 5 * len(_ESCAPED.findall(text)) + 2


def _image(value: Any, depth: int) -> int:
    """An image-bearing value: each image it holds at its bounded cost."""
    if isinstance(value, str):
        return _IMAGE_TOKENS
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return _IMAGE_TOKENS * len(value) + 2
    if isinstance(value, dict) and (
        isinstance(gojson.field(value, "url"), str) or isinstance(gojson.field(value, "data"), str)
    ):
        return _IMAGE_TOKENS + 2
    return _cost(value, depth)


def _cost(value: Any, depth: int = 0) -> int:
    """An upper bound of the tokens ``value`` adds to the prompt (its JSON text, images at
    their bounded cost); raises :class:`BadRequest` for nesting deeper than MAX_DEPTH."""
    if isinstance(value, str):
        return _text(value)
    if depth >= MAX_DEPTH:
        raise BadRequest(400)
    if isinstance(value, dict):
        total = 2 + 2 * len(value)  # braces, a colon and a comma per key
        for key, item in value.items():
            total += _text(key)
            if gojson.fold(key) in (_IMAGES, _IMAGE_URL, _SOURCE):
                total += _image(item, depth + 1)
            else:
                total += _cost(item, depth + 1)
        return total
    if isinstance(value, list):
        return 2 + len(value) + sum(_cost(v, depth + 1) for v in value)
    if value is None or isinstance(value, bool):
        return 5
    return _NUMBER_BYTES


def _prompt_tokens(name: str, value: Any) -> int:
    """An upper bound of the tokens the top-level field ``name`` adds to the prompt."""
    folded = gojson.fold(name)
    if folded == _CONTEXT and isinstance(value, list):
        # Token ids of an earlier answer: one token each.
        return sum(1 if isinstance(v, int) else _cost(v, 1) for v in value)
    if folded == _IMAGES:
        return _image(value, 0)
    tokens = _cost(value)
    if folded in _MESSAGES and isinstance(value, list):
        tokens += _MESSAGE_TOKENS * sum(isinstance(m, dict) for m in value)
    return tokens if folded not in _NOT_PROMPT else 0


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _output_cap(body: dict[str, Any], options: dict[str, Any], spec: OutputCap) -> int | None:
    """The first positive integer in the endpoint's cap fields (:mod:`gateway.endpoints`)."""
    for name in spec.fields:
        # A key of Ollama's options map matches exactly; a struct field as Go folds it.
        value = options.get(name) if spec.in_options else gojson.field(body, name)
        cap = _positive_int(value)
        if cap is not None:
            return cap
    return None


def parse(req: AuthzRequest, *, embeddings: bool) -> Payload:
    """The request's model and sizes; raises :class:`BadRequest`."""
    body = json_object(req)
    endpoint = endpoints.for_path(req.path)
    if endpoint is None or not fields.allowed(req.path, body):
        raise BadRequest(400)
    model = gojson.field(body, "model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest(400)
    stream = gojson.field(body, "stream")
    if stream is None:
        # Ollama's chat and generate stream unless told otherwise; the OpenAI API does not.
        stream = endpoint.surface is Surface.OLLAMA and not embeddings
    elif not isinstance(stream, bool):
        raise BadRequest(400)
    options = gojson.field(body, "options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise BadRequest(400)  # a map in Ollama: anything else does not decode
    prompt = sum(_prompt_tokens(k, v) for k, v in body.items())
    spec = endpoint.output_cap  # None: it generates no tokens
    return Payload(
        model=model,
        stream=stream,
        prompt_estimate=prompt + _REQUEST_TOKENS,
        output_cap=0 if embeddings or spec is None else _output_cap(body, options, spec),
        options=options,
        body=body,
    )
