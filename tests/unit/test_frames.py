"""NDJSON and SSE framing: any split of the byte stream parses to the same frames."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.frames import (
    MAX_FRAME_BYTES,
    LineSplitter,
    NdjsonFrame,
    NdjsonParser,
    SseEvent,
    SseParser,
    decode_json,
)

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


# -- exact frames: raw bytes, line ends, the limit, the end of the stream ------------------------


def test_ndjson_frames_keep_their_raw_bytes_line_end_included() -> None:
    parser = NdjsonParser()
    frames = parser.feed(b'{"a": 1}\r\nnot json\n\n{"b"') + parser.finish()
    assert frames == [
        NdjsonFrame({"a": 1}, b'{"a": 1}\r\n'),
        NdjsonFrame(None, b"not json\n"),
        NdjsonFrame(None, b"\n"),
        NdjsonFrame(None, b'{"b"'),
    ]


def test_ndjson_last_frame_keeps_its_raw_bytes() -> None:
    parser = NdjsonParser()
    assert parser.feed(b'{"done": true}\r') == []
    assert parser.finish() == [NdjsonFrame({"done": True}, b'{"done": true}\r')]
    assert parser.finish() == []


def test_ndjson_the_tail_of_an_endless_line_is_no_frame() -> None:
    parser = NdjsonParser()
    endless = b"x" * (MAX_FRAME_BYTES + 1)
    assert parser.feed(endless) == [NdjsonFrame(None, endless)]
    # The rest of that line reads as JSON on its own, but it is still the endless line.
    assert parser.feed(b'{"a": 1}') == []
    assert parser.finish() == [NdjsonFrame(None, b'{"a": 1}')]


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b'  {"a": 1}\t', {"a": 1}),
        (b"[1, 2]", [1, 2]),
        (b"7", 7),
        (b"", None),
        (b"   ", None),
        (b"not json", None),
        (b'{"a": ', None),
        (b'{"a": "\xff"}', None),  # broken UTF-8
    ],
)
def test_decode_json(line: bytes, value: object) -> None:
    assert decode_json(line) == value


def test_a_line_exactly_at_the_limit_is_kept() -> None:
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abcd") == []
    assert splitter.feed(b"\n") == [(b"abcd", b"abcd\n")]


def test_a_line_one_byte_over_the_limit_is_dropped_raw_bytes_kept() -> None:
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abcde") == [(b"", b"abcde")]
    assert splitter.feed(b"fg\nok\r\n") == [(b"", b"fg\n"), (b"ok", b"ok\r\n")]
    assert splitter.flush() is None


def test_the_tail_of_an_endless_line_at_the_end_of_the_stream_is_no_line() -> None:
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abcde") == [(b"", b"abcde")]
    assert splitter.feed(b"fg") == []
    assert splitter.flush() == (b"", b"fg")


@pytest.mark.parametrize(
    ("tail", "line"),
    [
        (b"ab", b"ab"),
        (b"ab\r", b"ab"),
        (b"ab\r\r", b"ab"),
        (b"ab \r", b"ab "),  # only CRs go, not other white space
        (b"\rab", b"\rab"),  # only at the end
        (b"abX\r", b"abX"),
    ],
)
def test_the_last_line_without_lf_loses_its_cr(tail: bytes, line: bytes) -> None:
    splitter = LineSplitter()
    assert splitter.feed(tail) == []
    assert splitter.flush() == (line, tail)
    assert splitter.flush() is None


def test_sse_an_event_without_an_event_field_is_named_empty() -> None:
    parser = SseParser()
    assert parser.feed(b"data: 1\n\nevent: ping\ndata: 2\n\ndata: 3\n\n") == [
        SseEvent("", "1", b"data: 1\n\n"),
        SseEvent("ping", "2", b"event: ping\ndata: 2\n\n"),
        SseEvent("", "3", b"data: 3\n\n"),
    ]


@pytest.mark.parametrize(
    ("stream", "event"),
    [
        (b"data:x\n\n", SseEvent("", "x", b"data:x\n\n")),  # no space after the colon
        (b"data:  x\n\n", SseEvent("", " x", b"data:  x\n\n")),  # only one space goes
        (b"data\n\n", SseEvent("", "", b"data\n\n")),  # a field without a colon
        (b"data: a:b\n\n", SseEvent("", "a:b", b"data: a:b\n\n")),
        (b": c\ndata: x\n\n", SseEvent("", "x", b": c\ndata: x\n\n")),
        (b":data: c\n\n", SseEvent("", "", b":data: c\n\n")),  # a comment, not data
        (b"id: 1\nretry: 5\ndata: x\n\n", SseEvent("", "x", b"id: 1\nretry: 5\ndata: x\n\n")),
        (b"event: a\nevent: b\n\n", SseEvent("b", "", b"event: a\nevent: b\n\n")),
        (b"data: \xff\n\n", SseEvent("", "\ufffd", b"data: \xff\n\n")),  # broken UTF-8
    ],
)
def test_sse_field_rules(stream: bytes, event: SseEvent) -> None:
    parser = SseParser()
    assert parser.feed(stream) == [event]
    assert parser.finish() == []


def test_sse_last_line_without_lf_loses_its_cr() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.finish() == [SseEvent("", "x", b"data: x\r")]


def test_sse_a_stream_ending_in_a_bare_cr_ends_its_event_there() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\n\r") == []
    assert parser.finish() == [SseEvent("", "x", b"data: x\n\r")]
    assert parser.finish() == []


@pytest.mark.parametrize(
    ("data", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ("[1]", [1]),
        ("", None),
        ("[DONE]", None),
        ("not json", None),
    ],
)
def test_sse_event_json(data: str, value: object) -> None:
    assert SseEvent("", data, b"").json() == value
