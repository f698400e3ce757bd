"""The hot path's Envoy mechanisms (issue 10): accounting observes responses without Envoy
waiting for it, and only requests whose body changes take a mutating ext_proc round trip.

What Envoy sent accounting is read from accounting's own counter of ext_proc messages, by
filter (``nz.accounting`` observes, ``nz.rewrite`` rewrites request bodies, ``nz.strip`` takes
the usage chunk out of OpenAI streams) — the numbers a Prometheus scrape shows.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx

from tests.e2e.test_accounting_helpers import (
    CHAT,
    accounting_answering,
    audit_rows,
    caller,
    ledger_rows,
    until,
)
from tests.gateway_client import Gateway

MESSAGES = "accounting_ext_proc_messages_total"


def messages(gw: Gateway, stream: str, kind: str) -> float:
    return gw.metric("accounting", MESSAGES, stream=stream, kind=kind)


def test_a_request_that_needs_no_rewrite_makes_no_request_body_call(gw: Gateway) -> None:
    who = caller(gw, {"default_max_tokens": 6})
    bodies = messages(gw, "rewrite", "request_body")
    observed = messages(gw, "observe", "request_headers")
    # It sets its own output cap, below the tenant's, and no keep_alive: nothing to change.
    plain = {**CHAT, "stream": False, "options": {"num_predict": 3}}
    resp = httpx.post(f"{gw.url}/api/chat", json=plain, headers=who.headers)
    assert resp.status_code == 200 and resp.json()["eval_count"] == 3
    assert messages(gw, "rewrite", "request_body") == bodies
    assert until(lambda: messages(gw, "observe", "request_headers") == observed + 1)
    (row,) = audit_rows(gw, who)
    assert (row["tokens_out"], row["tokens_estimated"]) == (3, False)
    # Without a cap of its own the request is rewritten: one request-body round trip, and
    # the backend runs under the tenant's default cap.
    capped = {**CHAT, "stream": False}
    resp = httpx.post(f"{gw.url}/api/chat", json=capped, headers=who.headers)
    assert resp.status_code == 200 and resp.json()["eval_count"] == 6
    assert messages(gw, "rewrite", "request_body") == bodies + 1


def test_only_an_openai_stream_without_include_usage_is_stripped(gw: Gateway) -> None:
    who = caller(gw)
    stripped = messages(gw, "strip", "response_body")
    asked = {**CHAT, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    with_usage = httpx.post(f"{gw.url}/v1/chat/completions", json=asked, headers=who.headers)
    assert with_usage.status_code == 200 and '"usage"' in with_usage.text
    assert messages(gw, "strip", "response_body") == stripped
    plain = {k: v for k, v in asked.items() if k != "stream_options"}
    without = httpx.post(f"{gw.url}/v1/chat/completions", json=plain, headers=who.headers)
    assert without.status_code == 200 and '"usage"' not in without.text
    assert without.text.rstrip().endswith("data: [DONE]")
    assert messages(gw, "strip", "response_body") > stripped
    # Both counted exactly: accounting observed the backend's usage chunk either way.
    rows = audit_rows(gw, who, count=2)
    assert [(r["tokens_out"], r["tokens_estimated"]) for r in rows] == [(2, False), (2, False)]


def test_a_stream_reaches_its_client_while_accounting_is_paused(gw: Gateway) -> None:
    """SIGSTOP: accounting reads nothing. The stream is delivered all the same (no byte waits
    for accounting), new inference is refused within a second (nothing would account for
    it), and when accounting resumes the stream is counted exactly."""
    who = caller(gw)
    proc = gw.managed("accounting")
    assert proc.popen is not None
    body = {**CHAT, "options": {"num_predict": 20, "mock_frame_delay_ms": 20}}
    paused_at = 0.0
    try:
        with httpx.stream("POST", f"{gw.url}/api/chat", json=body, headers=who.headers) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            frames = [next(lines)]
            os.killpg(proc.popen.pid, signal.SIGSTOP)
            paused_at = time.monotonic()
            frames += [line for line in lines if line]
        delivered_in = time.monotonic() - paused_at
        final = json.loads(frames[-1])
        assert len(frames) == 21 and final["done"] is True and final["eval_count"] == 20
        assert delivered_in < 5.0  # 19 frames at 20 ms: not held until accounting resumes
        time.sleep(max(0.0, 1.0 - (time.monotonic() - paused_at)))
        refused = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)
        assert refused.status_code == 503
        assert refused.json() == {"error": "service unavailable"}
        assert ledger_rows(gw, who, count=0) == []  # nothing accounted while paused
    finally:
        os.killpg(proc.popen.pid, signal.SIGCONT)
    (ledger,) = ledger_rows(gw, who)
    assert (ledger["tokens_out"], ledger["estimated"]) == (20, False)
    accounting_answering(gw)
    rows = audit_rows(gw, who, count=2)
    assert sorted((r["status"], r["tokens_out"]) for r in rows) == [(200, 20), (503, None)]
