"""NDJSON and SSE framing: any split of the byte stream parses to the same frames."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.frames import LineSplitter, NdjsonParser, SseParser

NATIVE = [
    {"model": "m", "message": {"role": "assistant", "content": "Grüße 🌍"}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": " 日本語"}, "done": False},
    {"model": "m", "done": True, "prompt_eval_count": 4, "eval_count": 2},
]


def ndjson_bytes(crlf: bool = False) -> bytes:
    eol = b"\r\n" if crlf else b"\n"
    return b"".join(json.dumps(f, ensure_ascii=False).encode() + eol for f in NATIVE)


def sse_bytes(crlf: bool = False) -> bytes:
    eol = "\r\n" if crlf else "\n"
    events = [
        f"event: message_start{eol}data: {json.dumps({'type': 'message_start'})}{eol}{eol}",
        f": a comment{eol}data: {json.dumps({'text': 'héllo ✓'}, ensure_ascii=False)}{eol}{eol}",
        f"data: line one{eol}data: line two{eol}{eol}",
        f"data: [DONE]{eol}{eol}",
    ]
    return "".join(events).encode()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for point in points:
        chunks.append(data[start:point])
        start = point
    chunks.append(data[start:])
    return chunks


def parse_ndjson(chunks: list[bytes]) -> list[object]:
    parser = NdjsonParser()
    frames = [f for chunk in chunks for f in parser.feed(chunk)] + parser.finish()
    return [f.value for f in frames]


def parse_sse(chunks: list[bytes]) -> list[tuple[str, str, bytes]]:
    parser = SseParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish()
    return [(e.event, e.data, e.raw) for e in events]


def test_ndjson_whole_stream() -> None:
    assert parse_ndjson([ndjson_bytes()]) == NATIVE


def test_ndjson_byte_by_byte_with_crlf() -> None:
    data = ndjson_bytes(crlf=True)
    assert parse_ndjson([data[i : i + 1] for i in range(len(data))]) == NATIVE


@settings(max_examples=300)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), crlf=st.booleans())
def test_ndjson_any_split_gives_the_same_frames(cuts: list[int], crlf: bool) -> None:
    data = ndjson_bytes(crlf)
    assert parse_ndjson(split_at(data, cuts)) == NATIVE


def test_ndjson_last_frame_without_newline() -> None:
    data = ndjson_bytes().rstrip(b"\n")
    assert parse_ndjson([data]) == NATIVE


def test_utf8_split_mid_character() -> None:
    data = ndjson_bytes()
    cut = data.index("🌍".encode()) + 2  # inside the 4-byte sequence
    assert parse_ndjson([data[:cut], data[cut:]]) == NATIVE


@settings(max_examples=300)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), crlf=st.booleans())
def test_sse_any_split_gives_the_same_events(cuts: list[int], crlf: bool) -> None:
    data = sse_bytes(crlf)
    whole = parse_sse([data])
    assert parse_sse(split_at(data, cuts)) == whole
    # The raw bytes of the events are the stream, byte for byte.
    assert b"".join(raw for _, _, raw in whole) == data


def test_sse_fields() -> None:
    events = parse_sse([sse_bytes(crlf=True)])
    assert [(name, data) for name, data, _ in events] == [
        ("message_start", '{"type": "message_start"}'),
        ("", '{"text": "héllo ✓"}'),
        ("", "line one\nline two"),
        ("", "[DONE]"),
    ]


def test_sse_several_events_in_one_chunk_and_last_without_blank_line() -> None:
    data = b'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: {"a": 3}'
    events = parse_sse([data])
    assert [json.loads(d) for _, d, _ in events] == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_an_endless_line_is_dropped_not_buffered_forever() -> None:
    splitter = LineSplitter(max_line=64)
    assert [line for line, _ in splitter.feed(b"x" * 100)] == [b""]
    lines = splitter.feed(b"yyy\nok\n")
    assert [line for line, _ in lines] == [b"", b"ok"]
