"""Incremental framing of a streamed response body: NDJSON lines and SSE events.

Body chunks arrive cut anywhere — mid-line, mid-event, mid-UTF-8 character, between the CR and
the LF of a CRLF. Splitting happens on bytes (an LF byte never occurs inside a multi-byte UTF-8
sequence), and a line is decoded only once it is complete, so none of those cuts matters.
Every frame keeps its raw bytes so a caller can pass the stream on byte for byte, or drop one
event from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# A single frame larger than this is not a token frame; it is skipped, not buffered forever.
MAX_FRAME_BYTES = 4 << 20


class LineSplitter:
    """Bytes in, complete lines out (LF or CRLF), each with its raw bytes."""

    def __init__(self, max_line: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_line
        self._skipping = False

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """``(line without its end-of-line, raw bytes including it)`` for each complete line."""
        self._buf += data
        lines: list[tuple[bytes, bytes]] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            raw = bytes(self._buf[start : end + 1])
            start = end + 1
            if self._skipping:
                self._skipping = False
                lines.append((b"", raw))
                continue
            line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            lines.append((line, raw))
        del self._buf[:start]
        if len(self._buf) > self._max:
            # An endless line: forget it and resynchronise at the next LF.
            lines.append((b"", bytes(self._buf)))
            self._buf.clear()
            self._skipping = True
        return lines

    def flush(self) -> tuple[bytes, bytes] | None:
        """The trailing line that ended without an LF (end of stream), if any."""
        if not self._buf:
            return None
        raw = bytes(self._buf)
        self._buf.clear()
        return (b"" if self._skipping else raw.rstrip(b"\r"), raw)


def decode_json(line: bytes) -> Any:
    """A JSON value from one line; None for blank lines, non-JSON or broken UTF-8."""
    text = line.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class NdjsonFrame:
    value: Any  # the decoded JSON, None when the line was not JSON
    raw: bytes


class NdjsonParser:
    def __init__(self) -> None:
        self._lines = LineSplitter()

    def feed(self, data: bytes) -> list[NdjsonFrame]:
        return [NdjsonFrame(decode_json(line), raw) for line, raw in self._lines.feed(data)]

    def finish(self) -> list[NdjsonFrame]:
        rest = self._lines.flush()
        return [] if rest is None else [NdjsonFrame(decode_json(rest[0]), rest[1])]


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # the ``event:`` field, "" when absent (the default "message")
    data: str  # ``data:`` lines joined with LF
    raw: bytes  # every byte of the event, its terminating blank line included

    def json(self) -> Any:
        if not self.data or self.data == "[DONE]":
            return None
        try:
            return json.loads(self.data)
        except ValueError:
            return None


class SseParser:
    """Server-sent events per the WHATWG rules that matter here: fields ``event`` and
    ``data`` (several data lines join with LF), comments skipped, one leading space after the
    colon dropped, events dispatched on a blank line."""

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self._raw = bytearray()
        self._event = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        for line, raw in self._lines.feed(data):
            event = self._line(line, raw)
            if event is not None:
                events.append(event)
        return events

    def finish(self) -> list[SseEvent]:
        """Events left at the end of the stream (a last event without its blank line)."""
        rest = self._lines.flush()
        events: list[SseEvent] = []
        if rest is not None:
            event = self._line(rest[0], rest[1])
            if event is not None:
                events.append(event)
        if self._raw:
            events.append(self._dispatch())
        return events

    def _line(self, line: bytes, raw: bytes) -> SseEvent | None:
        self._raw += raw
        if not line:
            return self._dispatch()
        text = line.decode("utf-8", errors="replace")
        if text.startswith(":"):
            return None
        name, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _dispatch(self) -> SseEvent:
        event = SseEvent(self._event, "\n".join(self._data), bytes(self._raw))
        self._raw.clear()
        self._event = ""
        self._data = []
        return event
