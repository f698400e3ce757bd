"""Drain without cutting a stream (docs/PLATFORM.md, "Draining"): Envoy runs under
``neuronetz-gateway envoy run``; with 20 streams mid-flight it gets SIGTERM the way the kubelet
sends it (to the container's process, the supervisor), then, once it has exited, the services
get theirs in the native sidecars' order. Every stream reaches its client whole, new clients
are turned away, and accounting writes every audit and ledger row before it exits."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.test_accounting_helpers import (
    CHAT,
    PROMPT_WORDS,
    accounting_answering,
    caller,
    used,
)
from tests.gateway_client import Caller, Gateway, beside
from tests.polling import poll

STREAMS = 20
FRAMES = 40
FRAME_DELAY_MS = 300  # 12 s a stream: longer than the supervisor's 5 s listener drain
SIDECARS_STOP_ORDER = ("authz", "accounting", "ratelimit")  # reverse of their start
STOP_GRACE_S = 4  # NZ_ACCOUNTING_STOP_GRACE_S of this module's stack


@pytest.fixture(scope="module")
def supervised(stack: Stack) -> Iterator[Gateway]:
    """The session's Postgres, Redis and mock with their own services and an Envoy under the
    supervisor (this test stops them all)."""
    with beside(
        stack,
        extra_env={
            **stack.config.extra_env,
            "NZ_ACCOUNTING_STOP_GRACE_S": str(STOP_GRACE_S),
        },
        supervise_envoy=True,
    ) as running:
        yield running


def _stream(gw: Gateway, who: Caller, first_frame: threading.Barrier) -> tuple[int, list[Any]]:
    body = {**CHAT, "options": {"num_predict": FRAMES}}
    headers = {**who.headers, "x-mock-frame-delay-ms": str(FRAME_DELAY_MS)}
    with httpx.stream("POST", f"{gw.url}/api/chat", json=body, headers=headers, timeout=30) as resp:
        lines = resp.iter_lines()
        frames = [json.loads(next(lines))]
        first_frame.wait(timeout=20)
        frames += [json.loads(line) for line in lines if line]
        return resp.status_code, frames


def _probe(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.TransportError:
        return None


def test_accounting_stopped_mid_stream_keeps_its_streams_for_the_grace(
    supervised: Gateway,
) -> None:
    """Accounting stopped alone (Envoy still running): a stream that ends within its grace is
    still observed to its final frame and its access-log entry, and written exactly."""
    gw = supervised
    who = caller(gw)
    accounting = gw.managed("accounting")
    assert accounting.popen is not None
    frames_n, delay_ms = 8, 300  # ends ~2.1 s after the first frame: inside the grace
    body = {**CHAT, "options": {"num_predict": frames_n}}
    headers = {**who.headers, "x-mock-frame-delay-ms": str(delay_ms)}
    with httpx.stream("POST", f"{gw.url}/api/chat", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        frames = [json.loads(next(lines))]
        accounting.popen.send_signal(signal.SIGTERM)
        frames += [json.loads(line) for line in lines if line]
    assert frames[-1]["done"] is True and frames[-1]["eval_count"] == frames_n
    assert accounting.popen.wait(timeout=STOP_GRACE_S + 20) == 0
    # accounting has exited: what it wrote is all there is.
    (ledger,) = gw.sql(
        "SELECT tokens_in, tokens_out, estimated FROM gateway.budget_ledger"
        " WHERE key_id = $1::uuid",
        who.key_id,
    )
    assert tuple(ledger) == (PROMPT_WORDS, frames_n, False)
    (audit,) = gw.sql(
        "SELECT status, tokens_in, tokens_out, tokens_estimated, response_flags"
        " FROM gateway.audit_log WHERE key_prefix = $1",
        who.prefix,
    )
    assert tuple(audit) == (200, PROMPT_WORDS, frames_n, False, "")
    accounting.start()  # back for the next test
    accounting_answering(gw)


def test_sigterm_drains_every_stream_and_accounts_for_it(supervised: Gateway) -> None:
    gw = supervised
    who = caller(gw, {"budget_daily": 1_000_000})
    envoy = gw.managed("envoy")
    assert envoy.popen is not None
    readyz = f"http://127.0.0.1:{gw.stack.ports['envoy_probe']}/readyz"
    assert _probe(readyz) == 200

    first_frame = threading.Barrier(STREAMS + 1)
    with ThreadPoolExecutor(STREAMS) as pool:
        streams = [pool.submit(_stream, gw, who, first_frame) for _ in range(STREAMS)]
        first_frame.wait(timeout=20)  # every stream is mid-flight
        os.kill(envoy.popen.pid, signal.SIGTERM)  # the kubelet: the container's process
        sigterm = time.monotonic()

        assert poll(lambda: _probe(readyz) == 503, 2.0, what="readiness failing")
        # New clients are refused once the listeners closed, while the streams still run.
        assert poll(lambda: _probe(f"{gw.url}/api/version") is None, 8.0, what="listener closed")
        assert not any(s.done() for s in streams)
        assert envoy.popen.poll() is None

        results = [s.result(timeout=30) for s in streams]

    assert envoy.popen.wait(timeout=15) == 0  # the supervisor exits with Envoy's code
    drained_s = time.monotonic() - sigterm
    assert drained_s < FRAMES * FRAME_DELAY_MS / 1000 + 5

    for name in SIDECARS_STOP_ORDER:  # native sidecars stop after Envoy, in reverse
        proc = gw.managed(name)
        assert proc.popen is not None
        os.kill(proc.popen.pid, signal.SIGTERM)
        assert proc.popen.wait(timeout=30) == 0, name

    expected_text = " ".join(f"token{i}" for i in range(FRAMES))
    for status, frames in results:
        assert status == 200
        assert "".join(f["message"]["content"] for f in frames) == expected_text
        final = frames[-1]
        assert final["done"] is True
        assert (final["prompt_eval_count"], final["eval_count"]) == (PROMPT_WORDS, FRAMES)

    # accounting has exited: what it wrote is all there is.
    audit = gw.sql(
        "SELECT status, tokens_in, tokens_out, tokens_estimated, response_flags"
        " FROM gateway.audit_log WHERE key_prefix = $1",
        who.prefix,
    )
    assert [tuple(r) for r in audit] == [(200, PROMPT_WORDS, FRAMES, False, "")] * STREAMS
    ledger = gw.sql(
        "SELECT tokens_in, tokens_out, estimated FROM gateway.budget_ledger"
        " WHERE key_id = $1::uuid",
        who.key_id,
    )
    assert [tuple(r) for r in ledger] == [(PROMPT_WORDS, FRAMES, False)] * STREAMS
    assert used(gw, who) == STREAMS * (PROMPT_WORDS + FRAMES)
