"""Why a request was refused (issue 15 §3): authz's ``reason`` reaches the audit row and never
the client; every log line about a request names it."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from accounting.audit import AccessEntry, refusal_reason, row_from_entry
from authz import check
from authz.decision import deny
from authz.server import to_response
from gateway import logs
from gateway.errorbodies import error_body
from gateway.requestmeta import NAMESPACE, RATELIMIT_NAMESPACE, Reason

ENTRY = AccessEntry(
    request_id="rid-1",
    start=datetime(2026, 1, 2, tzinfo=UTC),
    method="POST",
    path="/api/chat",
    status=403,
    duration_ms=1.0,
    bytes_in=10,
    bytes_out=20,
    client_ip="10.0.0.1",
    response_flags="UAEX",
    metadata={},
    details="ext_authz_denied",
)


def entry(
    flags: str = "UAEX",
    status: int = 403,
    authz: dict[str, Any] | None = None,
    rls: dict[str, Any] | None = None,
    details: str = "ext_authz_denied",
) -> AccessEntry:
    metadata: dict[str, dict[str, Any]] = {NAMESPACE: authz or {}}
    if rls is not None:
        metadata[RATELIMIT_NAMESPACE] = rls
    return replace(ENTRY, response_flags=flags, status=status, metadata=metadata, details=details)


@pytest.mark.parametrize("reason", list(Reason))
def test_the_reply_says_why_in_metadata_only(reason: Reason) -> None:
    blocked = to_response(deny(403, "openai", reason=reason))
    silent = to_response(deny(403, "openai"))
    # The client's status and body are the same whatever the reason.
    assert blocked.denied_response.status.code == silent.denied_response.status.code == 403
    assert blocked.denied_response.body == silent.denied_response.body
    assert blocked.denied_response.body == error_body(403, "openai").decode()
    assert [h.header.key for h in blocked.denied_response.headers] == ["content-type"]
    assert blocked.dynamic_metadata.fields["reason"].string_value == reason.value
    assert "reason" not in silent.dynamic_metadata.fields


def test_the_audit_row_takes_authz_reason() -> None:
    row = row_from_entry(entry(authz={"status": 403, "reason": "model_not_allowed"}))
    assert (row.status, row.reason) == (403, "model_not_allowed")


def test_a_reason_authz_never_writes_is_not_stored() -> None:
    assert refusal_reason(entry(authz={"reason": "x" * 500}), 403) == ""
    assert refusal_reason(entry(authz={"reason": 3}), 403) == ""


def test_the_rls_refusal_is_rate() -> None:
    refused = entry(flags="RL", status=429, rls={"refused": True}, details="request_rate_limited")
    assert row_from_entry(refused).reason == "rate"


def test_envoys_own_401_route_is_an_invalid_key() -> None:
    route = entry(flags="", status=401, details="direct_response")
    assert refusal_reason(route, 401) == "key_invalid"


def test_an_answered_request_has_no_reason() -> None:
    ok = entry(flags="", status=200, details="via_upstream", authz={"model": "m"})
    assert row_from_entry(ok).reason == ""


def test_log_lines_about_a_request_carry_its_id() -> None:
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    try:
        log = logs.get("t")
        with logs.request("rid-9"):
            log.info("inside")
        log.info("after")
        with logs.request(""):
            log.info("no id")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("request_id") for line in lines] == ["rid-9", None, None]


def test_every_reason_has_its_refusal_series_from_the_start() -> None:
    """authz_refusals_total{reason} exists for every reason before any refusal, so an alert's
    increase() sees the first one (deploy/observability/alerts.yaml)."""
    assert check.REFUSALS is not None  # declared with authz.check
    for reason in Reason:
        sample = REGISTRY.get_sample_value("authz_refusals_total", {"reason": reason.value})
        assert sample is not None, reason
