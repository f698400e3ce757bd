"""The operator console's bridge without a stack: the real admin server (``authz.admin.startup``,
PostgreSQL a port nothing listens on) behind the real console app. Only the admin API's read
methods are bridged; a mutating one never reaches it; the token check, its messages and its
status codes are the admin API's own; every answer carries the console's strict headers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import httpx
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from authz.admin import startup
from authz.console import bridge, server
from devstack.processes import free_port
from gateway import pagecsp
from gateway.settings import Settings

TOKEN = "unit-test-console-token-0123456789"
ADMIN_METHODS = set(bridge.SERVICE.methods_by_name)
UNAUTHENTICATED = {
    "error": {
        "code": "UNAUTHENTICATED",
        "message": "missing or wrong admin token (authorization: Bearer <token>)",
    }
}


@dataclass
class Console:
    url: str
    http: httpx.AsyncClient

    async def post(
        self, method: str, body: object = None, token: str | None = TOKEN, scheme: str = "Bearer"
    ) -> httpx.Response:
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        content = b"" if body is None else json.dumps(body).encode()
        return await self.http.post(
            f"{self.url}/console/api/{method}", content=content, headers=headers
        )


@pytest.fixture
async def console(no_postgres: asyncpg.Pool) -> AsyncIterator[Console]:
    listen = f"127.0.0.1:{free_port()}"
    cfg = Settings(admin_token=TOKEN, admin_listen=listen, ollama_urls=["http://127.0.0.1:1"])
    admin = await startup.start(cfg, no_postgres)
    channel = grpc.aio.insecure_channel(listen)
    runner = web.AppRunner(server.make_app(bridge.Bridge(channel), server.page()))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            yield Console(f"http://127.0.0.1:{port}", http)
    finally:
        await runner.cleanup()
        await channel.close()
        await admin.stop(grace=None)


def _count(method: str) -> float:
    """Every admin_calls_total sample of ``method``, whatever its code."""
    return sum(
        REGISTRY.get_sample_value("admin_calls_total", {"method": method, "code": code}) or 0.0
        for code in ("OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE", "INTERNAL")
    )


def test_only_the_admin_apis_read_methods_are_bridged() -> None:
    reads = {m for m in ADMIN_METHODS if m.startswith(("Get", "List", "Probe"))}
    allowed = bridge.READ_METHODS
    assert allowed == reads
    assert allowed == {
        "GetTenant",
        "ListTenants",
        "GetKey",
        "ListKeys",
        "GetBudget",
        "ListModels",
        "GetEffectiveModels",
        "GetUsage",
        "ProbeBackends",
    }
    mutating = ADMIN_METHODS - reads
    assert mutating == {
        "CreateTenant",
        "UpdateTenant",
        "DisableTenant",
        "EnableTenant",
        "CreateKey",
        "UpdateKey",
        "RevokeKey",
        "ExpireKey",
        "SetBudget",
    }
    for name in mutating | {"NoSuchMethod", "", "getusage"}:
        assert bridge.bridged(name) is None, name
    for name in reads:
        method = bridge.bridged(name)
        assert method is not None and method.full_name == f"{bridge.SERVICE.full_name}.{name}"


def test_the_authorization_header_is_forwarded_unchanged_or_not_at_all() -> None:
    assert bridge.metadata("Bearer abc") == (("authorization", "Bearer abc"),)
    assert bridge.metadata("bearer  x y") == (("authorization", "bearer  x y"),)
    for unusable in (None, "", "Bearer ä", "Bearer a\nb", "Bearer \x7f"):
        assert bridge.metadata(unusable) == ()


def test_a_request_body_is_the_methods_message_in_json() -> None:
    method = bridge.bridged("GetUsage")
    assert method is not None
    parsed = bridge.parse_request(
        method,
        b'{"tenant": "acme", "start": "2026-01-01T00:00:00Z",'
        b' "group_by": ["USAGE_DIMENSION_MODEL"]}',
    )
    assert parsed.tenant == "acme" and parsed.start.seconds == 1767225600
    assert list(parsed.group_by) == [3]
    assert bridge.parse_request(method, b"  ").ByteSize() == 0
    for bad, why in (
        (b"{", "the body is not JSON: "),
        (b"[]", "the body is not a JSON object (GetUsageRequest)"),
        (b'{"tenantt": "x"}', "the body is not a GetUsageRequest: "),
        (b'{"period": "PERIOD_WEEKLY"}', "the body is not a GetUsageRequest: "),
    ):
        with pytest.raises(ValueError, match="^" + why.replace("(", r"\(").replace(")", r"\)")):
            bridge.parse_request(method, bad)


async def test_a_mutating_method_is_refused_before_the_admin_api(console: Console) -> None:
    before = _count("RevokeKey")
    for method in ("RevokeKey", "CreateKey", "SetBudget", "DisableTenant", "NoSuchMethod"):
        answer = await console.post(method, {"key": "abcdefghijkl", "reason": "test"})
        assert answer.status_code == 404, method
        assert answer.json() == {
            "error": {
                "code": "NOT_FOUND",
                "message": f"{method} is not a console method: the console reads only"
                " (GetBudget, GetEffectiveModels, GetKey, GetTenant, GetUsage, ListKeys,"
                " ListModels, ListTenants, ProbeBackends)",
            }
        }
    assert _count("RevokeKey") == before  # never called


async def test_the_token_is_the_admin_apis_to_check(console: Console) -> None:
    before = REGISTRY.get_sample_value(
        "admin_calls_total", {"method": "ListModels", "code": "UNAUTHENTICATED"}
    )
    for token, scheme in ((None, ""), ("not-the-token", "Bearer"), (TOKEN, "Basic")):
        answer = await console.post("ListModels", {}, token=token, scheme=scheme)
        assert answer.status_code == 401, (token, scheme)
        assert answer.json() == UNAUTHENTICATED
    after = REGISTRY.get_sample_value(
        "admin_calls_total", {"method": "ListModels", "code": "UNAUTHENTICATED"}
    )
    assert after == (before or 0.0) + 3  # each one reached the admin API, which refused it


async def test_a_read_answers_the_admin_apis_json(console: Console) -> None:
    answer = await console.post("ListModels")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert answer.json() == {
        "backends": [
            {
                "backend": "http://127.0.0.1:1",
                "models": [],
                "name": "ollama",
                "priority": 0,
                "live": False,
            }
        ]
    }


async def test_grpc_failures_become_http_statuses(console: Console) -> None:
    # PostgreSQL is down: the admin API's UNAVAILABLE
    answer = await console.post("GetUsage", {"tenant": "acme"})
    assert (answer.status_code, answer.json()) == (
        503,
        {"error": {"code": "UNAVAILABLE", "message": "the database is unavailable"}},
    )
    # the admin API's validation
    answer = await console.post("GetBudget", {})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "INVALID_ARGUMENT"
    # the bridge's own parsing
    answer = await console.post("GetUsage", {"tenantt": "acme"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith(
        "the body is not a GetUsageRequest: Message type"
    )


async def test_every_answer_carries_the_strict_headers(console: Console) -> None:
    html = server.page()
    expected = server.security_headers(html)
    answers = [
        await console.http.get(f"{console.url}/console/"),
        await console.http.get(f"{console.url}/console", follow_redirects=False),
        await console.http.get(f"{console.url}/nothing-here"),
        await console.http.get(f"{console.url}/console/api/GetUsage"),  # not a POST
        await console.post("RevokeKey"),
        await console.post("ListModels", token="wrong"),
        await console.post("ListModels"),
    ]
    assert [a.status_code for a in answers] == [200, 302, 404, 405, 404, 401, 200]
    for answer in answers:
        for name, value in expected.items():
            assert answer.headers[name] == value, (answer.url, name)
    page = answers[0]
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.text == html
    assert answers[1].headers["location"] == "/console/"


def test_the_csp_allows_the_pages_one_script_and_style_by_hash_and_nothing_else() -> None:
    html = server.page()
    csp = pagecsp.csp(html)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'" and directives["form-action"] == "'none'"
    for tag in ("script", "style"):
        assert html.count(f"<{tag}>") == 1 and html.count(f"<{tag} ") == 0, tag
        assert directives[f"{tag}-src"].startswith("'sha256-")
        assert " " not in directives[f"{tag}-src"]  # one hash, no 'unsafe-inline'
    # no event handler attributes, no external resource of any kind
    lowered = html.lower()
    banned_all = (" onclick=", " onload=", " onerror=", " style=", "innerhtml", "src=", "href=")
    for banned in (*banned_all, "http://", "https://"):
        if banned == "http://":
            assert lowered.count(banned) == 1  # the SVG namespace, a name, not a fetch
            assert "'http://www.w3.org/2000/svg'" in html
            continue
        assert banned not in lowered, banned
    assert "localstorage" not in lowered and "sessionstorage" not in lowered
    assert "document.cookie" not in lowered
