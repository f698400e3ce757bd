"""Envoy at the edge (issue 11 §4 and the Envoy-side low findings of §11): what an
unauthenticated client can hold (connections, half-sent headers, stalled bodies) and what of
the model server leaks to clients (server header, timings, error text, the client's Host).

The limits are tested on a second Envoy beside the stack's, with small values of the same
settings (``EdgeLimits``), so the tests take seconds; the shipped values are checked in
tests/unit/test_envoyconf.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from devstack.envoyconf import EdgeLimits
from tests.e2e.test_authz_support import CHAT, UNAUTHORIZED, caller, chat
from tests.gateway_client import Gateway

HEADERS_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 6
UNAUTHORIZED_OPENAI = {
    "error": {
        "message": "invalid or missing API key",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
}
WELL_FORMED_WRONG_KEY = "nz_aaaaaaaaaaaa_" + "A" * 43
BOTH_KEYS = {"x-api-key": WELL_FORMED_WRONG_KEY, "Authorization": f"Bearer {WELL_FORMED_WRONG_KEY}"}
MIB = 1 << 20


@contextlib.contextmanager
def _second_envoy(gw: Gateway, name: str, limits: EdgeLimits) -> Iterator[str]:
    """Another Envoy on the stack's services with other edge limits: its URL."""
    proc, url = gw.stack.second_envoy(name, limits)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def edge(gw: Gateway) -> Iterator[str]:
    limits = EdgeLimits(
        request_headers_timeout_s=HEADERS_TIMEOUT_S, request_timeout_s=REQUEST_TIMEOUT_S
    )
    with _second_envoy(gw, "envoy-edge", limits) as url:
        yield url


@pytest.fixture
def few_connections(gw: Gateway) -> Iterator[str]:
    """An Envoy of its own (no connection of another test counts against its limit)."""
    limits = EdgeLimits(max_downstream_connections=MAX_CONNECTIONS)
    with _second_envoy(gw, "envoy-connections", limits) as url:
        yield url


def _connect(url: str, timeout_s: float = 5.0) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout_s)
    sock.settimeout(timeout_s)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length (what Envoy's local replies have)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes the connection within ``seconds`` (whatever it sends first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def _stalled_upload(path: str, headers: dict[str, str]) -> bytes:
    """Request headers that announce a 1 MiB body, none of which is ever sent."""
    lines = [f"POST {path} HTTP/1.1", "Host: gateway.example", f"Content-Length: {MIB}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- slow clients -----------------------------------------------------------------------------


def test_half_sent_headers_are_cut_within_request_headers_timeout(edge: str) -> None:
    with _connect(edge) as sock:
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: gateway.example\r\n")  # never ends
        started = time.monotonic()
        assert _closed_within(sock, HEADERS_TIMEOUT_S + 2.0)
        assert time.monotonic() - started >= HEADERS_TIMEOUT_S * 0.8


def test_a_stalled_upload_with_a_valid_key_ends_at_the_request_deadline(
    gw: Gateway, edge: str
) -> None:
    who = caller(gw)
    with _connect(edge) as sock:
        sock.sendall(_stalled_upload("/api/chat", who.headers) + b'{"model": "ll')
        started = time.monotonic()
        status, _, body = _read_response(sock)
        assert status == 408
        assert json.loads(body) == {"error": "request timeout"}
        assert time.monotonic() - started < REQUEST_TIMEOUT_S + 2.0


def test_the_request_deadline_does_not_cut_a_long_stream(gw: Gateway, edge: str) -> None:
    """request_timeout ends at the last byte of the request, not of the response."""
    who = caller(gw)
    body = {**CHAT, "options": {"num_predict": 30, "mock_frame_delay_ms": 100}}
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{edge}/api/chat", json=body, headers=who.headers, timeout=30
    ) as resp:
        assert resp.status_code == 200
        frames = [json.loads(line) for line in resp.iter_lines() if line]
    assert time.monotonic() - started > REQUEST_TIMEOUT_S + 0.5
    assert frames[-1]["done"] is True
    assert frames[-1]["eval_count"] == 30


def test_connection_n_plus_1_is_refused_and_n_works_again_after_one_closes(
    few_connections: str,
) -> None:
    edge = few_connections
    held = [_connect(edge) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # each one accepted and served: a 401 keeps a GET's connection
            sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: gateway.example\r\n\r\n")
            assert _read_response(sock)[0] == 401
        with _connect(edge) as extra:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                extra.sendall(b"GET /api/tags HTTP/1.1\r\nHost: gateway.example\r\n\r\n")
            assert _closed_within(extra, 3.0)
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:
            try:
                resp = httpx.get(f"{edge}/api/tags", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert resp.status_code == 401
    finally:
        for sock in held:
            sock.close()


def test_under_heap_pressure_new_requests_get_503_in_the_surface_shape(gw: Gateway) -> None:
    """A heap ceiling below what Envoy already uses: the overload manager refuses requests."""
    with _second_envoy(gw, "envoy-heap", EdgeLimits(max_heap_size_bytes=1 << 20)) as url:
        deadline = time.monotonic() + 5
        while (resp := httpx.get(f"{url}/api/tags", timeout=2)).status_code != 503:
            assert time.monotonic() < deadline, resp.status_code
            time.sleep(0.1)
        assert resp.json() == {"error": "service unavailable"}
        resp = httpx.get(f"{url}/v1/models", timeout=2)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "service_unavailable"


# -- no well-formed key: refused before the body ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/api/chat", {}, UNAUTHORIZED),
        ("/api/chat", {"Authorization": "Bearer nz_short"}, UNAUTHORIZED),
        ("/api/chat", {"Authorization": "Basic dXNlcjpwYXNz"}, UNAUTHORIZED),
        ("/api/pull", {"Authorization": "bearer " + WELL_FORMED_WRONG_KEY}, UNAUTHORIZED),
        ("/v1/chat/completions", {}, UNAUTHORIZED_OPENAI),
        ("/v1/files", {"Authorization": "Bearer"}, UNAUTHORIZED_OPENAI),
        ("/v1/messages", {"x-api-key": "sk-ant-not-ours"}, UNAUTHORIZED_OPENAI),
        ("/v1/messages", BOTH_KEYS, UNAUTHORIZED_OPENAI),
    ],
    ids=["none", "malformed", "basic", "lowercase-scheme-other-path", "openai-none",
         "openai-other-path", "anthropic-malformed", "anthropic-both"],
)  # fmt: skip
def test_no_well_formed_key_is_refused_before_the_body_without_authz(
    gw: Gateway, path: str, headers: dict[str, str], expected: dict[str, object]
) -> None:
    checks = gw.metric("authz", "authz_decisions_total")
    with _connect(gw.url) as sock:
        sock.sendall(_stalled_upload(path, headers))
        started = time.monotonic()
        status, got, body = _read_response(sock)
        assert time.monotonic() - started < 1.0  # at once, not after a body or a timeout
    assert status == 401
    assert json.loads(body) == expected
    assert got["www-authenticate"] == 'Bearer realm="neuronetz"'
    assert gw.metric("authz", "authz_decisions_total") == checks  # authz never saw it


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/v1/messages"])
def test_envoys_401_is_byte_for_byte_authz_401(gw: Gateway, path: str) -> None:
    checks = gw.metric("authz", "authz_decisions_total")
    by_envoy = httpx.post(f"{gw.url}{path}", json=CHAT)
    assert gw.metric("authz", "authz_decisions_total") == checks
    wrong = {"Authorization": f"Bearer {WELL_FORMED_WRONG_KEY}"}
    by_authz = httpx.post(f"{gw.url}{path}", json=CHAT, headers=wrong)
    assert gw.metric("authz", "authz_decisions_total") == checks + 1
    assert by_envoy.status_code == by_authz.status_code == 401
    assert by_envoy.content == by_authz.content
    for name in ("content-type", "www-authenticate", "content-length", "server"):
        assert by_envoy.headers.get(name) == by_authz.headers.get(name), name
    # Nothing else tells them apart but the connection: Envoy closes one whose body it did
    # not read.
    ignored = {"date", "connection"}
    assert set(by_envoy.headers) - ignored == set(by_authz.headers) - ignored


def test_a_well_formed_key_on_the_anthropic_header_still_reaches_authz(gw: Gateway) -> None:
    who = caller(gw)
    body = {"model": "llama3.2", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    resp = httpx.post(f"{gw.url}/v1/messages", json=body, headers={"x-api-key": who.key})
    assert resp.status_code == 200
    assert resp.json()["type"] == "message"


# -- what of the model server reaches the client, and what of the client the model server -----


def _mock_requests(gw: Gateway, marker: str) -> list[dict[str, object]]:
    seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests").json()
    return [r for r in seen if marker in json.dumps(r.get("body"))]


def test_no_upstream_server_header_or_timing_reaches_the_client(gw: Gateway) -> None:
    resp = chat(gw, caller(gw))
    assert resp.status_code == 200
    assert resp.headers["server"] == "neuronetz-gateway"
    assert "x-envoy-upstream-service-time" not in resp.headers


def test_the_model_server_sees_its_own_host_not_the_clients(gw: Gateway) -> None:
    if not gw.stack.procs.get("mock_ollama"):
        pytest.skip("needs the mock's request log")
    marker = "host-marker-1f3a"
    body = {**CHAT, "messages": [{"role": "user", "content": marker}]}
    resp = chat(gw, caller(gw), **body)
    assert resp.status_code == 200
    (seen,) = _mock_requests(gw, marker)
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["host"] == urlsplit(gw.stack.ollama_urls[0]).hostname


def test_an_upstream_5xx_reaches_the_client_as_the_generic_502(gw: Gateway) -> None:
    """The model server's text stays behind (the OpenAI surface's body: tests/unit/)."""
    if not gw.stack.procs.get("mock_ollama"):
        pytest.skip("needs the mock's failure knob")
    # Not streamed: the mock answers HTTP 500 with its own error text.
    resp = chat(gw, caller(gw), options={"num_predict": 4, "mock_error_after": 1})
    assert resp.status_code == 502
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": "upstream error"}
    assert "mock failure" not in resp.text
