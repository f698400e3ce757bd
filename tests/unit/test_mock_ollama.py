"""The mock Ollama emits Ollama-shaped frames with counts that follow its documented rule."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from devstack.mock_ollama import (
    DEFAULT_OUTPUT_TOKENS,
    MOCK_ERROR,
    MockOllama,
    bound_port,
    create_app,
    start,
)

CHAT = {
    "model": "llama3.2",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is  the\ncapital of France?"},
    ],
}
CHAT_WORDS = 2 + 6


@pytest.fixture
async def mock() -> AsyncIterator[tuple[TestClient[Any, Any], MockOllama]]:
    state = MockOllama()
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(state)))
    await client.start_server()
    try:
        yield client, state
    finally:
        await client.close()


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event, data) per SSE message."""
    out: list[tuple[str | None, str]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event = None
        data = ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        out.append((event, data))
    return out


@pytest.mark.asyncio
async def test_chat_stream_frames_and_counts(mock: tuple[TestClient[Any, Any], MockOllama]) -> None:
    client, _ = mock
    resp = await client.post("/api/chat", json={**CHAT, "options": {"num_predict": 5}})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    frames = ndjson(await resp.text())
    assert len(frames) == 5 + 1
    for frame in frames[:-1]:
        assert list(frame) == ["model", "created_at", "message", "done"]
        assert frame["done"] is False and frame["model"] == "llama3.2"
        assert frame["message"]["role"] == "assistant"
        assert frame["created_at"].endswith("Z")
    final = frames[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == CHAT_WORDS
    assert final["eval_count"] == 5
    content = "".join(f["message"]["content"] for f in frames)
    assert len(content.split()) == final["eval_count"]
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0

    # default output length, and the non-streaming form with the same counts
    resp = await client.post("/api/chat", json={**CHAT, "stream": False})
    body = await resp.json()
    assert body["done"] is True
    assert body["eval_count"] == DEFAULT_OUTPUT_TOKENS
    assert len(body["message"]["content"].split()) == DEFAULT_OUTPUT_TOKENS
    assert body["prompt_eval_count"] == CHAT_WORDS


@pytest.mark.asyncio
async def test_generate_counts_context_and_unknown_model(
    mock: tuple[TestClient[Any, Any], MockOllama],
) -> None:
    client, _ = mock
    resp = await client.post(
        "/api/generate",
        json={
            "model": "qwen2.5:0.5b",
            "prompt": "one two three",
            "system": "four",
            "options": {"num_predict": 2},
        },
    )
    frames = ndjson(await resp.text())
    assert [f["response"] for f in frames[:-1]] == ["token0", " token1"]
    final = frames[-1]
    assert final["prompt_eval_count"] == 4 and final["eval_count"] == 2
    assert isinstance(final["context"], list) and all(isinstance(t, int) for t in final["context"])

    resp = await client.post("/api/chat", json={**CHAT, "model": "nope"})
    assert resp.status == 404
    assert await resp.json() == {"error": 'model "nope" not found, try pulling it first'}

    resp = await client.post("/api/chat", data=b'{"model": nope}')
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("invalid character 'n'")


@pytest.mark.asyncio
async def test_openai_stream_usage_only_when_asked(
    mock: tuple[TestClient[Any, Any], MockOllama],
) -> None:
    client, _ = mock
    base = {"model": "llama3.2", "messages": CHAT["messages"], "stream": True, "max_tokens": 3}

    resp = await client.post("/v1/chat/completions", json=base)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = sse(await resp.text())
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) == 3 + 1
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["system_fingerprint"] == "fp_ollama"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert len(text.split()) == 3

    resp = await client.post(
        "/v1/chat/completions", json={**base, "stream_options": {"include_usage": True}}
    )
    events = sse(await resp.text())
    assert events[-1] == (None, "[DONE]")
    usage_chunk = json.loads(events[-2][1])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": CHAT_WORDS,
        "completion_tokens": 3,
        "total_tokens": CHAT_WORDS + 3,
    }

    resp = await client.post("/v1/chat/completions", json={**base, "stream": False})
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] == 3
    assert len(body["choices"][0]["message"]["content"].split()) == 3

    resp = await client.post("/v1/chat/completions", json={**base, "model": "nope"})
    assert resp.status == 404
    err = (await resp.json())["error"]
    assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.asyncio
async def test_error_after_knob_cuts_the_stream(
    mock: tuple[TestClient[Any, Any], MockOllama],
) -> None:
    client, _ = mock
    resp = await client.post("/api/chat", json={**CHAT, "options": {"mock_error_after": 2}})
    assert resp.status == 200
    frames = ndjson(await resp.text())
    assert len(frames) == 3
    assert all(f["done"] is False for f in frames[:2])
    assert frames[-1] == {"error": MOCK_ERROR}

    resp = await client.post(
        "/api/chat", json={**CHAT, "stream": False, "options": {"mock_error_after": 2}}
    )
    assert resp.status == 500

    resp = await client.post(
        "/v1/chat/completions",
        json={
            "model": "llama3.2",
            "messages": CHAT["messages"],
            "stream": True,
            "options": {"mock_error_after": 1},
        },
    )
    events = sse(await resp.text())
    assert len(events) == 2
    assert json.loads(events[-1][1])["error"]["message"] == MOCK_ERROR


@pytest.mark.asyncio
async def test_omit_counts_knob(mock: tuple[TestClient[Any, Any], MockOllama]) -> None:
    client, _ = mock
    resp = await client.post("/api/chat", json={**CHAT, "options": {"mock_omit_counts": True}})
    final = ndjson(await resp.text())[-1]
    assert final["done"] is True
    assert "prompt_eval_count" not in final and "eval_count" not in final


@pytest.mark.asyncio
async def test_pull_adds_model_and_delete_removes_it(
    mock: tuple[TestClient[Any, Any], MockOllama],
) -> None:
    client, state = mock
    resp = await client.post("/api/pull", json={"model": "phi3:mini"})
    frames = ndjson(await resp.text())
    assert frames[0] == {"status": "pulling manifest"}
    assert frames[-1] == {"status": "success"}
    tags = await (await client.get("/api/tags")).json()
    names = [m["name"] for m in tags["models"]]
    assert "phi3:mini" in names
    assert set(tags["models"][0]) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert "phi3:mini" in state.models

    resp = await client.post("/api/chat", json={**CHAT, "model": "phi3:mini", "stream": False})
    assert resp.status == 200

    resp = await client.post("/api/pull", json={"model": "tinyllama", "stream": False})
    assert await resp.json() == {"status": "success"}
    assert "tinyllama:latest" in state.models

    resp = await client.delete("/api/delete", json={"model": "phi3:mini"})
    assert resp.status == 200
    assert "phi3:mini" not in state.models
    resp = await client.delete("/api/delete", json={"model": "phi3:mini"})
    assert resp.status == 404


@pytest.mark.asyncio
async def test_show_has_system_and_template(mock: tuple[TestClient[Any, Any], MockOllama]) -> None:
    client, _ = mock
    body = await (await client.post("/api/show", json={"model": "llama3.2"})).json()
    for key in ("system", "template", "modelfile", "parameters"):
        assert isinstance(body[key], str) and body[key]
    assert body["details"]["family"] == "llama"
    assert "completion" in body["capabilities"]
    assert body["model_info"]["general.architecture"] == "llama"

    resp = await client.post("/api/show", json={"model": "x"})
    assert resp.status == 404
    assert await resp.json() == {"error": "model 'x' not found"}


@pytest.mark.asyncio
async def test_embeddings(mock: tuple[TestClient[Any, Any], MockOllama]) -> None:
    client, _ = mock
    body = await (
        await client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a b c", "d"]})
    ).json()
    assert len(body["embeddings"]) == 2 and len(body["embeddings"][0]) == 8
    assert body["prompt_eval_count"] == 4
    again = await (
        await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a b c"})
    ).json()
    assert again["embeddings"][0] == body["embeddings"][0]

    legacy = await (
        await client.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hi"})
    ).json()
    assert list(legacy) == ["embedding"] and len(legacy["embedding"]) == 8

    oa = await (
        await client.post(
            "/v1/embeddings", json={"model": "nomic-embed-text", "input": ["x y", "z"]}
        )
    ).json()
    assert oa["object"] == "list" and [d["index"] for d in oa["data"]] == [0, 1]
    assert oa["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


@pytest.mark.asyncio
async def test_anthropic_and_responses_streams(
    mock: tuple[TestClient[Any, Any], MockOllama],
) -> None:
    client, _ = mock
    resp = await client.post(
        "/v1/messages",
        json={
            "model": "llama3.2",
            "max_tokens": 4,
            "stream": True,
            "system": "be nice",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        },
    )
    events = sse(await resp.text())
    kinds = [e for e, _ in events]
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * 4 + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start_ev = json.loads(events[0][1])
    assert start_ev["message"]["usage"]["input_tokens"] == 4
    delta = json.loads(events[-2][1])
    assert delta["usage"]["output_tokens"] == 4 and delta["usage"]["input_tokens"] == 4

    resp = await client.post(
        "/v1/responses",
        json={
            "model": "llama3.2",
            "input": "one two",
            "instructions": "three",
            "max_output_tokens": 2,
            "stream": True,
        },
    )
    events = sse(await resp.text())
    kinds = [e for e, _ in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 2
    done = json.loads(events[-1][1])
    assert done["response"]["usage"]["input_tokens"] == 3
    assert done["response"]["usage"]["output_tokens"] == 2
    assert done["response"]["usage"]["total_tokens"] == 5
    seqs = [json.loads(d)["sequence_number"] for _, d in events]
    assert seqs == list(range(len(events)))

    body = await (
        await client.post("/v1/responses", json={"model": "llama3.2", "input": "one two"})
    ).json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["usage"]["output_tokens"] == DEFAULT_OUTPUT_TOKENS


@pytest.mark.asyncio
async def test_meta_endpoints_and_request_log(
    mock: tuple[TestClient[Any, Any], MockOllama],
) -> None:
    client, state = mock
    assert await (await client.get("/")).text() == "Ollama is running"
    assert await (await client.get("/api/version")).json() == {"version": "0.12.6"}
    ps = await (await client.get("/api/ps")).json()
    assert len(ps["models"]) == len(state.models)
    assert {"expires_at", "size_vram"} <= set(ps["models"][0])
    models = await (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert {"id", "object", "created", "owned_by"} == set(models["data"][0])
    resp = await client.get("/v1/models/nope:1b")
    assert resp.status == 404
    assert (await resp.json())["error"]["param"] is None

    await client.post("/api/chat", json={**CHAT, "stream": False}, headers={"X-Trace": "abc"})
    last = state.requests[-1]
    assert (last.method, last.path) == ("POST", "/api/chat")
    assert last.headers["x-trace"] == "abc"
    assert last.body["model"] == "llama3.2"
    assert state.requests.maxlen == 200


@pytest.mark.asyncio
async def test_frame_delay_and_real_server() -> None:
    runner, state = await start("127.0.0.1", 0, MockOllama(frame_delay_s=0.02))
    try:
        url = f"http://127.0.0.1:{bound_port(runner)}"
        async with aiohttp.ClientSession() as session:
            t0 = time.perf_counter()
            async with session.post(
                f"{url}/api/chat", json={**CHAT, "options": {"num_predict": 3}}
            ) as resp:
                arrivals = []
                async for line in resp.content:
                    if line.strip():
                        arrivals.append(time.perf_counter() - t0)
            assert len(arrivals) == 4
            assert arrivals[-1] - arrivals[0] >= 3 * 0.02 * 0.8
        assert state.requests[-1].path == "/api/chat"
    finally:
        await runner.cleanup()


async def test_a_cloud_model_is_listed_the_way_ollama_lists_one(
    mock: tuple[TestClient[Any, Any], MockOllama],
) -> None:
    client, _state = mock
    tags = (await (await client.get("/api/tags")).json())["models"]
    assert [m["name"] for m in tags] == [
        "llama3.2:latest",
        "qwen2.5:0.5b",
        "nomic-embed-text:latest",
        "gpt-oss:20b-cloud",
    ]
    cloud = tags[-1]
    assert (cloud["remote_model"], cloud["remote_host"]) == (
        "gpt-oss:20b",
        "https://ollama.com:443",
    )
    assert cloud["size"] == 384  # a stub: the weights stay on Ollama's cloud
    assert cloud["details"]["format"] == ""
    assert not {"remote_model", "remote_host"} & set(tags[0])  # local models have neither
    resp = await client.post("/api/chat", json={**CHAT, "model": "gpt-oss:20b-cloud"})
    assert resp.status == 200
