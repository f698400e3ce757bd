"""Accounting through Envoy: counts from the final frame, audit rows, ledger, budgets, the
OpenAI stream the client asked for, cut streams, request rewriting, the prompt log."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.e2e.test_accounting_helpers import (
    CHAT,
    PROMPT_WORDS,
    audit_rows,
    caller,
    ledger_rows,
    until,
    used,
)
from tests.gateway_client import Gateway


def mock_requests(gw: Gateway, marker: str) -> list[dict[str, Any]]:
    seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests").json()
    return [r for r in seen if marker in json.dumps(r.get("body"))]


def marked_chat(marker: str) -> dict[str, Any]:
    return {**CHAT, "messages": [{"role": "user", "content": f"say hello to {marker}"}]}


def test_streamed_chat_is_audited_ledgered_and_debited_with_the_final_frame_counts(
    gw: Gateway,
) -> None:
    who = caller(gw, {"budget_daily": 1_000_000})
    body = {**CHAT, "options": {"num_predict": 7}}
    with httpx.stream("POST", f"{gw.url}/api/chat", json=body, headers=who.headers) as resp:
        assert resp.status_code == 200
        frames = [json.loads(line) for line in resp.iter_lines() if line]
    final = frames[-1]
    assert final["done"] is True
    expected = (final["prompt_eval_count"], final["eval_count"])
    assert expected == (PROMPT_WORDS, 7)

    (row,) = audit_rows(gw, who)
    assert (row["tokens_in"], row["tokens_out"]) == expected
    assert row["tokens_estimated"] is False
    assert row["status"] == 200
    assert row["endpoint"] == "/api/chat"
    assert row["model"] == "llama3.2:latest"
    assert str(row["tenant_id"]) == who.tenant_id
    assert row["error"] is None
    assert row["bytes_out"] > 0 and row["latency_ms"] > 0
    assert row["client_ip"] == "127.0.0.1"

    (ledger,) = ledger_rows(gw, who)
    assert (ledger["tokens_in"], ledger["tokens_out"]) == expected
    assert until(lambda: used(gw, who) == sum(expected)), used(gw, who)


def test_non_stream_and_embeddings_are_counted(gw: Gateway) -> None:
    who = caller(gw)
    resp = httpx.post(
        f"{gw.url}/api/generate",
        json={
            "model": "llama3.2",
            "prompt": "one two three",
            "stream": False,
            "options": {"num_predict": 8},
        },
        headers=who.headers,
    )
    assert resp.status_code == 200
    resp = httpx.post(
        f"{gw.url}/api/embed",
        json={"model": "nomic-embed-text", "input": ["a b c", "d e"]},
        headers=who.headers,
    )
    assert resp.status_code == 200
    rows = audit_rows(gw, who, count=2)
    counts = {r["endpoint"]: (r["tokens_in"], r["tokens_out"], r["tokens_estimated"]) for r in rows}
    assert counts["/api/generate"] == (3, 8, False)
    assert counts["/api/embed"] == (5, 0, False)


def test_openai_stream_without_include_usage_is_counted_and_the_client_gets_no_usage(
    gw: Gateway,
) -> None:
    who = caller(gw)
    marker = f"m{time.monotonic_ns()}"
    body = {**marked_chat(marker), "stream": True, "max_tokens": 6}
    with httpx.stream(
        "POST", f"{gw.url}/v1/chat/completions", json=body, headers=who.headers
    ) as resp:
        assert resp.status_code == 200
        raw = resp.read()
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in c for c in chunks), "the client did not ask for usage"
    assert all(c["choices"] for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).split() == [
        f"token{i}" for i in range(6)
    ]
    # The backend was asked for usage anyway.
    (upstream,) = mock_requests(gw, marker)
    assert upstream["body"]["stream_options"] == {"include_usage": True}

    (row,) = audit_rows(gw, who)
    assert (row["tokens_in"], row["tokens_out"], row["tokens_estimated"]) == (
        PROMPT_WORDS,
        6,
        False,
    )


def test_openai_client_streams_with_and_without_usage(gw: Gateway) -> None:
    who = caller(gw)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=who.key, max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "say hello to me"}]
    chunks = list(
        client.chat.completions.create(
            model="llama3.2", messages=messages, stream=True, max_tokens=3
        )
    )
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    with_usage = list(
        client.chat.completions.create(
            model="llama3.2",
            messages=messages,
            stream=True,
            max_tokens=3,
            stream_options={"include_usage": True},
        )
    )
    last_usage = with_usage[-1].usage
    assert last_usage is not None
    assert last_usage.completion_tokens == 3
    rows = audit_rows(gw, who, count=2)
    assert [(r["tokens_in"], r["tokens_out"]) for r in rows] == [(PROMPT_WORDS, 3)] * 2


def test_ollama_client_stream_is_counted_as_its_final_chunk_says(gw: Gateway) -> None:
    who = caller(gw)
    client = ollama.Client(host=gw.url, headers=who.headers)
    messages: list[Any] = [{"role": "user", "content": "say hello to me"}]
    chunks = list(
        client.chat(model="llama3.2", messages=messages, stream=True, options={"num_predict": 5})
    )
    final = chunks[-1]
    assert final.done and final.eval_count == 5
    (row,) = audit_rows(gw, who)
    assert (row["tokens_in"], row["tokens_out"]) == (final.prompt_eval_count, final.eval_count)


def test_openai_completions_stream_is_byte_for_byte_what_the_client_asked_for(
    gw: Gateway,
) -> None:
    who = caller(gw)
    body = {"model": "llama3.2", "prompt": "one two", "stream": True, "max_tokens": 4}
    resp = httpx.post(f"{gw.url}/v1/completions", json=body, headers=who.headers)
    events = [e for e in resp.text.split("\n\n") if e]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks)
    (row,) = audit_rows(gw, who)
    assert (row["tokens_in"], row["tokens_out"]) == (2, 4)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/v1/responses",
            {"model": "llama3.2", "input": "hello there you", "max_output_tokens": 5},
            (3, 5),
        ),
        ("/v1/messages", {**CHAT, "max_tokens": 5}, (PROMPT_WORDS, 5)),
    ],
    ids=["responses", "anthropic-messages"],
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_responses_and_messages_are_counted(
    gw: Gateway, path: str, body: dict[str, Any], expected: tuple[int, int], stream: bool
) -> None:
    who = caller(gw)
    resp = httpx.post(f"{gw.url}{path}", json={**body, "stream": stream}, headers=who.headers)
    assert resp.status_code == 200
    (row,) = audit_rows(gw, who)
    assert (row["tokens_in"], row["tokens_out"], row["tokens_estimated"]) == (*expected, False)


def test_error_frame_inside_a_200_stream_is_recorded_as_an_error(gw: Gateway) -> None:
    who = caller(gw)
    body = {**CHAT, "options": {"num_predict": 6, "mock_error_after": 2}}
    resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
    assert resp.status_code == 200
    assert json.loads(resp.text.strip().splitlines()[-1]) == {"error": "mock failure"}
    (row,) = audit_rows(gw, who)
    assert row["status"] == 200
    assert row["error"] == "mock failure"
    assert row["tokens_estimated"] is True
    assert row["tokens_out"] == 2  # the content frames that were streamed


def test_missing_counts_are_estimated_and_marked(gw: Gateway) -> None:
    who = caller(gw)
    body = {**CHAT, "stream": False, "options": {"num_predict": 4, "mock_omit_counts": True}}
    resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
    assert resp.status_code == 200
    assert "eval_count" not in resp.json()
    (row,) = audit_rows(gw, who)
    assert row["tokens_estimated"] is True
    assert row["tokens_in"] > 0 and row["tokens_out"] > 0
    (ledger,) = ledger_rows(gw, who)
    assert ledger["estimated"] is True


def test_denied_requests_get_audit_rows_too(gw: Gateway) -> None:
    who = caller(gw, allowed_models=[], allow_all=False)
    resp = httpx.post(f"{gw.url}/api/chat", json=CHAT, headers=who.headers)
    assert resp.status_code == 403
    (row,) = audit_rows(gw, who)
    assert row["status"] == 403
    assert str(row["tenant_id"]) == who.tenant_id
    assert row["tokens_in"] is None and row["tokens_out"] is None
    # No key at all: counted without a tenant (in aggregate: tests/e2e/test_audit_bounds.py).
    count = (
        "SELECT coalesce(sum(count), 0) AS n FROM gateway.audit_log"
        " WHERE status = 401 AND tenant_id IS NULL"
    )
    before = gw.sql(count)[0]["n"]
    assert httpx.post(f"{gw.url}/api/chat", json=CHAT).status_code == 401
    assert until(lambda: gw.sql(count)[0]["n"] == before + 1)


def test_client_that_disconnects_mid_stream_is_debited_and_its_slot_freed(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 1_000_000, "max_concurrent": 1})
    body = {**CHAT, "options": {"num_predict": 40, "mock_frame_delay_ms": 50}}
    with httpx.stream("POST", f"{gw.url}/api/chat", json=body, headers=who.headers) as resp:
        assert resp.status_code == 200
        seen = 0
        for line in resp.iter_lines():
            if line:
                seen += 1
            if seen == 5:
                break  # leaving the block closes the connection mid-stream
    (ledger,) = ledger_rows(gw, who)
    assert ledger["estimated"] is True
    assert 5 <= ledger["tokens_out"] < 40
    assert until(lambda: used(gw, who) == ledger["tokens_in"] + ledger["tokens_out"])
    # The slot is free again: with max_concurrent 1 a new request is admitted.
    again = httpx.post(
        f"{gw.url}/api/chat",
        json={**CHAT, "stream": False, "options": {"num_predict": 1}},
        headers=who.headers,
    )
    assert again.status_code == 200
    (row, _) = audit_rows(gw, who, count=2)
    assert row["tokens_out"] == ledger["tokens_out"]


def test_backend_reset_mid_stream_is_debited_from_what_was_seen(gw: Gateway) -> None:
    """A raw client that half-reads and resets the socket (RST, not FIN)."""
    who = caller(gw, {"budget_daily": 1_000_000})
    payload = json.dumps({**CHAT, "options": {"num_predict": 30, "mock_frame_delay_ms": 40}})
    host, port = gw.url.removeprefix("http://").split(":")
    request = (
        f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {who.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n{payload}"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request.encode())
        got = b""
        while got.count(b'"done":false') < 3:
            got += sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    (ledger,) = ledger_rows(gw, who)
    assert ledger["estimated"] is True and 3 <= ledger["tokens_out"] < 30


def test_request_rewriting_reaches_the_backend(gw: Gateway) -> None:
    who = caller(gw, {"keep_alive_min_s": 120, "keep_alive_max_s": 600, "default_max_tokens": 9})
    marker = f"m{time.monotonic_ns()}"
    body = {**marked_chat(marker), "stream": False, "keep_alive": 0}
    resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
    assert resp.status_code == 200
    assert resp.json()["eval_count"] == 9  # the tenant's default output cap
    (upstream,) = mock_requests(gw, marker)
    assert upstream["body"]["keep_alive"] == 120  # keep_alive 0 would unload a shared model
    assert upstream["body"]["options"]["num_predict"] == 9
    assert int(upstream["headers"]["content-length"]) == len(json.dumps(upstream["body"]).encode())

    marker = f"m{time.monotonic_ns()}"
    body = {**marked_chat(marker), "stream": False, "keep_alive": "-1"}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=who.headers)
    assert resp.status_code == 200
    assert resp.json()["usage"]["completion_tokens"] == 9
    (upstream,) = mock_requests(gw, marker)
    assert upstream["body"]["keep_alive"] == 600
    assert upstream["body"]["max_tokens"] == 9


def test_prompt_log_is_opt_in_per_key(gw: Gateway) -> None:
    logged = caller(gw, prompt_log=True)
    quiet = caller(gw)
    for who in (logged, quiet):
        body = {**CHAT, "stream": False, "options": {"num_predict": 3}}
        assert httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers).status_code == 200
    audit_rows(gw, quiet)  # accounting has seen the quiet key's request (fails if not)
    rows = until(
        lambda: gw.sql("SELECT * FROM gateway.prompt_log WHERE key_id = $1::uuid", logged.key_id)
    )
    assert len(rows) == 1
    assert json.loads(rows[0]["prompt"])["messages"] == CHAT["messages"]
    assert rows[0]["completion"] == "token0 token1 token2"
    assert rows[0]["expires_at"] > rows[0]["created_at"]
    # Nothing to wait for: give a prompt row of the quiet key every chance to land (five
    # flushes of the prompt-log batch, NZ_AUDIT_FLUSH_INTERVAL_S = 0.2 s), then look.
    time.sleep(1.0)
    quiet_rows = gw.sql("SELECT 1 FROM gateway.prompt_log WHERE key_id = $1::uuid", quiet.key_id)
    assert quiet_rows == []


def test_prompt_log_sweeper_deletes_expired_rows(gw: Gateway) -> None:
    import asyncio

    import asyncpg

    from accounting import promptlog

    who = caller(gw)
    gw.sql(
        "INSERT INTO gateway.prompt_log (request_id, expires_at, tenant_id, prompt)"
        " VALUES ($1, now() - interval '1 second', $2::uuid, '{}'), "
        " ($3, now() + interval '1 hour', $2::uuid, '{}')",
        f"expired-{who.key_id}",
        who.tenant_id,
        f"live-{who.key_id}",
    )

    async def sweep() -> int:
        pool = await asyncpg.create_pool(gw.stack.database_url, min_size=1, max_size=1)
        try:
            return await promptlog.sweep_once(pool)
        finally:
            await pool.close()

    assert asyncio.run(sweep()) >= 1
    left = gw.sql(
        "SELECT request_id FROM gateway.prompt_log WHERE tenant_id = $1::uuid", who.tenant_id
    )
    assert [r["request_id"] for r in left] == [f"live-{who.key_id}"]


def test_200_concurrent_streams_give_200_audit_rows_and_exact_counters(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 10_000_000})

    def one(i: int) -> tuple[int, int]:
        n = 1 + i % 7
        body = {**CHAT, "options": {"num_predict": n}}
        with httpx.Client(timeout=30) as client:
            resp = client.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
        assert resp.status_code == 200, resp.text
        final = json.loads(resp.text.strip().splitlines()[-1])
        return final["prompt_eval_count"], final["eval_count"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(200)))
    expected = sum(a + b for a, b in results)
    rows = audit_rows(gw, who, count=200, timeout_s=20)
    assert len(rows) == 200
    assert len({r["request_id"] for r in rows}) == 200
    assert sum(r["tokens_in"] + r["tokens_out"] for r in rows) == expected
    ledger = ledger_rows(gw, who, count=200, timeout_s=20)
    assert sum(r["tokens_in"] + r["tokens_out"] for r in ledger) == expected
    assert until(lambda: used(gw, who) == expected), (used(gw, who), expected)
