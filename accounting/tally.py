"""Token counts from response frames, per API shape. Plain Python: frames in, counts out.

Where a count is missing it stays ``None`` (unknown, never 0); :meth:`Tally.result` then
estimates it and marks the result as estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Completion text kept for the prompt log (opt-in) and for estimates; beyond it, only counted.
MAX_COMPLETION_CHARS = 256 * 1024


@dataclass(frozen=True, slots=True)
class Counts:
    tokens_in: int
    tokens_out: int
    estimated: bool
    error: str | None
    final: bool  # the backend's final frame (or the whole JSON body) was seen

    @property
    def total(self) -> int:
        return self.tokens_in + self.tokens_out


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0, int(value))


def _error_text(value: Any) -> str:
    if isinstance(value, dict):
        for name in ("message", "type", "code"):
            if isinstance(value.get(name), str) and value[name]:
                return str(value[name])[:500]
        return "error"
    return str(value)[:500] if value else "error"


def estimate_tokens(text: str) -> int:
    """A rough token count for text without one: four characters a token, at least one."""
    return max(1, (len(text) + 3) // 4) if text else 0


class Tally:
    """Accumulates what the frames of one response say."""

    def __init__(self, prompt_estimate: int = 0) -> None:
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        self.error: str | None = None
        self.final = False
        self.frames = 0  # content-bearing frames seen (≈ tokens for an Ollama stream)
        self._completion: list[str] = []
        self._completion_len = 0
        self._other_len = 0  # characters of thinking and tool calls
        self._prompt_estimate = prompt_estimate

    @property
    def prompt_estimate(self) -> int:
        """The prompt's tokens when the backend does not say."""
        return self._prompt_estimate

    # -- input ---------------------------------------------------------------------------

    def native(self, frame: Any) -> None:
        """One NDJSON frame or the JSON body of ``/api/*``."""
        if not isinstance(frame, dict):
            return
        if "error" in frame:
            self.error = _error_text(frame["error"])
            return
        message = frame.get("message")
        text = message.get("content") if isinstance(message, dict) else frame.get("response")
        if isinstance(text, str) and text:
            self._text(text)
        else:
            # A frame of thinking or tool calls is generated output too.
            source = message if isinstance(message, dict) else frame
            self._other(source.get("thinking"), source.get("tool_calls"))
        if frame.get("done") is True or "embeddings" in frame or "embedding" in frame:
            self.final = True
            self.tokens_in = _int(frame.get("prompt_eval_count"))
            out = _int(frame.get("eval_count"))
            is_embedding = "embeddings" in frame or "embedding" in frame
            self.tokens_out = 0 if is_embedding and out is None else out

    def openai(self, value: Any, event: str = "", *, whole: bool = False) -> None:
        """One SSE event's JSON, or (``whole``) the JSON body of ``/v1/*`` (chat, completions,
        embeddings, responses, messages)."""
        if not isinstance(value, dict):
            return
        kind: str = value["type"] if isinstance(value.get("type"), str) else event
        if "error" in value and value.get("error") is not None:
            self.error = _error_text(value["error"])
            return
        if kind == "error":  # Responses / Anthropic error event
            self.error = _error_text(value)
            return
        if kind == "response.failed":
            response = value.get("response")
            detail = response.get("error") if isinstance(response, dict) else None
            self.error = _error_text(detail)
            return
        self._content(value, kind)
        usage = value.get("usage")
        if kind == "message_start":  # Anthropic: input tokens first
            message = value.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self.tokens_in = _int(usage.get("input_tokens"))
            return
        if kind == "response.completed":  # Responses API: usage in the completed event
            response = value.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict):  # chat, completions; Anthropic's final message_delta
            self._usage(usage)
            # /v1/completions repeats a (zero) usage on every content chunk: in a stream, only
            # the usage chunk (no choices) ends the response.
            if whole or not value.get("choices"):
                self.final = True
        if whole:
            self.final = True

    def _usage(self, usage: dict[str, Any]) -> None:
        tokens_in = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        tokens_out = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        if tokens_out is None and tokens_in is not None and "total_tokens" in usage:
            total = _int(usage.get("total_tokens"))
            tokens_out = None if total is None else max(0, total - tokens_in)
        if tokens_in is not None:
            self.tokens_in = tokens_in
        if tokens_out is not None:
            self.tokens_out = tokens_out

    def _content(self, value: dict[str, Any], kind: str) -> None:
        choices = value.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta") or choice.get("message") or {}
                text = delta.get("content") if isinstance(delta, dict) else None
                if not isinstance(text, str):
                    text = choice.get("text")
                if isinstance(text, str) and text:
                    self._text(text)
                elif isinstance(delta, dict):
                    self._other(delta.get("reasoning"), delta.get("tool_calls"))
            return
        if kind == "response.output_text.delta" and isinstance(value.get("delta"), str):
            self._text(value["delta"])
        elif kind.startswith("response.") and kind.endswith(".delta"):
            self._other(value.get("delta"), None)  # reasoning, function-call arguments
        elif kind == "content_block_delta":
            delta = value.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                self._text(delta["text"])
            elif isinstance(delta, dict):
                self._other(delta.get("thinking"), delta.get("partial_json"))

    def _text(self, text: str) -> None:
        self.frames += 1
        if self._completion_len < MAX_COMPLETION_CHARS:
            self._completion.append(text)
        self._completion_len += len(text)

    def _other(self, text: Any, calls: Any) -> None:
        """Output that is not the completion's text (thinking, tool calls): counted, not
        kept."""
        size = len(text) if isinstance(text, str) else 0
        if not size and calls:
            size = len(str(calls))
        if size:
            self.frames += 1
            self._other_len += size

    # -- output --------------------------------------------------------------------------

    @property
    def completion(self) -> str:
        return "".join(self._completion)[:MAX_COMPLETION_CHARS]

    def result(self) -> Counts:
        """The counts; any count the backend did not give is estimated and marked so."""
        estimated = False
        tokens_in = self.tokens_in
        tokens_out = self.tokens_out
        # Ollama's compatibility layers report 0 where the native counts were missing: a zero
        # next to real content is "unknown", not "free".
        if tokens_in == 0 and self._prompt_estimate > 0:
            tokens_in = None
        if tokens_out == 0 and self.frames > 0:
            tokens_out = None
        if tokens_in is None:
            tokens_in = self._prompt_estimate
            estimated = True
        if tokens_out is None:
            # A stream carries (at least) one token per content frame; a whole body is
            # estimated by size.
            by_chars = (self._completion_len + self._other_len + 3) // 4
            tokens_out = self.frames if self.frames > 1 else max(self.frames, by_chars)
            estimated = True
        return Counts(tokens_in, tokens_out, estimated, self.error, self.final)
