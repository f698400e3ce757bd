"""What a request body may ask of a shared model (issue 11, findings 5, 8 and 10), through
Envoy to the mock Ollama: reservations are a true upper bound of the prompt (UTF-8 bytes, one
token per context id, deep nesting refused), each endpoint takes only its documented fields
(debug switches refused before the backend), and output and load options stay under the
tenant's and the gateway's ceilings — in the bytes the backend receives."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import ollama
import openai
import pytest

from tests.e2e.test_admin import Grpcurl, rpc_error, tenant_name
from tests.e2e.test_admin_cli import ok
from tests.e2e.test_authz_support import caller, poll
from tests.gateway_client import Caller, Gateway

CEILING = 32_768  # the gateway's output ceiling (docs/CLIENTS.md), written independently
TOO_MANY = {"error": "too many requests"}
INVALID = {"error": "invalid request"}
INVALID_OPENAI = {
    "error": {
        "message": "invalid request",
        "type": "invalid_request_error",
        "code": "invalid_request",
    }
}


def marker() -> str:
    return f"policy-{time.monotonic_ns()}"


def post(gw: Gateway, who: Caller, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.url}{path}", json=body, headers=who.headers, timeout=15)


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"model": "llama3.2", "messages": messages, "stream": False, **extra}


def reached(gw: Gateway, mark: str) -> list[dict[str, Any]]:
    """What the backend received with ``mark`` in it, each as raw bytes decoded."""
    seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests", timeout=5).json()
    return [json.loads(r["raw"]) for r in seen if mark in r.get("raw", "")]


def remaining(resp: httpx.Response) -> int:
    return int(resp.headers["x-budget-tokens-remaining"])


@contextlib.contextmanager
def held(gw: Gateway, who: Caller, body: dict[str, Any]) -> Iterator[httpx.Response]:
    """A streamed request kept open (slow frames) while the block runs."""
    slow = {**body, "stream": True, "options": {"num_predict": 5, "mock_frame_delay_ms": 300}}
    with (
        httpx.Client(timeout=15) as client,
        client.stream("POST", f"{gw.url}/api/chat", json=slow, headers=who.headers) as resp,
    ):
        if resp.status_code == 200:
            next(resp.iter_lines())
        yield resp


# -- §5: the reservation is a true upper bound -----------------------------------------------


def test_a_50000_id_context_does_not_fit_a_1000_token_budget(gw: Gateway) -> None:
    who = caller(gw, {"budget_total": 1_000})
    mark = marker()
    body = {"model": "llama3.2", "prompt": mark, "context": [1] * 50_000, "stream": False}
    resp = post(gw, who, "/api/generate", body)
    assert resp.status_code == 429
    assert resp.json() == TOO_MANY
    assert reached(gw, mark) == []
    # The same prompt without the ids fits.
    del body["context"]
    assert post(gw, who, "/api/generate", body).status_code == 200


def test_multibyte_text_reserves_at_least_its_utf8_bytes(gw: Gateway) -> None:
    text = "\u20ac" * 10_000  # 10,000 characters, 30,000 UTF-8 bytes
    # A budget below the text's bytes cannot hold it.
    small = caller(gw, {"budget_total": 30_000})
    resp = post(gw, small, "/api/chat", chat_body(text))
    assert resp.status_code == 429
    assert remaining(resp) == 30_000
    # While it runs under a larger budget, what others see left has its bytes taken out.
    who = caller(gw, {"budget_total": 100_000})
    with held(gw, who, chat_body(text)) as first:
        assert first.status_code == 200
        second = post(gw, who, "/api/chat", chat_body("hi", options={"num_predict": 1}))
        assert second.status_code == 200
        assert remaining(second) <= 100_000 - 30_000


@pytest.mark.parametrize("field", ["format", "messages", "tools"])
def test_nesting_deeper_than_the_limit_is_refused_before_the_backend(
    gw: Gateway, field: str
) -> None:
    who = caller(gw)
    mark = marker()
    nested: Any = mark
    for _ in range(100):
        nested = {"properties": nested}
    body = chat_body(mark)
    if field == "messages":
        body["messages"] = [{"role": "user", "content": [nested]}]
    else:
        body[field] = nested if field == "format" else [nested]
    resp = post(gw, who, "/api/chat", body)
    assert resp.status_code == 400
    assert resp.json() == INVALID
    assert reached(gw, mark) == []


# -- §8: documented fields only ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "spelling"),
    [
        ("/api/chat", "_debug_render_only"),
        ("/api/generate", "_debug_render_only"),
        ("/api/chat", "_Debug_Render_Only"),
        ("/v1/chat/completions", "_debug_render_only"),
        ("/v1/completions", "_debug_render_only"),
        ("/api/chat", "_debug_thinking"),
        ("/api/chat", "made_up_field"),
    ],
)
def test_debug_and_undocumented_fields_are_refused_before_the_backend(
    gw: Gateway, path: str, spelling: str
) -> None:
    who = caller(gw)
    mark = marker()
    bodies = {
        "/api/chat": chat_body(mark),
        "/api/generate": {"model": "llama3.2", "prompt": mark, "stream": False},
        "/v1/chat/completions": chat_body(mark),
        "/v1/completions": {"model": "llama3.2", "prompt": mark},
    }
    resp = post(gw, who, path, {**bodies[path], spelling: True})
    assert resp.status_code == 400
    assert resp.json() == (INVALID_OPENAI if path.startswith("/v1/") else INVALID)
    assert reached(gw, mark) == []
    assert post(gw, who, path, bodies[path]).status_code == 200  # the same body without it


def test_what_the_official_clients_send_passes(gw: Gateway) -> None:
    who = caller(gw)
    mark = marker()
    client = ollama.Client(host=gw.url, headers=who.headers)
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "the weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "description": "the city"}},
                    "required": ["city"],
                },
            },
        }
    ]
    sampling = {"temperature": 0.2, "top_p": 0.9, "top_k": 20, "seed": 7, "num_predict": 3}
    client.chat(
        model="llama3.2",
        messages=[{"role": "system", "content": "terse"}, {"role": "user", "content": mark}],
        tools=tools,
        format="json",
        options={**sampling, "stop": ["\n\n"], "repeat_penalty": 1.1},
        keep_alive="5m",
        think=False,
        logprobs=True,
        top_logprobs=2,
    )
    client.generate(
        model="llama3.2",
        prompt=mark,
        system="terse",
        suffix="",
        raw=False,
        format={"type": "object"},
        options=sampling,
        keep_alive=300,
        context=[1, 2, 3],
    )
    client.embed(model="llama3.2", input=[mark, "two"], truncate=True, keep_alive="1m")
    oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=who.key, max_retries=0)
    oai.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": mark}],
        max_tokens=3,
        temperature=0.2,
        top_p=0.9,
        seed=7,
        stop=["\n\n"],
        user="someone",
        n=1,
        frequency_penalty=0.1,
        presence_penalty=0.1,
        response_format={"type": "json_object"},
        tools=tools,
        tool_choice="auto",
        stream_options={"include_usage": True},
        stream=True,
    ).close()
    oai.completions.create(model="llama3.2", prompt=mark, max_tokens=3, echo=False, user="u")
    oai.embeddings.create(model="llama3.2", input=mark, encoding_format="float", user="u")
    assert len(reached(gw, mark)) == 6


# -- §10: output and load options -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/api/chat", {"options": {"num_predict": 10**30}}, ("options", "num_predict")),
        ("/api/generate", {"options": {"num_predict": 10**30}}, ("options", "num_predict")),
        ("/v1/chat/completions", {"max_tokens": 10**30}, ("max_tokens",)),
        ("/v1/completions", {"max_tokens": 10**30}, ("max_tokens",)),
    ],
)
def test_a_huge_output_cap_is_forwarded_at_the_gateway_ceiling(
    gw: Gateway, path: str, body: dict[str, Any], where: tuple[str, ...]
) -> None:
    who = caller(gw)
    mark = marker()
    prompted = path in ("/api/generate", "/v1/completions")
    base = {"model": "llama3.2", "stream": False, "prompt": mark} if prompted else chat_body(mark)
    resp = post(gw, who, path, {**base, **body})
    assert resp.status_code == 200, resp.text
    (forwarded,) = reached(gw, mark)
    found: Any = forwarded
    for name in where:
        found = found[name]
    assert found == CEILING


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/api/chat", {"options": {"num_predict": 100}}, ("options", "num_predict")),
        ("/api/chat", {}, ("options", "num_predict")),  # the default (1024) is clamped too
        ("/v1/chat/completions", {"max_tokens": 100}, ("max_tokens",)),
    ],
)
def test_the_tenants_max_output_tokens_clamps_what_is_forwarded(
    gw: Gateway, path: str, body: dict[str, Any], where: tuple[str, ...]
) -> None:
    who = caller(gw, {"max_output_tokens": 5})
    mark = marker()
    resp = post(gw, who, path, {**chat_body(mark), **body})
    assert resp.status_code == 200, resp.text
    (forwarded,) = reached(gw, mark)
    found: Any = forwarded
    for name in where:
        found = found[name]
    assert found == 5


def test_num_ctx_above_the_tenants_max_is_refused(gw: Gateway) -> None:
    who = caller(gw, {"max_num_ctx": 4096})
    mark = marker()
    resp = post(gw, who, "/api/chat", chat_body(mark, options={"num_ctx": 8192}))
    assert resp.status_code == 400
    assert resp.json() == INVALID
    assert reached(gw, mark) == []
    resp = post(gw, who, "/api/chat", chat_body(mark, options={"num_ctx": 4096}))
    assert resp.status_code == 200
    (forwarded,) = reached(gw, mark)
    assert forwarded["options"]["num_ctx"] == 4096
    # A tenant without max_num_ctx may not set num_ctx at all.
    plain = caller(gw)
    resp = post(gw, plain, "/api/chat", chat_body(marker(), options={"num_ctx": 2048}))
    assert resp.status_code == 400


@pytest.mark.parametrize("option", ["num_gpu", "main_gpu", "num_thread", "num_batch", "use_mmap"])
def test_load_time_options_are_refused_unless_the_tenant_allows_them(
    gw: Gateway, option: str
) -> None:
    value: Any = True if option == "use_mmap" else 1
    who = caller(gw)
    mark = marker()
    resp = post(gw, who, "/api/chat", chat_body(mark, options={option: value}))
    assert resp.status_code == 400
    assert resp.json() == INVALID
    assert reached(gw, mark) == []
    allowed = caller(gw, {"allowed_options": ["temperature", option]})
    resp = post(gw, allowed, "/api/chat", chat_body(mark, options={option: value}))
    assert resp.status_code == 200
    # The allowlist replaces the default: an option it leaves out is refused.
    resp = post(gw, allowed, "/api/chat", chat_body(mark, options={"seed": 1}))
    assert resp.status_code == 400


def test_a_keys_own_ceilings_replace_the_tenants(gw: Gateway) -> None:
    who = caller(gw, {"max_output_tokens": 5}, max_output_tokens=9, max_num_ctx=2048)
    mark = marker()
    body = chat_body(mark, options={"num_predict": 100, "num_ctx": 2048})
    assert post(gw, who, "/api/chat", body).status_code == 200
    (forwarded,) = reached(gw, mark)
    assert forwarded["options"]["num_predict"] == 9


# -- admin API ----------------------------------------------------------------------------------


def test_admin_api_round_trips_the_ceilings(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    ceilings = {
        "maxOutputTokens": "100",
        "maxNumCtx": "4096",
        "allowedOptions": {"options": ["temperature", "num_gpu"]},
    }
    created = admin.call("CreateTenant", {"name": name, "allowAll": True, "ceilings": ceilings})
    assert created["ceilings"] == ceilings
    assert admin.call("GetTenant", {"tenant": name})["ceilings"] == ceilings
    listed = admin.call("ListTenants", {"pageSize": 500})["tenants"]
    assert [t["ceilings"] for t in listed if t["name"] == name] == [ceilings]
    # Clearing through the mask: back to the gateway's defaults.
    updated = admin.call(
        "UpdateTenant",
        {"tenant": name, "updateMask": "ceilings.maxNumCtx,ceilings.allowedOptions"},
    )
    assert updated["ceilings"] == {"maxOutputTokens": "100"}
    updated = admin.call("UpdateTenant", {"tenant": name, "ceilings": {"maxNumCtx": "2048"}})
    assert updated["ceilings"] == {"maxOutputTokens": "100", "maxNumCtx": "2048"}
    # A key: absent inherits; its own values show on Get and List.
    own = {"maxOutputTokens": "7", "allowedOptions": {}}  # an empty list: no option at all
    key = admin.call("CreateKey", {"tenant": name, "ceilings": own})
    assert key["key"]["ceilings"] == own
    prefix = key["key"]["prefix"]
    assert admin.call("GetKey", {"key": prefix})["ceilings"] == own
    listed_keys = admin.call("ListKeys", {"tenant": name})["keys"]
    assert [k.get("ceilings") for k in listed_keys] == [own]
    cleared = admin.call("UpdateKey", {"key": prefix, "updateMask": "ceilings"})
    assert cleared.get("ceilings", {}) == {}
    # In force at once: the tenant's 100 and its num_ctx 2048 now apply to the key.
    bearer = {"Authorization": f"Bearer {key['fullKey']}"}
    mark = marker()

    def forwarded() -> Any:
        body = chat_body(mark, options={"num_predict": 500, "num_ctx": 2048})
        resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=bearer, timeout=10)
        return resp.status_code == 200 and reached(gw, mark)

    assert poll(forwarded, timeout_s=5)[-1]["options"]["num_predict"] == 100


@pytest.mark.parametrize(
    ("ceilings", "message"),
    [
        ({"maxOutputTokens": "-1"}, "max_output_tokens"),
        ({"maxOutputTokens": "0"}, "max_output_tokens"),
        ({"maxOutputTokens": str(CEILING + 1)}, "max_output_tokens"),
        ({"maxNumCtx": "-5"}, "max_num_ctx"),
        ({"allowedOptions": {"options": ["num_gpu", "warp_speed"]}}, "warp_speed"),
        ({"allowedOptions": {"options": ["num_ctx"]}}, "max_num_ctx"),
    ],
)
def test_admin_api_refuses_bad_ceilings(
    admin: Grpcurl, ceilings: dict[str, Any], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        admin.call("CreateTenant", {"name": tenant_name(), "ceilings": ceilings})
    code, details = rpc_error(raised)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    name = tenant_name()
    admin.call("CreateTenant", {"name": name})
    with pytest.raises(grpc.RpcError) as raised:
        admin.call("UpdateTenant", {"tenant": name, "ceilings": ceilings})
    assert rpc_error(raised)[0] is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as raised:
        admin.call("CreateKey", {"tenant": name, "ceilings": ceilings})
    assert rpc_error(raised)[0] is grpc.StatusCode.INVALID_ARGUMENT


def test_the_cli_sets_ceilings_on_create(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    created = ok(
        gw,
        *("create-tenant", name, "--max-output-tokens", "64", "--max-num-ctx", "4096"),
        *("--allow-option", "temperature", "--allow-option", "num_thread"),
    )
    assert created["ceilings"] == {
        "max_output_tokens": 64,
        "max_num_ctx": 4096,
        "allowed_options": {"options": ["temperature", "num_thread"]},
    }
    key = ok(gw, "create-key", name, "--max-output-tokens", "8")
    assert key["key"]["ceilings"] == {"max_output_tokens": 8}
