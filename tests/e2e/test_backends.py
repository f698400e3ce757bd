"""Several Ollama backends (issue 13): three mocks with disjoint and overlapping models behind
one gateway. Each request lands on the highest-priority live backend hosting its model (the
mocks record it, the audit row names it); a 500, a slow backend or a dead one moves it to the
next with no client-visible error; a stream cut after its first byte is never continued by
another backend; a model on no live backend is the generic 403 of an unknown one.

The module's stack shares the session's PostgreSQL and Redis; discovery runs every second with
3 s lists, and a backend has 3 s for its first byte. Tests that kill a backend come last: Envoy
then keeps it out for 30 s (outlier detection)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from devstack import envoyconf
from devstack.stack import MockBackend, Stack
from tests.e2e.test_accounting_helpers import audit_rows, ledger_rows
from tests.gateway_client import Caller, Gateway, beside
from tests.polling import poll

GPU_SECRET = "Bearer gpu-proxy-credential-7f3a"
MOCKS = [
    MockBackend("gpu", ("llama3.2", "qwen2.5:0.5b"), 0, headers=(("authorization", GPU_SECRET),)),
    MockBackend("cpu", ("llama3.2", "qwen2.5:0.5b", "nomic-embed-text"), 1),
    MockBackend("spare", ("llama3.2", "mistral"), 2),
]
# A backend's time to its first byte before the next is tried: long enough that a loaded CI
# machine's mock answers in time (a try that times out counts towards ejecting the backend).
TRY_TIMEOUT_S = 3.0
# The paths a broken or slow backend fails on in the failover tests: inference, not discovery's
# /api/tags (a backend discovery cannot reach drops out of routing by itself, after its TTL).
CHAT_PATHS = ["/api/chat", "/v1/chat/completions"]


@pytest.fixture(scope="module")
def many(stack: Stack) -> Iterator[Gateway]:
    with beside(
        stack,
        mocks=MOCKS,
        extra_env={"NZ_DISCOVERY_INTERVAL_S": "1", "NZ_DISCOVERY_TTL_S": "3"},
        edge=envoyconf.EdgeLimits(backend_try_timeout_s=TRY_TIMEOUT_S),
    ) as running:
        yield running


@pytest.fixture
def who(many: Gateway) -> Caller:
    return many.caller()


@pytest.fixture(autouse=True)
def healthy_mocks(many: Gateway) -> Iterator[None]:
    yield
    for name in many.stack.backends:
        many.stack.start_backend(name)
        fault(many, name, {})


def fault(gw: Gateway, backend: str, spec: dict[str, Any]) -> None:
    url = gw.stack.backends[backend]
    with contextlib.suppress(httpx.ConnectError):  # stopped: nothing to reset
        httpx.post(f"{url}/_mock/fault", json=spec, timeout=5).raise_for_status()


def seen(gw: Gateway, backend: str, who: Caller, path: str = "") -> list[dict[str, Any]]:
    """The requests of ``who`` this backend received (the mock's own log)."""
    log = httpx.get(f"{gw.stack.backends[backend]}/_mock/requests", timeout=5).json()
    return [
        r
        for r in log
        if r["headers"].get("x-nz-key-prefix") == who.prefix and (not path or r["path"] == path)
    ]


def answered(gw: Gateway, who: Caller, model: str, status: int) -> httpx.Response | None:
    """The chat's response when it has ``status`` (for polls)."""
    resp = chat(gw, who, model)
    return resp if resp.status_code == status else None


def chat(gw: Gateway, who: Caller, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    return httpx.post(f"{gw.url}/api/chat", headers=who.headers, json=body | extra, timeout=30)


def test_each_model_lands_on_the_highest_priority_backend_that_hosts_it(
    many: Gateway, who: Caller
) -> None:
    expected = {"llama3.2": "gpu", "qwen2.5:0.5b": "gpu", "mistral": "spare"}
    for model, backend in expected.items():
        resp = chat(many, who, model)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-mock-backend"] == backend
        assert resp.json()["model"] == model
    embedded = httpx.post(
        f"{many.url}/api/embed",
        headers=who.headers,
        json={"model": "nomic-embed-text", "input": "hello"},
        timeout=30,
    )
    assert embedded.status_code == 200, embedded.text
    assert embedded.headers["x-mock-backend"] == "cpu"
    # Each request reached exactly the one backend: the mocks' own logs.
    assert [r["body"]["model"] for r in seen(many, "gpu", who)] == ["llama3.2", "qwen2.5:0.5b"]
    assert [r["body"]["model"] for r in seen(many, "cpu", who)] == ["nomic-embed-text"]
    assert [r["body"]["model"] for r in seen(many, "spare", who)] == ["mistral"]
    rows = audit_rows(many, who, count=4)
    assert sorted((r["model"], r["backend"], r["attempts"]) for r in rows) == [
        ("llama3.2:latest", "gpu", 1),
        ("mistral:latest", "spare", 1),
        ("nomic-embed-text:latest", "cpu", 1),
        ("qwen2.5:0.5b", "gpu", 1),
    ]


def test_a_backends_credentials_reach_it_alone_and_the_clients_key_reaches_none(
    many: Gateway, who: Caller
) -> None:
    for model in ("llama3.2", "mistral"):
        assert chat(many, who, model).status_code == 200
    (gpu,) = seen(many, "gpu", who)
    (spare,) = seen(many, "spare", who)
    assert gpu["headers"]["authorization"] == GPU_SECRET
    assert "authorization" not in spare["headers"]
    for request in (gpu, spare):
        assert who.key not in str(request["headers"])
        assert "x-nz-model" not in request["headers"]  # Envoy's routing header stays inside


def test_a_client_cannot_steer_its_request_to_another_backend(many: Gateway, who: Caller) -> None:
    steered = {**who.headers, "x-nz-model": "mistral:latest"}
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    resp = httpx.post(f"{many.url}/api/chat", headers=steered, json=body, timeout=30)
    assert (resp.status_code, resp.headers["x-mock-backend"]) == (200, "gpu")
    # A request without a model (Ollama's version) goes to the first backend, header or not.
    version = httpx.get(f"{many.url}/api/version", headers=steered, timeout=30)
    assert (version.status_code, version.headers["x-mock-backend"]) == (200, "gpu")
    assert seen(many, "spare", who) == []


def test_listings_are_the_union_of_the_backends_filtered_to_the_caller(many: Gateway) -> None:
    allowed = ["llama3.2", "mistral", "nomic-embed-text"]
    who = many.caller(tenant={"allow_all": False, "allowed_models": allowed})
    tags = httpx.get(f"{many.url}/api/tags", headers=who.headers, timeout=30).json()
    assert sorted(m["name"] for m in tags["models"]) == [
        "llama3.2:latest",
        "mistral:latest",
        "nomic-embed-text:latest",
    ]
    models = httpx.get(f"{many.url}/v1/models", headers=who.headers, timeout=30).json()
    assert sorted(m["id"] for m in models["data"]) == [
        "llama3.2:latest",
        "mistral:latest",
        "nomic-embed-text:latest",
    ]
    # /api/show goes to a backend hosting the model, through Envoy, without its secrets.
    shown = httpx.post(
        f"{many.url}/api/show", headers=who.headers, json={"model": "mistral"}, timeout=30
    )
    assert shown.status_code == 200, shown.text
    assert shown.headers["x-mock-backend"] == "spare"
    assert {"details", "modified_at"} <= set(shown.json())
    assert not {"system", "template", "modelfile"} & set(shown.json())
    refused = httpx.post(
        f"{many.url}/api/show", headers=who.headers, json={"model": "qwen2.5:0.5b"}, timeout=30
    )
    assert refused.status_code == 403


def test_a_backend_answering_500_hands_the_request_to_the_next_one(
    many: Gateway, who: Caller
) -> None:
    # gpu's chat is broken; its /api/tags still answers, so discovery keeps it live.
    fault(many, "gpu", {"status": 500, "paths": CHAT_PATHS})
    resp = chat(many, who, "llama3.2")
    assert (resp.status_code, resp.headers["x-mock-backend"]) == (200, "cpu")
    # A stream, through Ollama's own client: one whole answer, from the live backend.
    client = ollama.Client(host=many.url, headers=who.headers)
    parts = list(
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert parts[-1].done is True
    words = "".join(p.message.content or "" for p in parts).split()
    assert words == [f"token{i}" for i in range(len(words))] and words
    # OpenAI's client too.
    oai = openai.OpenAI(base_url=f"{many.url}/v1", api_key=who.key, max_retries=0)
    answer = oai.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content
    assert len(seen(many, "gpu", who)) == 3  # each tried gpu first
    assert len(seen(many, "cpu", who)) == 3  # and got its answer from cpu
    rows = audit_rows(many, who, count=3)
    assert [(r["status"], r["backend"], r["attempts"]) for r in rows] == [(200, "cpu", 2)] * 3
    assert many.metric("accounting", "accounting_backend_failovers_total", backend="cpu") >= 3
    fault(many, "gpu", {})
    assert chat(many, who, "llama3.2").headers["x-mock-backend"] == "gpu"  # back at once


def test_a_slow_backend_is_given_up_before_its_first_byte(many: Gateway, who: Caller) -> None:
    fault(many, "gpu", {"delay_s": 3 * TRY_TIMEOUT_S, "paths": CHAT_PATHS})
    started = time.monotonic()
    resp = chat(many, who, "qwen2.5:0.5b")
    elapsed = time.monotonic() - started
    assert (resp.status_code, resp.headers["x-mock-backend"]) == (200, "cpu")
    assert TRY_TIMEOUT_S <= elapsed < 3 * TRY_TIMEOUT_S
    (row,) = audit_rows(many, who)
    assert (row["backend"], row["attempts"]) == ("cpu", 2)


def test_a_model_pulled_on_a_backend_is_routed_there_within_a_discovery_period(
    many: Gateway, who: Caller
) -> None:
    spare = many.stack.backends["spare"]
    unknown = chat(many, who, "phi3")
    assert unknown.status_code == 403
    httpx.post(f"{spare}/api/pull", json={"model": "phi3", "stream": False}, timeout=10)
    try:
        resp = poll(
            lambda: answered(many, who, "phi3", 200),
            timeout_s=4,
            what="phi3 routable after its pull",
        )
        assert resp.headers["x-mock-backend"] == "spare"
    finally:
        httpx.request("DELETE", f"{spare}/api/delete", json={"model": "phi3"}, timeout=10)
    gone = poll(
        lambda: answered(many, who, "phi3", 403),
        timeout_s=4,
        what="phi3 refused after its delete",
    )
    assert gone.content == unknown.content


def test_an_error_after_the_first_byte_ends_the_stream_with_the_error_frame_and_no_failover(
    many: Gateway, who: Caller
) -> None:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 6, "mock_error_after": 2},
    }
    resp = httpx.post(f"{many.url}/api/chat", headers=who.headers, json=body, timeout=30)
    assert (resp.status_code, resp.headers["x-mock-backend"]) == (200, "gpu")
    frames = [json.loads(line) for line in resp.text.splitlines()]
    assert [f["message"]["content"] for f in frames[:-1]] == ["token0", " token1"]
    assert frames[-1] == {"error": "mock failure"}  # Ollama's own error frame, passed through
    assert seen(many, "cpu", who) == []
    (row,) = audit_rows(many, who)
    assert (row["backend"], row["attempts"], row["tokens_out"]) == ("gpu", 1, 2)


def test_killing_a_backend_moves_new_requests_to_the_next_with_no_client_error(
    many: Gateway, who: Caller
) -> None:
    many.stack.stop_backend("gpu")
    answered = [chat(many, who, model) for model in ("llama3.2", "qwen2.5:0.5b") * 4]
    assert [(r.status_code, r.headers.get("x-mock-backend")) for r in answered] == [
        (200, "cpu")
    ] * 8
    assert len(seen(many, "cpu", who)) == 8
    # 5 consecutive failures took gpu out (for 30 s; back after that, half-open).
    gpu = many.stack.backends["gpu"].removeprefix("http://").replace(":", "_")
    stats = many.envoy_stats("^cluster.ollama.")
    assert stats["cluster.ollama.outlier_detection.ejections_enforced_consecutive_5xx"] >= 1
    assert stats[f"cluster.ollama.endpoint.{gpu}.healthy"] == 0


def test_a_model_on_no_live_backend_is_the_generic_403_of_an_unknown_one(
    many: Gateway, who: Caller
) -> None:
    unknown = chat(many, who, "no-such-model")
    assert unknown.status_code == 403
    many.stack.stop_backend("spare")  # mistral's only backend
    gone = poll(
        lambda: answered(many, who, "mistral", 403),
        timeout_s=8,  # the list's 3 s TTL after its last read, and a discovery round
        what="mistral refused once its only backend is gone",
    )
    assert (gone.content, gone.headers["content-type"]) == (
        unknown.content,
        unknown.headers["content-type"],
    )


def test_a_stream_cut_after_its_first_byte_is_never_continued_elsewhere(
    many: Gateway, who: Caller
) -> None:
    probe = many.caller()  # its requests stay out of `who`'s logs and rows
    poll(
        lambda: answered(many, probe, "mistral", 200),
        timeout_s=8,
        what="mistral routable again once spare is back",
    )
    client = ollama.Client(
        host=many.url, headers={**who.headers, "x-mock-frame-delay-ms": "150"}, timeout=30
    )
    stream = client.chat(model="mistral", messages=[{"role": "user", "content": "hi"}], stream=True)
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):  # the body ends before its last chunk
        for part in stream:
            received.append(part.message.content or "")
            if len(received) == 3:
                many.stack.stop_backend("spare")
    assert 3 <= len(received) < 20
    assert "".join(received).split() == [f"token{i}" for i in range(len(received))]
    for other in ("gpu", "cpu"):
        assert [r for r in seen(many, other, who) if r["path"] == "/api/chat"] == []
    (row,) = audit_rows(many, who)
    assert (row["backend"], row["model"]) == ("spare", "mistral:latest")
    (ledger,) = ledger_rows(many, who)
    assert ledger["tokens_out"] >= 3  # what reached the client is charged
