"""The mock Ollama plays one of several backends: its own models, a name a test can see, and a
fault (an error status, a slow answer) a test turns on and off; the dev stack starts several."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from devstack.mock_ollama import MockOllama, create_app, hosted_models
from devstack.processes import free_port, port_open
from devstack.stack import MockBackend, Stack, StackConfig

Client = TestClient[Any, Any]
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture
async def named() -> AsyncIterator[tuple[Client, MockOllama]]:
    state = MockOllama(models=hosted_models(["llama3.2", "mistral:7b"]), name="gpu")
    client: Client = TestClient(TestServer(create_app(state)))
    await client.start_server()
    try:
        yield client, state
    finally:
        await client.close()


def test_hosted_models_are_exactly_the_names_given() -> None:
    models = hosted_models(["llama3.2", " mistral:7b", "library/qwen2.5:0.5b", "llama3.2:latest"])
    assert list(models) == ["llama3.2:latest", "mistral:7b", "qwen2.5:0.5b"]
    assert models["llama3.2:latest"].parameter_size == "3.2B"  # the default entry, kept
    assert models["mistral:7b"].family == "llama"  # a pulled one


async def test_info_names_the_backend_and_its_models(named: tuple[Client, MockOllama]) -> None:
    client, _ = named
    resp = await client.get("/_mock/info")
    assert await resp.json() == {"name": "gpu", "models": ["llama3.2:latest", "mistral:7b"]}
    tags = await (await client.get("/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "mistral:7b"]


async def test_every_answer_says_which_backend_sent_it(named: tuple[Client, MockOllama]) -> None:
    client, _ = named
    ok = await client.post("/api/chat", json=CHAT)
    streamed = await client.post("/api/chat", json={**CHAT, "stream": True})
    await streamed.read()
    unknown_route = await client.get("/nowhere")
    assert [r.headers.get("x-mock-backend") for r in (ok, streamed, unknown_route)] == ["gpu"] * 3
    assert unknown_route.status == 404


async def test_an_unnamed_mock_sends_no_backend_header() -> None:
    client: Client = TestClient(TestServer(create_app(MockOllama())))
    await client.start_server()
    try:
        resp = await client.get("/api/version")
        assert "x-mock-backend" not in resp.headers
        assert await (await client.get("/_mock/info")).json() == {
            "name": "",
            "models": [
                "llama3.2:latest",
                "qwen2.5:0.5b",
                "nomic-embed-text:latest",
                "gpt-oss:20b-cloud",
            ],
        }
    finally:
        await client.close()


async def test_a_model_the_backend_does_not_host_is_ollamas_404(
    named: tuple[Client, MockOllama],
) -> None:
    client, _ = named
    native = await client.post("/api/chat", json={**CHAT, "model": "qwen2.5:0.5b"})
    assert native.status == 404
    assert await native.json() == {"error": 'model "qwen2.5:0.5b" not found, try pulling it first'}
    body = {"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}]}
    openai = await client.post("/v1/chat/completions", json=body)
    assert openai.status == 404
    assert await openai.json() == {
        "error": {
            "message": 'model "qwen2.5:0.5b" not found, try pulling it first',
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }


async def test_a_fault_status_fails_every_request_but_still_records_it(
    named: tuple[Client, MockOllama],
) -> None:
    client, state = named
    set_ = await client.post("/_mock/fault", json={"status": 500})
    assert await set_.json() == {"status": 500, "delay_s": 0.0, "paths": []}
    native = await client.post("/api/chat", json={**CHAT, "messages": [{"content": "marker-1"}]})
    assert (native.status, await native.json()) == (500, {"error": "mock fault"})
    assert native.headers["x-mock-backend"] == "gpu"
    tags = await client.get("/api/tags")
    assert tags.status == 500
    openai = await client.post("/v1/chat/completions", json=CHAT)
    assert (await openai.json())["error"]["message"] == "mock fault"  # the surface's own shape
    seen = await (await client.get("/_mock/requests")).json()
    assert any("marker-1" in json.dumps(r["body"]) for r in seen)
    assert (await client.get("/_mock/info")).status == 200  # the controls keep working

    await client.post("/_mock/fault", json={})
    assert (await client.post("/api/chat", json=CHAT)).status == 200
    assert state.fault.status is None


async def test_a_fault_delay_holds_back_the_response_headers(
    named: tuple[Client, MockOllama],
) -> None:
    client, _ = named
    await client.post("/_mock/fault", json={"delay_s": 0.3})
    started = time.monotonic()
    resp = await client.post("/api/chat", json={**CHAT, "stream": True})  # returns at headers
    assert time.monotonic() - started >= 0.3
    assert resp.status == 200
    await resp.read()
    started = time.monotonic()
    await client.get("/_mock/info")  # never slowed: a test can always heal the mock
    assert time.monotonic() - started < 0.3

    await client.post("/_mock/fault", json={"delay_s": 0.2, "status": 503})
    started = time.monotonic()
    slow_failure = await client.get("/api/tags")
    assert (slow_failure.status, time.monotonic() - started >= 0.2) == (503, True)

    await client.post("/_mock/fault", json={})
    started = time.monotonic()
    assert (await client.get("/api/tags")).status == 200
    assert time.monotonic() - started < 0.2


async def test_a_fault_on_paths_breaks_those_and_leaves_discovery_answering(
    named: tuple[Client, MockOllama],
) -> None:
    client, _ = named
    chat_only = {"status": 500, "paths": ["/api/chat", "/v1/chat/completions"]}
    set_ = await client.post("/_mock/fault", json=chat_only)
    assert await set_.json() == {**chat_only, "delay_s": 0.0}
    assert (await client.post("/api/chat", json=CHAT)).status == 500
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 500
    tags = await client.get("/api/tags")
    assert tags.status == 200 and (await tags.json())["models"]
    assert (await client.post("/api/generate", json={"model": CHAT["model"]})).status == 200


@pytest.mark.parametrize(
    "body",
    [
        {"status": 200},
        {"status": "500"},
        {"status": True},
        {"delay_s": -1},
        {"slow": 1},
        [500],
        {"status": 500, "paths": "/api/chat"},
        {"status": 500, "paths": ["api/chat"]},
        {"status": 500, "paths": ["/_mock/info"]},
    ],
)
async def test_a_bad_fault_is_refused_and_changes_nothing(
    named: tuple[Client, MockOllama], body: Any
) -> None:
    client, _ = named
    resp = await client.post("/_mock/fault", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("fault: ")
    assert (await client.post("/api/chat", json=CHAT)).status == 200


def test_the_cli_serves_the_models_and_name_it_is_given(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "devstack.mock_ollama", "--port", str(port)]
    argv += ["--name", "cpu", "--models", "qwen2.5:0.5b,tinyllama"]
    log = (tmp_path / "mock.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, "mock did not start"
            time.sleep(0.05)
        info = httpx.get(f"http://127.0.0.1:{port}/_mock/info")
        assert info.json() == {"name": "cpu", "models": ["qwen2.5:0.5b", "tinyllama:latest"]}
        assert info.headers["x-mock-backend"] == "cpu"
        missing = httpx.post(f"http://127.0.0.1:{port}/api/chat", json=CHAT)
        assert missing.status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def two_mocks(tmp_path: Path) -> Iterator[Stack]:
    """Only the stack's backends (no database, no Envoy): the mocks and the backends file."""
    config = StackConfig(
        work_dir=tmp_path,
        mocks=[MockBackend("gpu", ("llama3.2",)), MockBackend("cpu", ("qwen2.5:0.5b",), 1)],
    )
    stack = Stack(config)
    stack.work_dir = tmp_path
    (tmp_path / "logs").mkdir()
    try:
        stack._start_backends()
        yield stack
    finally:
        stack.stop()


def test_the_stack_starts_one_mock_per_backend_and_names_them_in_a_file(
    two_mocks: Stack,
) -> None:
    stack = two_mocks
    assert list(stack.backends) == ["gpu", "cpu"]
    assert stack.ollama_urls == list(stack.backends.values())
    written = yaml.safe_load((stack.work_dir / "backends.yaml").read_text())
    assert written == {
        "backends": [
            {"name": "gpu", "url": stack.backends["gpu"], "priority": 0},
            {"name": "cpu", "url": stack.backends["cpu"], "priority": 1},
        ]
    }
    env = stack.service_env()
    assert env["NZ_BACKENDS_FILE"] == str(stack.work_dir / "backends.yaml")
    assert env["NZ_OLLAMA_URLS"] == ",".join(stack.backends.values())
    assert "mock_frame_delay_ms" in env["NZ_INERT_OPTIONS"]
    info = httpx.get(f"{stack.backends['cpu']}/_mock/info").json()
    assert info == {"name": "cpu", "models": ["qwen2.5:0.5b"]}


def test_a_backend_stopped_comes_back_on_its_port_with_its_models(two_mocks: Stack) -> None:
    stack = two_mocks
    url = stack.backends["gpu"]
    stack.stop_backend("gpu")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_mock/info")
    assert httpx.get(f"{stack.backends['cpu']}/api/version").status_code == 200
    stack.start_backend("gpu")
    assert httpx.get(f"{url}/_mock/info").json() == {"name": "gpu", "models": ["llama3.2:latest"]}
    with pytest.raises(KeyError):
        stack.stop_backend("ollama")


def test_mock_backends_need_distinct_names(tmp_path: Path) -> None:
    stack = Stack(StackConfig(mocks=[MockBackend("a"), MockBackend("a")]))
    stack.work_dir = tmp_path
    with pytest.raises(ValueError, match="named twice: a"):
        stack._start_backends()
