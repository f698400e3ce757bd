"""The operator console in a real browser (Playwright driving Debian's Chromium): traffic through
Envoy, then the page on the admin side charts it with exactly the numbers ``GetUsage`` reports
over gRPC; a wrong token shows the admin API's 401; the console is on loopback only, never on
Envoy's public listener, and its bridge reaches only the admin API's read methods."""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from gateway.settings import Settings
from tests.browser import chromium
from tests.e2e.test_admin import Grpcurl
from tests.e2e.test_authz_support import FORBIDDEN, UNAUTHORIZED
from tests.gateway_client import Caller, Gateway
from tests.polling import poll

UNAUTHENTICATED = "missing or wrong admin token (authorization: Bearer <token>)"
MODELS = ("llama3.2", "qwen2.5:0.5b")
FIELDS = ("requests", "denied", "tokens_in", "tokens_out", "tokens_total")


@pytest.fixture(scope="module", autouse=True)
def console_up(gw: Gateway) -> None:
    """authz starts the console after its Check server and the admin API: on a busy machine,
    a while after the stack is up."""

    def answers() -> bool:
        try:
            return httpx.get(gw.stack.console_url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    poll(answers, timeout_s=30, interval_s=0.2, what="the console answering")


@pytest.fixture
def page(gw: Gateway) -> Iterator[Page]:
    """A fresh browser and page; every request it makes must stay on the console's origin, and
    the Content-Security-Policy must never have to block anything. Per test: while Playwright's
    loop runs, the stack client's database calls (asyncio.run) cannot, so they come first."""
    with chromium() as browser:
        yield from _watched(browser, gw)


def _watched(browser: Browser, gw: Gateway) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(gw.stack.console_url))
    elsewhere: list[str] = []
    messages: list[str] = []

    def seen(request: Request) -> None:
        if not request.url.startswith(origin + "/"):
            elsewhere.append(request.url)

    def logged(message: ConsoleMessage) -> None:
        messages.append(message.text)

    opened.on("request", seen)
    opened.on("console", logged)
    try:
        yield opened
    finally:
        context.close()
    assert elsewhere == []
    assert [m for m in messages if "Content Security Policy" in m] == []


def _connect(page: Page, gw: Gateway, token: str) -> None:
    page.goto(gw.stack.console_url)
    page.fill("#token", token)
    page.click("#connect")


def _numbers(found: dict[str, Any]) -> dict[str, int]:
    """A usage row as grpcurl prints it (camelCase, int64 as strings) → the page's numbers."""
    camel = {"requests": "requests", "denied": "denied", "tokens_in": "tokensIn"}
    camel |= {"tokens_out": "tokensOut", "tokens_total": "tokensTotal"}
    return {field: int(found.get(camel[field], 0)) for field in FIELDS}


@pytest.fixture
def traffic(gw: Gateway) -> Caller:
    """A fresh tenant limited to two models, 3 + 2 chats through Envoy and one request for a
    model it may not use (403); returns once GetUsage has every one of them."""
    caller = gw.caller(tenant={"allow_all": False, "allowed_models": list(MODELS)})
    for model, times in ((MODELS[0], 3), (MODELS[1], 2)):
        for i in range(times):
            body = {"model": model, "stream": False, "options": {"num_predict": 3 + i}}
            body["messages"] = [{"role": "user", "content": f"count to {i + 3} please"}]
            answer = httpx.post(f"{gw.url}/api/chat", json=body, headers=caller.headers)
            assert answer.status_code == 200, answer.text
    denied = httpx.post(
        f"{gw.url}/api/chat",
        json={"model": "nomic-embed-text", "messages": [{"role": "user", "content": "hi"}]},
        headers=caller.headers,
    )
    assert (denied.status_code, denied.json()) == (403, FORBIDDEN)

    def accounted() -> bool:
        ledger = gw.sql(
            "SELECT count(*) AS n FROM gateway.budget_ledger WHERE tenant_id = $1::uuid",
            caller.tenant_id,
        )
        audit = gw.sql(
            "SELECT coalesce(sum(count), 0) AS n FROM gateway.audit_log WHERE key_prefix = $1",
            caller.prefix,
        )
        # the key's last use: its newest request's start (the refused one: it was authenticated)
        used = gw.sql(
            "SELECT k.last_used_at = (SELECT max(ts) FROM gateway.audit_log"
            "  WHERE key_prefix = k.prefix) AS newest FROM gateway.api_keys k WHERE prefix = $1",
            caller.prefix,
        )
        return bool(ledger[0]["n"] == 5 and audit[0]["n"] == 6 and used[0]["newest"])

    poll(
        accounted,
        timeout_s=15,
        interval_s=0.2,
        what="5 ledger rows, 6 audit rows and the key's last use",
    )
    return caller


def test_the_console_charts_a_tenants_usage_exactly_as_get_usage_reports_it(
    gw: Gateway, admin: Grpcurl, traffic: Caller, page: Page
) -> None:
    caller = traffic
    _connect(page, gw, gw.stack.admin_token)
    page.wait_for_selector("#conn.on")
    page.select_option("#window", "hour")
    page.select_option("#dimension", "MODEL")
    page.select_option("#tenant", caller.tenant)
    ready = f'#usage[data-state="ready"][data-tenant="{caller.tenant}"][data-dimension="MODEL"]'
    try:
        page.wait_for_selector(ready, timeout=60_000)
    except PlaywrightTimeout:
        state = page.get_attribute("#usage", "data-state")
        raise AssertionError(f"usage {state}: {page.inner_text('#error')!r}") from None
    usage = page.locator("#usage")
    start, end = usage.get_attribute("data-start"), usage.get_attribute("data-end")
    assert start and end

    report = admin.call(
        "GetUsage",
        {
            "tenant": caller.tenant,
            "start": start,
            "end": end,
            "group_by": ["USAGE_DIMENSION_MODEL"],
        },
    )
    expected = {row.get("model", ""): _numbers(row) for row in report["rows"]}
    total = _numbers(report["total"])
    # what the traffic made: a row per model, and one without (the refused request's)
    requests = {model: (n["requests"], n["denied"]) for model, n in expected.items()}
    assert requests == {"llama3.2:latest": (3, 0), "qwen2.5:0.5b": (2, 0), "": (1, 1)}
    assert (total["requests"], total["denied"]) == (6, 1)
    assert total["tokens_total"] > 0

    # the chart: one bar per model, its numbers GetUsage's
    bars = page.eval_on_selector_all(
        "#chart-by g.bar",
        "gs => gs.map(g => [g.dataset.label, {requests: +g.dataset.requests,"
        " denied: +g.dataset.denied, tokens_in: +g.dataset.tokensIn,"
        " tokens_out: +g.dataset.tokensOut, tokens_total: +g.dataset.tokensTotal}])",
    )
    assert {label if label != "(no model)" else "": n for label, n in bars} == expected
    # the table: the same rows and the total
    cells = page.eval_on_selector_all(
        "#usage-table tr[data-label]",
        "rows => rows.map(r => [r.dataset.label, Object.fromEntries("
        "[...r.querySelectorAll('td[data-field]')]"
        ".map(c => [c.dataset.field, +c.dataset.value]))])",
    )
    table = dict(cells)
    assert table.pop("total") == total
    shown_total = page.locator('#usage-table tr[data-label="total"] td.num').all_inner_texts()
    assert shown_total == [f"{total[field]:,}" for field in FIELDS]  # as the operator reads it
    assert {label if label != "(no model)" else "": n for label, n in table.items()} == expected
    # over time: the buckets partition [start, end), so their sums are the total
    columns = page.eval_on_selector_all(
        "#chart-time g.col",
        "gs => gs.map(g => [g.dataset.start, g.dataset.end, +g.dataset.requests,"
        " +g.dataset.tokensTotal])",
    )
    assert len(columns) == 12
    assert columns[0][0] == start and columns[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(columns))
    assert sum(c[2] for c in columns) == total["requests"]
    assert sum(c[3] for c in columns) == total["tokens_total"]

    # the key: active, last used when the admin API says (its newest request: the fixture)
    key_row = page.locator(f'#keys-body tr[data-prefix="{caller.prefix}"]')
    assert key_row.locator("td").nth(3).inner_text() == "active"
    last_used = admin.call("GetKey", {"key": caller.prefix})["lastUsedAt"]
    last_use = key_row.locator('td[data-field="last_use"]')
    assert last_use.get_attribute("data-value") == last_used
    minute = datetime.fromisoformat(last_used).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    assert last_use.inner_text() == minute
    # the budget: the tenant's periods as GetBudget reports them
    budget = admin.call("GetBudget", {"tenant": caller.tenant})
    shown = page.eval_on_selector_all(
        "#budget-body tr[data-period]", "rs => rs.map(r => r.dataset.period)"
    )
    assert shown == [p["period"].removeprefix("PERIOD_").lower() for p in budget["periods"]]
    # the backends and their models
    backend = page.locator('#backends-body tr[data-backend="ollama"]')
    chips = backend.locator(".chip").all_inner_texts()
    listed = admin.call("ListModels", {})["backends"][0]["models"]
    assert chips == listed and "llama3.2:latest" in chips


def test_a_wrong_token_shows_the_admin_apis_401(gw: Gateway, page: Page) -> None:
    _connect(page, gw, "not-the-admin-token")
    page.wait_for_selector('#usage[data-state="error"]')
    assert page.inner_text("#error") == f"401 UNAUTHENTICATED: {UNAUTHENTICATED}"
    assert page.inner_text("#conn") == "not connected"
    assert page.input_value("#token") == ""  # not kept in the field either
    assert page.locator("#tenant").is_disabled()


def test_the_console_is_not_on_the_public_listener(gw: Gateway) -> None:
    """Envoy's listener answers /console as any path it does not serve: 401 without an API
    key (the admin token is none), 403 with one."""
    caller = gw.caller()
    for path in ("/console", "/console/", "/console/api/GetUsage"):
        for method in ("GET", "POST"):
            bare = httpx.request(method, f"{gw.url}{path}")
            assert (bare.status_code, bare.json()) == (401, UNAUTHORIZED), (method, path)
            admin = httpx.request(
                method,
                f"{gw.url}{path}",
                headers={"Authorization": f"Bearer {gw.stack.admin_token}"},
            )
            assert (admin.status_code, admin.json()) == (401, UNAUTHORIZED), (method, path)
            keyed = httpx.request(method, f"{gw.url}{path}", headers=caller.headers)
            assert (keyed.status_code, keyed.json()) == (403, FORBIDDEN), (method, path)


def _other_address() -> str:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    pytest.skip("this machine has no address besides loopback")


def test_the_console_listens_on_loopback_only(gw: Gateway) -> None:
    assert Settings().console_listen == ""  # off unless set
    env = gw.stack.procs["authz"].env or {}
    port = gw.stack.ports["console"]
    assert env["NZ_CONSOLE_LISTEN"] == f"127.0.0.1:{port}"
    assert httpx.get(gw.stack.console_url).status_code == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((_other_address(), port), timeout=5).close()


def test_the_bridge_refuses_a_mutating_method_and_a_missing_token(
    gw: Gateway, admin: Grpcurl
) -> None:
    caller = gw.caller()
    api = gw.stack.console_url + "api/"
    bearer = {"Authorization": f"Bearer {gw.stack.admin_token}"}
    revoke = httpx.post(
        api + "RevokeKey", json={"key": caller.prefix, "reason": "console"}, headers=bearer
    )
    assert revoke.status_code == 404
    assert revoke.json()["error"]["code"] == "NOT_FOUND"
    assert revoke.json()["error"]["message"].startswith(
        "RevokeKey is not a console method: the console reads only ("
    )
    assert admin.call("GetKey", {"key": caller.prefix})["status"] == "KEY_STATUS_ACTIVE"
    audit = gw.sql("SELECT 1 FROM gateway.admin_audit WHERE target = $1", f"key:{caller.prefix}")
    assert audit == []
    missing = httpx.post(api + "GetKey", json={"key": caller.prefix})
    assert (missing.status_code, missing.json()) == (
        401,
        {"error": {"code": "UNAUTHENTICATED", "message": UNAUTHENTICATED}},
    )
    # the same call with the token: the admin API's answer, as JSON
    found = httpx.post(api + "GetKey", json={"key": caller.prefix}, headers=bearer)
    assert found.status_code == 200
    assert found.json()["prefix"] == caller.prefix and found.json()["status"] == "KEY_STATUS_ACTIVE"
    assert found.headers["cache-control"] == "no-store"
    assert json.loads(found.text)["tenant"] == caller.tenant
