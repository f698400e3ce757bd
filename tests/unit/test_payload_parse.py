"""What authz reads of a request body (authz/payload.py ``parse``), field by field: which
content types and bodies are refused and with which status, the model, whether the answer
streams, Ollama's options map and the output cap a request asks for. Every expected value is
written out by hand."""

from __future__ import annotations

from typing import Any

import pytest

from authz import payload
from authz.request import AuthzRequest

JSON = ["application/json"]


def request(path: str, raw: bytes | str, ctype: list[str] | None = None) -> AuthzRequest:
    body = raw.encode() if isinstance(raw, str) else raw
    headers = {"content-type": JSON if ctype is None else ctype}
    return AuthzRequest("POST", path, headers, body)


def parse(
    path: str, raw: bytes | str, ctype: list[str] | None = None, *, embeddings: bool = False
) -> payload.Payload:
    return payload.parse(request(path, raw, ctype), embeddings=embeddings)


def refused(
    path: str, raw: bytes | str, ctype: list[str] | None = None, *, embeddings: bool = False
) -> int:
    with pytest.raises(payload.BadRequest) as raised:
        parse(path, raw, ctype, embeddings=embeddings)
    return raised.value.status


@pytest.mark.parametrize(
    "ctype",
    [
        [],  # no content type at all: read as JSON
        ["application/json"],
        ["Application/JSON; charset=utf-8"],
        ["application/json; charset=utf-8; q=1"],
        ["  application/json  "],
        ["application/x-www-form-urlencoded"],  # what curl -d sends
        ["application/problem+json"],
        ["application/vnd.api+json; charset=utf-8"],
    ],
)
def test_json_content_types_are_read(ctype: list[str]) -> None:
    assert parse("/api/chat", '{"model": "m"}', ctype).model == "m"


@pytest.mark.parametrize(
    "ctype",
    [
        ["text/plain"],
        ["text/json"],
        ["text/x+json"],  # +json only under application/
        ["application/xml"],
        ["application/json+xml"],
        ["application/jsonx"],
        ["multipart/form-data; boundary=x"],
        [""],
        ["application/json", "application/json"],  # two values: which one is meant?
        ["application/json", "text/plain"],
    ],
)
def test_other_content_types_are_refused_with_415(ctype: list[str]) -> None:
    assert refused("/api/chat", '{"model": "m"}', ctype) == 415


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"nope",
        b"[]",
        b'"m"',
        b"null",
        b'{"model": "\xff"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser recurses
        b'{"model": "m", "MODEL": "n"}',  # one field to Go, two to us
    ],
)
def test_a_body_that_is_not_one_json_object_is_refused_with_400(raw: bytes) -> None:
    assert refused("/api/chat", raw) == 400


def test_a_body_outside_the_endpoint_table_is_refused_with_400() -> None:
    assert refused("/api/tags", '{"model": "m"}') == 400  # an endpoint with no body fields
    assert refused("/api/pull", '{"model": "m"}') == 400  # not an endpoint at all
    assert refused("/api/chat", '{"model": "m", "bogus": 1}') == 400  # a field it lacks


@pytest.mark.parametrize(
    ("raw", "model"),
    [
        ('{"model": "llama3"}', "llama3"),
        ('{"MODEL": "llama3"}', "llama3"),  # Go matches the field case-insensitively
        ('{"Model": " llama3 "}', " llama3 "),  # as sent: canonical names come later
    ],
)
def test_the_model_is_read_as_go_reads_it(raw: str, model: str) -> None:
    assert parse("/api/chat", raw).model == model


@pytest.mark.parametrize(
    "raw",
    ["{}", '{"model": null}', '{"model": 5}', '{"model": ""}', '{"model": "  "}'],
)
def test_a_missing_or_blank_model_is_refused_with_400(raw: str) -> None:
    assert refused("/api/chat", raw) == 400


@pytest.mark.parametrize(
    ("path", "raw", "embeddings", "stream"),
    [
        ("/api/chat", '{"model": "m"}', False, True),  # Ollama streams unless told not to
        ("/api/generate", '{"model": "m"}', False, True),
        ("/api/chat", '{"model": "m", "stream": null}', False, True),
        ("/api/chat", '{"model": "m", "stream": false}', False, False),
        ("/api/chat", '{"model": "m", "Stream": false}', False, False),
        ("/api/embed", '{"model": "m"}', True, False),  # embeddings never stream
        ("/api/embeddings", '{"model": "m"}', True, False),
        ("/v1/chat/completions", '{"model": "m"}', False, False),  # OpenAI: only when asked
        ("/v1/chat/completions", '{"model": "m", "stream": true}', False, True),
        ("/v1/completions", '{"model": "m"}', False, False),
        ("/v1/responses", '{"model": "m"}', False, False),
        ("/v1/messages", '{"model": "m"}', False, False),
        ("/v1/embeddings", '{"model": "m"}', True, False),
    ],
)
def test_whether_the_answer_streams(path: str, raw: str, embeddings: bool, stream: bool) -> None:
    assert parse(path, raw, embeddings=embeddings).stream is stream


@pytest.mark.parametrize("stream", ["1", "0", '"true"', "[]", "{}"])
def test_a_stream_flag_that_is_not_a_boolean_is_refused_with_400(stream: str) -> None:
    assert refused("/api/chat", '{"model": "m", "stream": ' + stream + "}") == 400


@pytest.mark.parametrize(
    ("raw", "options"),
    [
        ('{"model": "m"}', {}),
        ('{"model": "m", "options": null}', {}),
        ('{"model": "m", "options": {}}', {}),
        ('{"model": "m", "options": {"temperature": 0.5}}', {"temperature": 0.5}),
        ('{"model": "m", "OPTIONS": {"seed": 1}}', {"seed": 1}),
    ],
)
def test_the_options_map_is_read(raw: str, options: dict[str, Any]) -> None:
    assert parse("/api/chat", raw).options == options


@pytest.mark.parametrize("options", ["[]", '"x"', "1", "true"])
def test_options_that_are_not_a_map_are_refused_with_400(options: str) -> None:
    assert refused("/api/chat", '{"model": "m", "options": ' + options + "}") == 400


def test_the_body_is_kept_as_parsed() -> None:
    parsed = parse("/api/chat", '{"model": "m", "messages": [{"content": "hi"}]}')
    assert parsed.body == {"model": "m", "messages": [{"content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "raw", "cap"),
    [
        ("/api/chat", '{"model": "m"}', None),  # asks for no cap
        ("/api/chat", '{"model": "m", "options": {"num_predict": 7}}', 7),
        ("/api/chat", '{"model": "m", "options": {"num_predict": 1}}', 1),
        ("/api/chat", '{"model": "m", "options": {"num_predict": 0}}', None),
        ("/api/chat", '{"model": "m", "options": {"num_predict": -1}}', None),  # endless
        ("/api/chat", '{"model": "m", "options": {"num_predict": true}}', None),
        ("/api/chat", '{"model": "m", "options": {"num_predict": 7.5}}', None),
        ("/api/chat", '{"model": "m", "options": {"num_predict": "7"}}', None),
        # Ollama's options map is matched exactly, as Go matches map keys.
        ("/api/chat", '{"model": "m", "options": {"NUM_PREDICT": 7}}', None),
        ("/api/generate", '{"model": "m", "options": {"num_predict": 12}}', 12),
        ("/v1/chat/completions", '{"model": "m", "max_tokens": 5}', 5),
        ("/v1/chat/completions", '{"model": "m", "MAX_TOKENS": 5}', 5),  # a struct field
        ("/v1/chat/completions", '{"model": "m", "max_completion_tokens": 9}', 9),
        # OpenAI's max_completion_tokens supersedes its max_tokens ...
        ("/v1/chat/completions", '{"model": "m", "max_tokens": 5, "max_completion_tokens": 9}', 9),
        # ... unless it asks for nothing.
        ("/v1/chat/completions", '{"model": "m", "max_tokens": 5, "max_completion_tokens": 0}', 5),
        ("/v1/chat/completions", '{"model": "m", "max_tokens": 0}', None),
        ("/v1/completions", '{"model": "m", "max_tokens": 3}', 3),
        ("/v1/responses", '{"model": "m", "max_output_tokens": 11}', 11),
        ("/v1/messages", '{"model": "m", "max_tokens": 4}', 4),
    ],
)
def test_the_output_cap_the_request_asks_for(path: str, raw: str, cap: int | None) -> None:
    assert parse(path, raw).output_cap == cap


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/api/embed", '{"model": "m", "options": {"num_predict": 7}}'),
        ("/api/embeddings", '{"model": "m"}'),
        ("/v1/embeddings", '{"model": "m"}'),
        # An embeddings request generates nothing, whatever endpoint it reached.
        ("/api/chat", '{"model": "m", "options": {"num_predict": 7}}'),
    ],
)
def test_embeddings_generate_no_tokens(path: str, raw: str) -> None:
    parsed = parse(path, raw, embeddings=True)
    assert (parsed.output_cap, parsed.stream) == (0, False)
