"""Request-level visibility (issue 15 §3): every response names its request (``x-request-id``),
the audit row says why a request was refused without the client learning more than before,
and Envoy's own JSON access log on stdout has a line for every request even while accounting
is down.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from gateway.errorbodies import error_body
from gateway.signals import DENY_MODE_KEY
from tests.e2e.test_accounting_helpers import CHAT, audit_rows, redis_client, wait_for
from tests.gateway_client import Caller, Gateway, beside
from tests.polling import poll


def access_lines(log: Path) -> dict[str, dict[str, Any]]:
    """Envoy's JSON access-log lines in its stdout (the stack's envoy log, which also holds
    Envoy's own warnings), by request id."""
    found: dict[str, dict[str, Any]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            found[record["request_id"]] = record
    return found


def logged(log: Path, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The access-log lines of ``request_ids``, once Envoy has written them all."""

    def every() -> tuple[dict[str, dict[str, Any]]] | None:
        lines = access_lines(log)
        return (lines,) if all(r in lines for r in request_ids) else None

    # Envoy flushes its stdout every --file-flush-interval-msec (10 s by default).
    (lines,) = poll(every, 20.0, 0.1, what=f"access-log lines of {request_ids}")
    return lines


def _send(gw: Gateway, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    return httpx.request(method, f"{gw.url}{path}", headers=headers, timeout=10, **kw)


def refusals(gw: Gateway) -> list[tuple[str, Caller, httpx.Response]]:
    """One refused request of each kind authz and the RLS tell apart: (reason, who, reply)."""
    plain = gw.caller()
    found = [
        ("blocked_endpoint", plain, _send(gw, "GET", "/api/nope", plain.headers)),
        ("model_not_allowed", plain, _send(gw, "POST", "/api/chat", plain.headers,
                                           json={**CHAT, "model": "no-such-model"})),
        ("body_invalid", plain, _send(gw, "POST", "/api/chat", plain.headers, content=b"{")),
    ]  # fmt: skip
    narrow = gw.caller(scopes=["embeddings"])
    found.append(("scope", narrow, _send(gw, "POST", "/api/chat", narrow.headers, json=CHAT)))
    poor = gw.caller({"budget_daily": 1})
    found.append(("budget", poor, _send(gw, "POST", "/api/chat", poor.headers, json=CHAT)))
    slow = gw.caller(requests_per_minute=1)
    first = _send(gw, "POST", "/api/chat", slow.headers, json=CHAT)
    assert first.status_code == 200, first.text
    found.append(("rate", slow, _send(gw, "POST", "/api/chat", slow.headers, json=CHAT)))
    return found


def test_each_refusal_says_why_in_the_audit_row_and_the_access_log(gw: Gateway) -> None:
    counted = ("blocked_endpoint", "model_not_allowed", "body_invalid", "scope", "budget")
    before = {r: gw.metric("authz", "authz_refusals_total", reason=r) for r in counted}
    replies = refusals(gw)
    # authz's own refusals, by reason (the RLS's 429 is the RLS's: not authz's to count)
    after = {r: gw.metric("authz", "authz_refusals_total", reason=r) for r in counted}
    assert {r: after[r] - before[r] for r in counted} == dict.fromkeys(counted, 1)
    statuses = {reason: reply.status_code for reason, _, reply in replies}
    assert statuses == {
        "blocked_endpoint": 403,
        "model_not_allowed": 403,
        "body_invalid": 400,
        "scope": 403,
        "budget": 429,
        "rate": 429,
    }
    # The client learns nothing new: a blocked endpoint and a disallowed model look the same.
    assert replies[0][2].content == replies[1][2].content == error_body(403, "ollama")
    log = gw.stack.procs["envoy"].log_path
    lines = logged(log, [reply.headers["x-request-id"] for _, _, reply in replies])
    for reason, who, reply in replies:
        request_id = reply.headers["x-request-id"]
        query = "SELECT * FROM gateway.audit_log WHERE request_id = $1"
        (row,) = wait_for(gw, query, request_id)
        assert (row["key_prefix"], row["status"], row["reason"]) == (
            who.prefix,
            reply.status_code,
            reason,
        )
        line = lines[request_id]
        assert (line["reason"], line["tenant"], line["key_prefix"]) == (
            reason,
            who.tenant,
            who.prefix,
        )


def test_deny_mode_is_its_own_reason(gw: Gateway) -> None:
    who = gw.caller()
    redis = redis_client(gw)
    redis.set(DENY_MODE_KEY, "1", ex=5)
    try:
        reply = _send(gw, "POST", "/api/chat", who.headers, json=CHAT)
    finally:
        redis.delete(DENY_MODE_KEY)
    assert reply.status_code == 503
    (row,) = audit_rows(gw, who)
    assert (row["request_id"], row["reason"]) == (reply.headers["x-request-id"], "deny_mode")


def test_an_answered_request_has_its_id_and_no_reason(gw: Gateway) -> None:
    who = gw.caller()
    reply = _send(gw, "POST", "/api/chat", who.headers, json=CHAT)
    assert reply.status_code == 200
    (row,) = audit_rows(gw, who)
    assert (row["request_id"], row["reason"]) == (reply.headers["x-request-id"], "")
    line = logged(gw.stack.procs["envoy"].log_path, [row["request_id"]])[row["request_id"]]
    assert (line["status"], line["reason"], line["method"], line["path"]) == (
        200,
        None,
        "POST",
        "/api/chat",
    )
    assert line["backend"] and line["upstream_host"] and line["duration_ms"] >= 0


@pytest.fixture(scope="module")
def no_accounting(stack: Stack) -> Iterator[Gateway]:
    """The session's Postgres, Redis and mock with their own services and Envoy; accounting
    stopped (this module's stack only)."""
    with beside(
        stack,
        extra_env=dict(stack.config.extra_env),
        log_level="info",  # the services' shipped level (the stack's default is warning)
    ) as running:
        running.stack.procs["accounting"].stop()
        yield running


def test_with_accounting_down_envoy_still_logs_every_request(no_accounting: Gateway) -> None:
    gw = no_accounting
    who = gw.caller()
    bad_key = who.key[:-1] + ("A" if who.key[-1] != "A" else "B")
    sent = [
        (_send(gw, "GET", "/api/tags", who.headers), 200, None),
        (_send(gw, "POST", "/api/chat", who.headers, json=CHAT), 503, "accounting_down"),
        (_send(gw, "GET", "/api/nope", who.headers), 403, "blocked_endpoint"),
        (_send(gw, "GET", "/api/tags", {"Authorization": f"Bearer {bad_key}"}), 401, "key_invalid"),
        (_send(gw, "GET", "/api/tags", {}), 401, None),  # Envoy's own 401 route: no authz
    ]
    assert [reply.status_code for reply, _, _ in sent] == [status for _, status, _ in sent]
    ids = [reply.headers["x-request-id"] for reply, _, _ in sent]
    assert len(set(ids)) == len(ids)
    lines = logged(gw.stack.procs["envoy"].log_path, ids)
    for (_, status, reason), request_id in zip(sent, ids, strict=True):
        line = lines[request_id]
        assert (line["status"], line["reason"]) == (status, reason), line
        # No secret reaches the line: not the key, not any header's value.
        assert who.key not in json.dumps(line) and bad_key not in json.dumps(line)
    text = gw.stack.procs["envoy"].log_path.read_text(errors="replace")
    assert all(text.count(f'"request_id":"{r}"') == 1 for r in ids)  # one line each
    # authz's own line about a refusal names the request too.
    blocked = ids[2]

    def authz_line() -> tuple[dict[str, Any]] | None:
        for raw in gw.stack.procs["authz"].log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{") and json.loads(raw).get("request_id") == blocked:
                return (json.loads(raw),)
        return None

    (refused,) = poll(authz_line, 10.0, 0.1, what="authz's line about the refusal")
    assert (refused["event"], refused["reason"], refused["status"]) == (
        "refused",
        "blocked_endpoint",
        403,
    )
