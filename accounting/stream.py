"""One request's accounting, from its request body to its last response byte. Plain Python:
the gRPC edge feeds it what Envoy sends and relays what it answers; nothing here waits on
Redis or Postgres (the outcome is handed to a background queue by the caller).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from accounting.frames import NdjsonParser, SseEvent, SseParser
from accounting.tally import Counts, Tally, estimate_tokens
from gateway import endpoints, gojson, rewrite
from gateway.endpoints import Framing, Surface
from gateway.requestmeta import RequestMeta

# JSON (non-stream) bodies are parsed whole at the end; beyond this size they are estimated.
MAX_JSON_BODY = 16 << 20
# A flat ``"usage": {...}`` (or null) member and its comma, cut out of a chunk's bytes.
_USAGE_FIELD = re.compile(
    rb'\s*,\s*"usage"\s*:\s*(?:\{[^{}]*\}|null)|"usage"\s*:\s*(?:\{[^{}]*\}|null)\s*,\s*'
)


# What authz decided about the request (its dynamic metadata, gateway/requestmeta.py).
RequestInfo = RequestMeta


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request consumed; settled, ledgered and (opt-in) prompt-logged off the hot
    path."""

    info: RequestInfo
    counts: Counts
    status: int
    cut: bool  # the stream ended before its end (client gone, backend reset, timeout)
    prompt: Any = None  # the request body (prompt log only)
    completion: str = ""
    finished_at: float = field(default_factory=time.time)


def _prompt_text(body: Any) -> str:
    """The prompt's text, for an estimate when the backend gives no prompt count."""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    for name in ("prompt", "input", "system", "instructions"):
        value = gojson.field(body, name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    messages = gojson.field(body, "messages")
    if isinstance(messages, list):
        for message in messages:
            content = gojson.field(message, "content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                texts = (gojson.field(c, "text") for c in content if isinstance(c, dict))
                parts.extend(t for t in texts if isinstance(t, str))
    return "\n".join(parts)


class StreamAccount:
    """Feed it the request body, the response's start (its status and first body bytes), then
    each body chunk; it answers the bytes to send on (or None: unchanged) and, at the end, the
    Outcome."""

    def __init__(self, info: RequestInfo) -> None:
        self.info = info
        self.status = 0
        self.strip_usage = info.strip_usage
        self.prompt: Any = None
        self._tally = Tally(info.prompt_estimate)
        self._framing = ""  # "ndjson" | "sse" | "json" | "" (not parsed)
        self._ndjson = NdjsonParser()
        self._sse = SseParser()
        self._json = bytearray()
        self._json_overflow = False
        self._done = False  # [DONE] seen (OpenAI streams)
        self._ended = False
        self._started = False  # response status and framing known

    # -- request -------------------------------------------------------------------------

    def request_body(self, raw: bytes) -> bytes | None:
        """The body to send upstream instead of ``raw``, or None to send it unchanged."""
        try:
            self.prompt = gojson.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.prompt = None
        # authz's estimate covers every prompt-bearing field (it is what it reserved); this
        # process's own four-characters-a-token guess over the text fields is the fallback.
        estimate = self.info.prompt_estimate or estimate_tokens(_prompt_text(self.prompt))
        self._tally = Tally(estimate)
        limits = rewrite.Limits(
            endpoint=self.info.endpoint,
            stream=self.info.stream,
            max_tokens=self.info.max_tokens,
            keep_alive_min_s=self.info.keep_alive_min_s,
            keep_alive_max_s=self.info.keep_alive_max_s,
        )
        result = rewrite.rewrite(raw, limits)
        self.strip_usage = result.strip_usage
        return result.body

    # -- response ------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """The response's status and framing are known."""
        return self._started

    def response_start(self, status: int, first: bytes) -> None:
        """Start the response without its headers (Envoy sends accounting none): the status
        comes from Envoy's ``response.code`` attribute, the framing from the endpoint, the
        request's stream flag and the first body bytes. A refusal (4xx/5xx), an endpoint that
        never streams or a body that is one JSON value is whole JSON; a stream is framed as
        the endpoint's (:mod:`gateway.endpoints`: SSE on the OpenAI-style routes, NDJSON on
        Ollama's native ones)."""
        endpoint = endpoints.for_path(self.info.endpoint)
        streams = endpoint.framing if endpoint is not None else None
        if status >= 400 or not self.info.stream or streams is None:
            framing = "json"
        elif streams is Framing.SSE:
            framing = "json" if first.lstrip().startswith(b"{") else "sse"
        else:
            framing = "ndjson"
        self._started = True
        self.status = status
        self._framing = framing
        if status >= 400:
            self._tally.error = self._tally.error or f"http {status}"
        if not self.strip_usage or self._framing != "sse":
            self.strip_usage = False

    def response_chunk(self, data: bytes, end: bool) -> bytes | None:
        """Parse one body chunk; the bytes to pass on instead (usage chunk dropped), or None."""
        out: bytearray | None = bytearray() if self.strip_usage else None
        if self._framing == "ndjson":
            for frame in self._ndjson.feed(data):
                self._native(frame.value)
            if end:
                for frame in self._ndjson.finish():
                    self._native(frame.value)
        elif self._framing == "sse":
            events = self._sse.feed(data)
            if end:
                events += self._sse.finish()
            for event in events:
                passed = self._event(event)
                if out is not None:
                    out += passed
        elif self._framing == "json":
            if len(self._json) + len(data) <= MAX_JSON_BODY:
                self._json += data
            else:
                self._json_overflow = True
            if end:
                self._whole_json()
        if end:
            self._ended = True
        return None if out is None else bytes(out)

    def _native(self, value: Any) -> None:
        self._tally.native(value)

    def _event(self, event: SseEvent) -> bytes:
        """Account one SSE event; the bytes the client gets for it: the usage it did not ask
        for removed (the usage chunk dropped, a usage field cut out of a content chunk)."""
        if event.data == "[DONE]":
            self._done = True
            self._tally.final = True
            return event.raw
        value = event.json()
        if value is None:
            return event.raw
        if endpoints.surface(self.info.endpoint) is Surface.OPENAI:
            self._tally.openai(value, event.event)
        else:
            self._tally.native(value)
        if not (self.strip_usage and isinstance(value, dict) and "usage" in value):
            return event.raw
        if not value.get("choices"):
            return b""
        return _USAGE_FIELD.sub(b"", event.raw, count=1)

    def _whole_json(self) -> None:
        if self._json_overflow:
            return
        try:
            value = json.loads(bytes(self._json))
        except (ValueError, UnicodeDecodeError):
            return
        if endpoints.surface(self.info.endpoint) is Surface.OPENAI:
            self._tally.openai(value, whole=True)
        else:
            self._tally.native(value)

    # -- end -----------------------------------------------------------------------------

    @property
    def final(self) -> bool:
        return self._tally.final or self._ended

    def counts(self, cut: bool = False) -> Counts:
        """What the request consumed. A stream ``cut`` before its final frame is charged what
        passed (one token per content frame) and at least the prompt authz reserved for (a
        count the backend already gave wins when larger): hanging up before the counts come
        must never be cheaper than reading them."""
        counts = self._tally.result()
        if self.status >= 400 or (self.status == 0 and not cut):
            # The backend refused or never answered: nothing was generated.
            return Counts(0, 0, False, counts.error, counts.final)
        if cut and not counts.final:
            tokens_in = max(counts.tokens_in, self._tally.prompt_estimate)
            return Counts(tokens_in, counts.tokens_out, True, counts.error, False)
        return counts

    def outcome(self, cut: bool) -> Outcome:
        cut = cut and not self._ended
        return Outcome(
            info=self.info,
            counts=self.counts(cut),
            status=self.status,
            cut=cut,
            prompt=self.prompt if self.info.prompt_log else None,
            completion=self._tally.completion if self.info.prompt_log else "",
        )
