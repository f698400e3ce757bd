"""Streams cut short are charged what they used (issue 11 §6), and leases outlive nothing a
live stream holds (§7).

Expected values come from the mock's fixed rules (one content frame per output token; the
prompt's words) and from what authz reserved, read from Redis while the stream runs — never
from accounting's own code.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.test_accounting_helpers import (
    CHAT,
    PROMPT_WORDS,
    audit_rows,
    caller,
    ledger_rows,
    redis_client,
    reservation,
    reserved_key,
    until,
    used,
)
from tests.gateway_client import Caller, Gateway, beside

# 60 words, ~300 characters: whatever the estimate rule, authz reserves more than 60 tokens.
LONG_PROMPT = " ".join(f"w{i:03d}" for i in range(60))
OUTPUT_CAP = 40
FRAMES_READ = 3


def tpm_window(gw: Gateway, who: Caller, scope: str) -> float | None:
    """The level of the key's or tenant's tokens/min window in the RLS's Redis hash, as the
    last debit left it (the hash expires once the level has drained)."""
    entries = f"limit={scope}_tpm|tenant_id={who.tenant_id}"
    if scope == "key":
        entries += f"|key_id={who.key_id}"
    level = redis_client(gw).hget(f"nz:{{{who.tenant_id}}}:rl:gateway:{entries}", "l")
    return None if level is None else float(str(level))


def is_content(path: str, line: str) -> bool:
    """A frame with generated text: an NDJSON line before ``done``, an SSE chunk's delta."""
    if not path.startswith("/v1/"):
        return bool(line) and json.loads(line)["done"] is False
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line.removeprefix("data: "))["choices"]
    return bool(choices and choices[0]["delta"].get("content"))


def cut_stream(gw: Gateway, who: Caller, path: str) -> int:
    """Stream a long prompt, read FRAMES_READ content frames, hang up; the prompt tokens authz
    reserved for (the reservation minus the output cap)."""
    body: dict[str, Any] = {"model": "llama3.2", "stream": True}
    if path == "/api/generate":
        body["prompt"] = LONG_PROMPT
    else:
        body["messages"] = [{"role": "user", "content": LONG_PROMPT}]
    if path.startswith("/v1/"):
        body["max_tokens"] = OUTPUT_CAP
    else:
        body["options"] = {"num_predict": OUTPUT_CAP}
    headers = {**who.headers, "x-mock-frame-delay-ms": "300"}
    seen = 0
    prompt_reserved = -1
    with httpx.stream("POST", f"{gw.url}{path}", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if is_content(path, line):
                seen += 1
                if seen == 1:
                    prompt_reserved = reservation(gw, who) - OUTPUT_CAP
            if seen == FRAMES_READ:
                break  # leaving the block closes the connection mid-stream
    return prompt_reserved


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/v1/chat/completions"])
def test_cut_stream_is_charged_its_prompt_reservation_and_frames_everywhere(
    gw: Gateway, path: str
) -> None:
    # 1,000 tokens/min: the charge takes several seconds to drain, so its window (which
    # expires once drained) is still there to read.
    who = caller(gw, {"budget_daily": 1_000_000, "tokens_per_minute": 1_000})
    prompt = cut_stream(gw, who, path)
    assert prompt >= 60  # at least the mock's 60 prompt words (one token each)
    charge = prompt + FRAMES_READ

    (ledger,) = ledger_rows(gw, who)
    assert (ledger["tokens_in"], ledger["tokens_out"], ledger["estimated"]) == (
        prompt,
        FRAMES_READ,
        True,
    )
    assert until(lambda: used(gw, who) == charge), used(gw, who)
    (row,) = audit_rows(gw, who)
    assert (row["tokens_in"], row["tokens_out"], row["tokens_estimated"]) == (
        prompt,
        FRAMES_READ,
        True,
    )
    # tokens/min: the RLS's windows of the key and of the tenant hold the charge.
    assert until(lambda: tpm_window(gw, who, "key") == charge), tpm_window(gw, who, "key")
    assert tpm_window(gw, who, "tenant") == charge


def test_cut_stream_over_tokens_per_minute_gets_the_next_request_refused(gw: Gateway) -> None:
    who = caller(gw, {"budget_daily": 1_000_000, "tokens_per_minute": 60})
    prompt = cut_stream(gw, who, "/api/chat")
    assert prompt + FRAMES_READ > 60
    assert until(lambda: tpm_window(gw, who, "key") is not None)
    again = httpx.post(
        f"{gw.url}/api/chat",
        json={**CHAT, "stream": False, "options": {"num_predict": 1}},
        headers=who.headers,
    )
    assert again.status_code == 429
    assert int(again.headers["retry-after"]) >= 1


# -- leases ----------------------------------------------------------------------------

LEASE_S = 2


@pytest.fixture(scope="module")
def short(stack: Stack) -> Iterator[Gateway]:
    """The session's Postgres, Redis and mock with their own services and Envoy, whose slot
    and reservation leases last LEASE_S seconds."""
    with beside(
        stack,
        extra_env={
            **stack.config.extra_env,
            "NZ_SLOT_LEASE_S": str(LEASE_S),
            "NZ_RESERVATION_LEASE_S": str(LEASE_S),
        },
    ) as running:
        yield running


def one_more(gw: Gateway, who: Caller) -> httpx.Response:
    body = {**CHAT, "stream": False, "options": {"num_predict": 1}}
    return httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers)


def test_a_silent_stream_longer_than_its_lease_keeps_its_slot(short: Gateway) -> None:
    who = caller(short, {"max_concurrent": 1})
    body = {**CHAT, "options": {"num_predict": 2}}
    headers = {**who.headers, "x-mock-frame-delay-ms": "3000"}  # silent 3 s between frames
    with httpx.stream("POST", f"{short.url}/api/chat", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(lines)
        time.sleep(LEASE_S + 0.5)  # the lease authz took has run out; not a byte meanwhile
        held = redis_client(short).zrange(f"nz:{{{who.tenant_id}}}:cs:t", 0, -1, withscores=True)
        assert len(held) == 1
        expiry, now = float(held[0][1]), time.time()
        assert now < expiry <= now + LEASE_S + 0.5  # renewed, by one lease at most
        assert one_more(short, who).status_code == 429  # the slot is still taken
        frames = [json.loads(line) for line in lines if line]
    assert frames[-1]["done"] is True and frames[-1]["eval_count"] == 2
    assert until(lambda: one_more(short, who).status_code == 200, timeout_s=5.0)


def test_settlement_lands_in_used_after_the_reservation_expired(short: Gateway) -> None:
    limit = 1_000_000
    who = caller(short, {"budget_daily": limit})
    body = {**CHAT, "options": {"num_predict": 1}}
    headers = {**who.headers, "x-mock-frame-delay-ms": "1500"}
    accounting = short.managed("accounting")
    assert accounting.popen is not None
    with httpx.stream("POST", f"{short.url}/api/chat", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(lines)
        # Accounting stalls past the reservation's lease: nobody renews it, it expires.
        os.killpg(accounting.popen.pid, signal.SIGSTOP)
        try:
            time.sleep(LEASE_S + 0.6)
            live = redis_client(short).zrangebyscore(reserved_key(who), time.time(), "+inf")
            assert live == []  # nothing is held against the budget any more
            frames = [json.loads(line) for line in lines if line]
        finally:
            os.killpg(accounting.popen.pid, signal.SIGCONT)
    assert frames[-1]["done"] is True
    # Settled into *used* all the same: the mock's prompt words plus one output token.
    assert until(lambda: used(short, who) == PROMPT_WORDS + 1), used(short, who)
