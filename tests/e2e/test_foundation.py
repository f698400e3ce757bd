"""The foundation through Envoy's listener: keys, the endpoint allowlist, streaming."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from devstack.processes import envoy_bin
from tests.gateway_client import Gateway

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "say hello to me"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def key(gw: Gateway) -> str:
    return gw.new_key()


@pytest.mark.parametrize("config", sorted((ROOT / "envoy").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_envoy_config_validates(config: Path) -> None:
    result = subprocess.run(
        [envoy_bin(), "--mode", "validate", "-c", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_native_chat_streams_frame_by_frame(gw: Gateway, key: str) -> None:
    body = {**CHAT, "options": {"num_predict": 5, "mock_frame_delay_ms": 150}}
    arrivals: list[tuple[float, dict[str, object]]] = []
    with httpx.stream("POST", f"{gw.url}/api/chat", json=body, headers=bearer(key)) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        for line in resp.iter_lines():
            if line:
                arrivals.append((time.monotonic(), json.loads(line)))
    frames = [frame for _, frame in arrivals]
    assert len(frames) == 6
    assert frames[-1]["done"] is True
    assert frames[-1]["eval_count"] == 5
    assert frames[-1]["prompt_eval_count"] == 4
    # Streamed, not buffered: the first frame arrived well before the last one.
    assert arrivals[-1][0] - arrivals[0][0] > 0.5


def test_openai_chat_streams_sse(gw: Gateway, key: str) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 3}
    with httpx.stream(
        "POST", f"{gw.url}/v1/chat/completions", json=body, headers=bearer(key)
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).split()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer nz_short"},
        {"Authorization": "Bearer nz_aaaaaaaaaaaa_" + "A" * 43},
        {"Authorization": "bearer nz_aaaaaaaaaaaa_" + "A" * 43},
    ],
    ids=["none", "basic", "empty", "malformed", "wrong", "lowercase-scheme"],
)
def test_every_bad_key_gets_the_same_401(gw: Gateway, headers: dict[str, str]) -> None:
    resp = httpx.post(f"{gw.url}/api/chat", json=CHAT, headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {"error": "invalid or missing API key"}
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_wrong_secret_for_a_real_prefix_is_the_same_401(gw: Gateway, key: str) -> None:
    forged = key[: -len("A" * 43)] + "A" * 43
    resp = httpx.post(f"{gw.url}/api/chat", json=CHAT, headers=bearer(forged))
    assert resp.status_code == 401
    assert resp.json() == {"error": "invalid or missing API key"}


def test_openai_surface_errors_in_openai_shape(gw: Gateway) -> None:
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "path",
    [
        "/api/pull",
        "/API/PULL",
        "/api//pull",
        "/api/%70ull",
        "/api/./pull",
        "/api/x/../pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/delete",
        "/api/blobs/sha256:x",
        "/api/nonexistent",
        "/api/me",
        "/api/experimental/aliases",
    ],
)
def test_blocked_and_unknown_endpoints_get_one_generic_403(
    gw: Gateway, key: str, path: str
) -> None:
    resp = httpx.post(f"{gw.url}{path}", json={"model": "llama3.2"}, headers=bearer(key))
    assert resp.status_code == 403
    assert resp.json() == {"error": "forbidden"}


def test_unknown_openai_path_is_403_in_openai_shape(gw: Gateway, key: str) -> None:
    resp = httpx.post(f"{gw.url}/v1/audio/transcriptions", json={}, headers=bearer(key))
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "forbidden"


def test_upstream_never_sees_the_client_key(gw: Gateway, key: str) -> None:
    marker = f"marker-{time.monotonic_ns()}"
    body = {**CHAT, "stream": False, "messages": [{"role": "user", "content": marker}]}
    resp = httpx.post(
        f"{gw.url}/api/chat", json=body, headers={**bearer(key), "x-nz-tenant": "spoofed"}
    )
    assert resp.status_code == 200
    seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests").json()
    mine = [r for r in seen if marker in json.dumps(r.get("body"))]
    assert len(mine) == 1
    headers = mine[0]["headers"]
    assert "authorization" not in headers
    assert key not in json.dumps(headers)
    assert headers["x-nz-tenant"] != "spoofed"


def test_backend_down_is_a_503_in_the_surface_shape(gw: Gateway, key: str) -> None:
    mock = gw.managed("mock_ollama")
    mock.stop()
    try:
        native = httpx.post(f"{gw.url}/api/chat", json=CHAT, headers=bearer(key), timeout=10)
        assert native.status_code == 503  # connection refused (UF): Envoy's 503
        assert native.json() == {"error": "model server unavailable"}
        openai_body = {**CHAT, "max_tokens": 3}
        oai = httpx.post(
            f"{gw.url}/v1/chat/completions", json=openai_body, headers=bearer(key), timeout=10
        )
        assert oai.status_code == 503
        assert oai.json()["error"]["code"] == "upstream_unavailable"
    finally:
        mock.start()
    resp = httpx.post(
        f"{gw.url}/api/chat", json={**CHAT, "stream": False}, headers=bearer(key), timeout=10
    )
    assert resp.status_code == 200
