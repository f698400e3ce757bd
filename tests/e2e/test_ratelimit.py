"""Rate limits through Envoy's listener with the real RLS, Redis, authz and accounting.

Limits come from Postgres (tenant_limits / key_limits) via authz's ``rl`` metadata; tokens/min
is debited after the stream from accounting's ``tokens_total``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import httpx2
import ollama
import openai
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2

from gateway.rls import Descriptor
from ratelimit.decide import window_key
from tests.gateway_client import Gateway
from tests.redisclient import SyncRedis, sync_client

CHAT = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "say hello to me"}],
    "stream": False,
    "options": {"num_predict": 1},
}
OPENAI_CHAT = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "say hello to me"}],
    "max_tokens": 1,
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(gw: Gateway, key: str, **overrides: object) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/api/chat", json={**CHAT, **overrides}, headers=bearer(key), timeout=10
    )


def limited_key(gw: Gateway, **tenant_limits: int) -> tuple[str, str, str]:
    """A fresh tenant with these limits and one key inheriting them: (key, key_id, tenant_id)."""
    tenant_id, _ = gw.tenant(None, allow_all=True, **tenant_limits)
    created = gw.key(tenant_id)
    return created.full_key, created.key_id, tenant_id


def redis_client(gw: Gateway) -> SyncRedis:
    return sync_client(gw.stack)


def test_requests_per_minute_per_key_then_429_with_retry_after(gw: Gateway) -> None:
    key, _, _ = limited_key(gw, requests_per_minute=3)
    answers = [chat(gw, key) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    first, over = answers[0], answers[3]
    # Envoy's X-RateLimit-* (draft 03) from the RLS's statuses: limit 3 per 60 s window, for
    # the key and (inherited) for the tenant.
    assert first.headers["x-ratelimit-limit"] == "3, 3;w=60, 3;w=60"
    assert first.headers["x-ratelimit-remaining"] == "2"
    assert 0 < int(first.headers["x-ratelimit-reset"]) <= 20
    assert over.headers["x-ratelimit-remaining"] == "0"
    # One request drains every 20 s: that is when the next one fits.
    assert 18 <= int(over.headers["retry-after"]) <= 20
    assert over.headers["content-type"] == "application/json"
    assert over.json() == {"error": "too many requests"}


def test_two_keys_of_one_tenant_share_the_tenant_window(gw: Gateway) -> None:
    tenant_id, tenant = gw.tenant(allow_all=True, requests_per_minute=4)
    key_a, key_b = (gw.key(tenant_id, requests_per_minute=100) for _ in range(2))
    a, b = key_a.full_key, key_b.full_key
    refused = {"outcome": "over_limit", "tenant": tenant}
    before = gw.metric("ratelimit", "ratelimit_decisions_total", **refused)
    throttled_before = gw.metric("authz", "authz_throttled_total", tenant=tenant)
    statuses = [chat(gw, k).status_code for k in (a, b, a, b)]
    assert statuses == [200, 200, 200, 200]
    assert chat(gw, a).status_code == 429
    assert chat(gw, b).status_code == 429
    # A key of another tenant is not affected.
    assert chat(gw, limited_key(gw, requests_per_minute=4)[0]).status_code == 200
    after = gw.metric("ratelimit", "ratelimit_decisions_total", **refused)
    # The RLS refused the first; the second is the RLS's or, once its announcement has
    # arrived, authz's on its behalf (tests/e2e/test_authz_throttled.py).
    by_authz = gw.metric("authz", "authz_throttled_total", tenant=tenant) - throttled_before
    assert after - before + by_authz == 2
    assert after - before >= 1
    text = httpx.get(gw.stack.metrics_url("ratelimit"), timeout=5).text
    # Labelled by tenant at most: no key appears in the metrics.
    for created in (key_a, key_b):
        assert created.key_id not in text
        assert created.prefix not in text


def test_64_concurrent_requests_against_limit_10_admit_exactly_10(gw: Gateway) -> None:
    key, _, _ = limited_key(gw, requests_per_minute=10)

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=20) as client:
            start = asyncio.Event()

            async def one() -> int:
                await start.wait()
                resp = await client.post(f"{gw.url}/api/chat", json=CHAT, headers=bearer(key))
                return resp.status_code

            tasks = [asyncio.create_task(one()) for _ in range(64)]
            await asyncio.sleep(0.05)
            start.set()
            return await asyncio.gather(*tasks)

    statuses = asyncio.run(run())
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 54, statuses


def test_openai_surface_headers_and_error_shape(gw: Gateway) -> None:
    key, _, _ = limited_key(gw, requests_per_minute=2, tokens_per_minute=100_000)
    url = f"{gw.url}/v1/chat/completions"
    ok = httpx.post(url, json=OPENAI_CHAT, headers=bearer(key), timeout=10)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert ok.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) <= 100_000
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    httpx.post(url, json=OPENAI_CHAT, headers=bearer(key), timeout=10)
    over = httpx.post(url, json=OPENAI_CHAT, headers=bearer(key), timeout=10)
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert over.headers["x-ratelimit-remaining-requests"] == "0"
    retry_ms = int(over.headers["retry-after-ms"])
    assert 28_000 <= retry_ms <= 30_000
    assert over.headers["retry-after"] == str(-(-retry_ms // 1000))
    # The native surface gets no OpenAI headers.
    native = chat(gw, limited_key(gw, requests_per_minute=2)[0])
    assert "x-ratelimit-limit-requests" not in native.headers


def test_official_openai_client_raises_rate_limit_error(gw: Gateway) -> None:
    key, _, _ = limited_key(gw, requests_per_minute=1)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    client.chat.completions.create(**OPENAI_CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(**OPENAI_CHAT)  # type: ignore[call-overload]
    assert err.value.status_code == 429
    assert err.value.code == "rate_limit_exceeded"


def test_official_ollama_client_sees_the_429_and_its_message(gw: Gateway) -> None:
    key, _, _ = limited_key(gw, requests_per_minute=1)
    client = ollama.Client(host=gw.url, headers=bearer(key))
    messages = [{"role": "user", "content": "say hello to me"}]
    client.chat(model="llama3.2", messages=messages, options={"num_predict": 1})
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3.2", messages=messages, options={"num_predict": 1})
    assert err.value.status_code == 429
    assert err.value.error == "too many requests"


def test_openai_client_backs_off_as_retry_after_ms_says_and_succeeds(gw: Gateway) -> None:
    # 30/min: one request drains every 2 s. Right after a request fills the window, the
    # client's first attempt is refused with retry-after-ms well above its own default back-off
    # (at most 0.5 s), and its one retry waits what the header says, then fits.
    key, _, _ = limited_key(gw, requests_per_minute=30)
    seen: list[tuple[float, int, str]] = []
    sent: list[float] = []

    def on_request(_: httpx2.Request) -> None:
        sent.append(time.monotonic())

    def on_response(resp: httpx2.Response) -> None:
        seen.append((time.monotonic(), resp.status_code, resp.headers.get("retry-after-ms", "")))

    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [on_request],
        "response": [on_response],
    }
    with httpx2.Client(event_hooks=hooks) as http:  # the transport of openai's client
        client = openai.OpenAI(
            base_url=f"{gw.url}/v1", api_key=key, max_retries=1, http_client=http
        )
        url = f"{gw.url}/v1/chat/completions"
        with httpx.Client(headers=bearer(key), timeout=10) as probes:
            for _ in range(40):  # 30 fit, and one more for each 2 s the burst takes
                probe = probes.post(url, json=OPENAI_CHAT)
                if probe.status_code != 200:
                    break
            assert probe.status_code == 429, probe.text
            time.sleep(int(probe.headers["retry-after-ms"]) / 1000 + 0.01)
            assert probes.post(url, json=OPENAI_CHAT).status_code == 200  # exactly full again
        raw = client.chat.completions.with_raw_response.create(**OPENAI_CHAT)  # type: ignore[call-overload]
    assert raw.http_response.status_code == 200
    assert raw.retries_taken == 1
    assert [status for _, status, _ in seen] == [429, 200]
    told_ms = int(seen[0][2])
    assert 1500 <= told_ms <= 2000
    waited_ms = (sent[1] - seen[0][0]) * 1000
    assert waited_ms >= told_ms * 0.9


def _tpm_window(key_id: str, tenant_id: str) -> str:
    entries = (("limit", "key_tpm"), ("tenant_id", tenant_id), ("key_id", key_id))
    return window_key("gateway", Descriptor(entries))


def _wait_for_level(r: SyncRedis, window: str, deadline_s: float = 5.0) -> float:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        level = r.hget(window, "l")
        if level is not None:
            return float(level)
        time.sleep(0.02)
    raise AssertionError(f"tokens/min window {window} was never debited")


def test_tokens_per_minute_debited_after_the_stream_then_429(gw: Gateway) -> None:
    key, key_id, tenant_id = limited_key(gw, tokens_per_minute=20)
    body = {**CHAT, "stream": True, "options": {"num_predict": 30}}
    frames = []
    with httpx.stream(
        "POST", f"{gw.url}/api/chat", json=body, headers=bearer(key), timeout=10
    ) as resp:
        assert resp.status_code == 200
        frames = [line for line in resp.iter_lines() if line]
    final = httpx.Response(200, content=frames[-1]).json()
    spent = final["prompt_eval_count"] + final["eval_count"]
    assert spent > 20
    # The request-time check added nothing; the debit after the stream added exactly `spent`.
    level = _wait_for_level(redis_client(gw), _tpm_window(key_id, tenant_id))
    assert spent - 0.5 < level <= spent
    over = chat(gw, key)
    assert over.status_code == 429
    # Truthful: (spent + 1 - 20) tokens must drain at 20 per 60 s.
    expected = (spent + 1 - 20) * 3
    assert expected - 3 <= int(over.headers["retry-after"]) <= expected


def test_openai_stream_tokens_exhaust_tokens_per_minute(gw: Gateway) -> None:
    key, key_id, tenant_id = limited_key(gw, tokens_per_minute=20)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    stream = client.chat.completions.create(  # type: ignore[call-overload]
        **{**OPENAI_CHAT, "max_tokens": 30}, stream=True
    )
    chunks = list(stream)
    assert chunks
    level = _wait_for_level(redis_client(gw), _tpm_window(key_id, tenant_id))
    assert level > 20  # debited from the usage accounting asked for, after the stream
    over = httpx.post(
        f"{gw.url}/v1/chat/completions", json=OPENAI_CHAT, headers=bearer(key), timeout=10
    )
    assert over.status_code == 429
    assert over.headers["x-ratelimit-limit-tokens"] == "20"
    assert over.headers["x-ratelimit-remaining-tokens"] == "0"
    expected_ms = (level + 1 - 20) * 3000
    assert expected_ms - 3000 <= int(over.headers["retry-after-ms"]) <= expected_ms
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**OPENAI_CHAT)  # type: ignore[call-overload]


def test_a_checked_request_under_the_tokens_limit_is_not_charged_at_request_time(
    gw: Gateway,
) -> None:
    key, key_id, tenant_id = limited_key(gw, tokens_per_minute=10_000)
    window = _tpm_window(key_id, tenant_id)
    r = redis_client(gw)
    resp = chat(gw, key)
    assert resp.status_code == 200
    tokens = resp.json()["prompt_eval_count"] + resp.json()["eval_count"]
    level = _wait_for_level(r, window)
    assert tokens - 0.5 < level <= tokens  # not tokens + 1: the check itself costs nothing


@contextmanager
def ratelimit_restarted(gw: Gateway, **env: str) -> Iterator[None]:
    """The stack's RLS restarted on its port with other settings; restored afterwards."""
    proc = gw.stack.procs["ratelimit"]
    assert proc.env is not None
    original = dict(proc.env)
    proc.stop()
    proc.env = {**original, **env}
    try:
        proc.start()
        yield
    finally:
        proc.stop()
        proc.env = original
        proc.start()


STATIC_YAML = """
domains:
  - domain: gateway
    descriptors:
      - {key: limit, value: key_rpm, quota: requests,
         descriptors: [{key: tenant_id, descriptors: [{key: key_id}]}]}
      - {key: limit, value: tenant_rpm, quota: requests, descriptors: [{key: tenant_id}]}
      - key: model
        value: "qwen*"
        rate_limit: {unit: MINUTE, requests_per_unit: 2}
"""


def test_static_yaml_limits_a_descriptor_authz_sends_no_limit_for(
    gw: Gateway, tmp_path: Path
) -> None:
    config = tmp_path / "limits.yaml"
    config.write_text(STATIC_YAML, encoding="utf-8")
    redis_client(gw).delete(window_key("gateway", Descriptor((("model", "qwen2.5:0.5b"),))))
    key = gw.new_key()  # no limits of its own
    with ratelimit_restarted(gw, NZ_RATELIMIT_CONFIG=str(config)):
        statuses = [chat(gw, key, model="qwen2.5:0.5b").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        # Another model is not limited by it...
        assert chat(gw, key).status_code == 200
        # ...and the model's limit is global: another tenant is limited too.
        assert chat(gw, gw.new_key(), model="qwen2.5:0.5b").status_code == 429
    assert chat(gw, key, model="qwen2.5:0.5b").status_code == 200  # shipped config: no limit


def test_a_bad_static_file_stops_the_rls_at_start_up(gw: Gateway, tmp_path: Path) -> None:
    bad = tmp_path / "limits.yaml"
    bad.write_text("domains: [{domain: gateway, descriptors: [{key: model, rate_limit: {}}]}]")
    import subprocess
    import sys

    env = {**(gw.stack.procs["ratelimit"].env or {}), "NZ_RATELIMIT_CONFIG": str(bad)}
    env["NZ_RATELIMIT_LISTEN"] = "127.0.0.1:0"
    env["NZ_METRICS_PORT"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "neuronetz_gateway", "ratelimit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert "rate_limit" in result.stderr


def _should_rate_limit(gw: Gateway) -> rls_pb2.RateLimitResponse:
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="limit", value="probe")],
        limit=ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(
            requests_per_unit=100, unit=ratelimit_unit_pb2.MINUTE
        ),
    )
    with grpc.insecure_channel(f"127.0.0.1:{gw.stack.ports['ratelimit']}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        return stub.ShouldRateLimit(
            rls_pb2.RateLimitRequest(domain="gateway", descriptors=[descriptor]), timeout=5
        )


def test_redis_stopped_fails_closed(gw: Gateway) -> None:
    key, _, _ = limited_key(gw, requests_per_minute=100)
    assert chat(gw, key).status_code == 200
    errors = gw.metric("ratelimit", "ratelimit_decisions_total", outcome="error")
    redis_proc = gw.managed("redis")
    redis_proc.stop()
    try:
        assert chat(gw, key).status_code == 503
        with pytest.raises(grpc.RpcError) as err:
            _should_rate_limit(gw)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert gw.metric("ratelimit", "ratelimit_decisions_total", outcome="error") > errors
    finally:
        redis_proc.start()
    deadline = time.monotonic() + 10
    while chat(gw, key).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not recover after Redis returned"
        time.sleep(0.1)
    assert _should_rate_limit(gw).overall_code == rls_pb2.RateLimitResponse.OK


def test_rls_stopped_fails_closed(gw: Gateway) -> None:
    key, _, _ = limited_key(gw, requests_per_minute=100)
    assert chat(gw, key).status_code == 200
    proc = gw.stack.procs["ratelimit"]
    proc.stop()
    try:
        native = chat(gw, key)
        assert native.status_code == 503
        assert native.json() == {"error": "service unavailable"}
        openai_shape = httpx.post(
            f"{gw.url}/v1/chat/completions", json=OPENAI_CHAT, headers=bearer(key), timeout=10
        )
        assert openai_shape.status_code == 503
        assert openai_shape.json()["error"]["code"] == "service_unavailable"
    finally:
        proc.start()
    deadline = time.monotonic() + 10
    while chat(gw, key).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not recover after the RLS returned"
        time.sleep(0.1)


def test_a_request_refused_by_the_rls_gives_back_its_slot_and_reservation(gw: Gateway) -> None:
    # One concurrent request per tenant; key `limited` may send 1 request/min, `free` has no
    # rate limit. authz takes the tenant's slot (and a budget reservation) before the RLS
    # refuses `limited`'s second request: both must come back with the 429, or `free` is
    # locked out and the budget shrinks by a request that never ran.
    tenant_id, _ = gw.tenant(None, allow_all=True, max_concurrent=1, budget_daily=10**9)
    limited = gw.key(tenant_id, requests_per_minute=1).full_key
    free = gw.key(tenant_id).full_key
    url = f"{gw.url}/v1/chat/completions"

    def free_gets_in() -> bool:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            resp = httpx.post(url, json=OPENAI_CHAT, headers=bearer(free), timeout=10)
            if resp.status_code == 200:
                return True
            time.sleep(0.05)
        return False

    assert httpx.post(url, json=OPENAI_CHAT, headers=bearer(limited), timeout=10).status_code == 200
    assert free_gets_in()  # the first request's slot was released after its stream
    refused = httpx.post(url, json=OPENAI_CHAT, headers=bearer(limited), timeout=10)
    assert refused.status_code == 429
    assert "x-ratelimit-limit-requests" in refused.headers  # the RLS's answer, not authz's
    assert free_gets_in()
    client = sync_client(gw.stack, decode_responses=False)
    deadline = time.monotonic() + 5
    while list(client.scan_iter(f"nz:{{{tenant_id}}}:rsv:*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(client.scan_iter(f"nz:{{{tenant_id}}}:rsv:*")) == []
