"""The playground (docs/PLAYGROUND.md) in a real browser: Chromium (tests/browser.py) on a
stack whose Envoy serves /playground itself. What a user of the page sees: the chat streams
token by token, a bad key's 401 body, no Run without a key, the curl box is the request that
was sent, the model picker holds the key's effective models, nothing leaves the origin, the
page runs under its CSP; and a stack with the playground off does not serve it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route

from devstack import envoyconf
from devstack.processes import Proc, free_port, python_module
from devstack.stack import Stack
from gateway import pagecsp
from gateway.playground import envoyroute, page
from tests.browser import chromium
from tests.gateway_client import Gateway, beside
from tests.polling import poll

# The mock's test knobs ride in Ollama's options (a stack that starts no mock of its own must
# be told to let them pass: tests/e2e/test_replicas.py).
T = TypeVar("T")
INERT = "mock_frame_delay_ms,mock_error_after,mock_omit_counts"
UNAUTHORIZED = {"error": "invalid or missing API key"}
ENDPOINT_COUNT = len(page.expected_catalogue())
WRONG_KEY = "nz_aaaaaaaaaaaa_" + "A" * 43  # well-formed, never issued


@pytest.fixture(scope="module")
def pg(stack: Stack) -> Iterator[Gateway]:
    extra = {"NZ_DISCOVERY_INTERVAL_S": "1", "NZ_INERT_OPTIONS": INERT}
    with beside(stack, playground=True, extra_env=extra) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


@dataclass
class Visit:
    """One page of the playground in a fresh browser context: every request it made, every
    request that tried to leave the origin (aborted), its console."""

    page: Page
    origin: str
    requests: list[Request] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    console: list[ConsoleMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def api_requests(self) -> list[Request]:
        return [r for r in self.requests if urlsplit(r.url).path != "/playground"]

    def csp_violations(self) -> list[str]:
        return [m.text for m in self.console if "Content Security Policy" in m.text]


@pytest.fixture
def visit(pg: Gateway, browser: Browser) -> Iterator[Visit]:
    context = browser.new_context()
    origin = pg.url
    opened = Visit(context.new_page(), origin)

    def guard(route: Route) -> None:
        url = route.request.url
        if url.startswith("data:") or f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" == origin:
            route.continue_()
        else:
            opened.foreign.append(url)
            route.abort()

    context.route("**/*", guard)
    opened.page.on("request", lambda r: opened.requests.append(r))
    opened.page.on("console", lambda m: opened.console.append(m))
    opened.page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
    opened.page.goto(f"{origin}/playground")
    try:
        yield opened
    finally:
        context.close()
    assert opened.foreign == []  # no request ever left the origin
    assert opened.csp_violations() == []
    assert opened.errors == []


def db(work: Callable[[], T]) -> T:
    """``work`` (a Gateway helper that runs its own asyncio loop) on another thread: Playwright's
    sync API keeps an event loop running on this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def enter_key(v: Visit, key: str) -> list[str]:
    """Type the key; the models the picker holds once the page has read /api/tags with it."""
    with v.page.expect_response(lambda r: urlsplit(r.url).path == "/api/tags"):
        v.page.fill("#key", key)
    poll(lambda: v.page.inner_text("#models-note").endswith("for this key"), 15)
    return [o.get_attribute("value") or "" for o in v.page.query_selector_all("#model option")]


def set_body(v: Visit, body: dict[str, Any]) -> str:
    text = json.dumps(body)
    v.page.fill("#body", text)
    return text


def finished(v: Visit) -> str | None:
    status = v.page.inner_text("#status")
    return status if " ms" in status or status.startswith(("stopped", "network")) else None


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def curl_of(request: Request) -> str:
    """The curl command that sends ``request`` as the page documents it."""
    headers = request.headers
    lines = [f"curl -N -X {request.method} {quote(request.url)}"]
    lines.append(f"  -H {quote('Authorization: ' + headers['authorization'])}")
    if request.post_data is not None:
        lines.append(f"  -H {quote('Content-Type: ' + headers['content-type'])}")
        lines.append(f"  --data-raw {quote(request.post_data)}")
    return " \\\n".join(lines)


# -- served by Envoy ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/playground", "/playground/", "/playground?x=1"])
def test_envoy_serves_the_page_with_its_security_headers(pg: Gateway, path: str) -> None:
    html = page.read()
    resp = httpx.get(pg.url + path)
    assert resp.status_code == 200
    assert resp.content == page.PAGE.read_bytes()
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.headers.get_list("content-security-policy") == [pagecsp.csp(html)]
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["server"] == "neuronetz-gateway"


def test_only_get_and_head_are_the_page(pg: Gateway) -> None:
    assert httpx.head(pg.url + "/playground").status_code == 200
    posted = httpx.post(pg.url + "/playground", content=b"{}")
    assert (posted.status_code, posted.json()) == (401, UNAUTHORIZED)


def test_the_page_calls_no_service(pg: Gateway) -> None:
    """No ext_authz Check, no RLS call, no ext_proc stream for a page load: Envoy's own
    counters of the three filters do not move."""
    names = "ext_authz|ratelimit|ext_proc"
    before = pg.envoy_stats(names)
    for _ in range(3):
        assert httpx.get(pg.url + "/playground").status_code == 200
    after = pg.envoy_stats(names)
    moved = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    assert moved == {}
    # the same counters do move for a request that is checked: they are the right ones
    key = db(pg.new_key)
    assert httpx.get(pg.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).is_success
    checked = pg.envoy_stats(names)
    assert any(v != after.get(k) for k, v in checked.items() if "ext_authz" in k)


def test_envoy_run_playground_serves_it_from_the_shipped_config(
    stack: Stack, tmp_path: Path
) -> None:
    """The deployments' switch: ``neuronetz-gateway envoy run --playground -- -c <config>``,
    the config being the shipped one pointed at this stack (no playground in the file)."""
    listener, admin, probe = free_port(), free_port(), free_port()
    config = envoyconf.write(stack.envoy_config(listener, admin), tmp_path / "envoy.yaml")
    assert envoyroute.PATHS[0] not in config.read_text("utf-8")
    run = ["envoy", "run", "--playground", "--probe-port", str(probe), "--", "-c", str(config)]
    proc = Proc(
        "envoy-playground",
        python_module("neuronetz_gateway", *run),
        tmp_path,
        port=listener,
        env={**os.environ, "NZ_LOG_LEVEL": "warning"},
        ready=lambda: _ok(f"http://127.0.0.1:{probe}/readyz"),
    )
    proc.start(60)
    try:
        resp = httpx.get(f"http://127.0.0.1:{listener}/playground")
        assert resp.status_code == 200
        assert resp.content == page.PAGE.read_bytes()
        assert resp.headers["content-security-policy"] == pagecsp.csp(page.read())
        # and the rest of the listener is the gateway's: no key, 401
        tags = httpx.get(f"http://127.0.0.1:{listener}/api/tags")
        assert (tags.status_code, tags.json()) == (401, UNAUTHORIZED)
    finally:
        proc.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_with_the_playground_off_it_is_not_served(gw: Gateway) -> None:
    """The shipped config: /playground is a path like any unknown one — 401 without a key,
    the generic 403 with one."""
    assert envoyroute.PATHS[0] not in (gw.stack.work_dir / "envoy.yaml").read_text("utf-8")
    resp = httpx.get(gw.url + "/playground")
    assert (resp.status_code, resp.json()) == (401, UNAUTHORIZED)
    assert resp.headers["content-type"] == "application/json"
    keyed = httpx.get(gw.url + "/playground", headers={"Authorization": f"Bearer {db(gw.new_key)}"})
    assert (keyed.status_code, keyed.json()) == (403, {"error": "forbidden"})


# -- in the browser ----------------------------------------------------------------------------


def test_the_page_runs_under_its_csp_and_lists_every_endpoint(visit: Visit) -> None:
    p = visit.page
    buttons = p.query_selector_all("nav button")  # built by the page's script
    assert len(buttons) == ENDPOINT_COUNT
    listed = [b.get_attribute("data-path") for b in buttons]
    assert listed == [path for _, path, *_ in page.expected_catalogue()]
    background = p.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 18, 22)"  # the page's own style applied
    assert p.inner_text("#base") == visit.origin
    p.click("nav button[data-path='/v1/messages']")
    assert p.inner_text("#about-auth") == "key: bearer or x-api-key"
    assert p.inner_text("#about-stream") == "streams SSE"
    assert p.inner_text("#about-method") == "POST"
    assert "Anthropic" in p.inner_text("#about-desc")
    p.click("nav button[data-path='/api/tags']")
    assert p.inner_text("#about-stream") == "no stream"
    assert p.is_disabled("#body")


def test_run_is_refused_without_a_key(visit: Visit) -> None:
    p = visit.page
    assert p.is_disabled("#run")
    assert p.is_visible("#gate")
    p.click("#run", force=True)  # a click on the disabled button
    p.dispatch_event("#run", "click")  # and the event itself
    time.sleep(1.0)
    assert visit.api_requests() == []
    assert p.inner_text("#status") == "not sent yet"
    p.fill("#key", "x")
    assert p.is_enabled("#run")
    p.fill("#key", "")
    assert p.is_disabled("#run")
    # the key is in no storage, cookie or URL
    stored = p.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]


def test_a_chat_streams_token_by_token_and_the_curl_is_what_was_sent(
    pg: Gateway, visit: Visit
) -> None:
    p = visit.page
    key = db(pg.new_key)
    models = enter_key(visit, key)
    assert "llama3.2:latest" in models
    p.select_option("#model", "llama3.2:latest")
    body = {
        "model": "llama3.2:latest",
        "messages": [{"role": "user", "content": "Tell me about gateways"}],
        "stream": True,
        "options": {"num_predict": 12, "mock_frame_delay_ms": 250},
    }
    sent_body = set_body(visit, body)
    with p.expect_request(lambda r: urlsplit(r.url).path == "/api/chat") as seen:
        p.click("#run")
    observed: list[str] = []
    deadline = time.monotonic() + 30
    while finished(visit) is None and time.monotonic() < deadline:
        text = p.inner_text("#text")
        if not observed or text != observed[-1]:
            observed.append(text)
        time.sleep(0.05)
    status = poll(lambda: finished(visit), 30)
    assert status.startswith("HTTP 200 OK")
    final = p.inner_text("#text")
    growing = [t for t in observed if t]
    assert len(growing) >= 4, observed  # several observations while the stream ran
    assert all(final.startswith(t) for t in growing)  # each one a prefix of the next
    raw = p.inner_text("#raw").strip().splitlines()
    frames = [json.loads(line) for line in raw]
    assert frames[-1]["done"] is True
    assert final == "".join(f["message"]["content"] for f in frames)
    request = seen.value
    assert request.post_data == sent_body
    assert request.headers["authorization"] == f"Bearer {key}"
    assert request.url == f"{pg.url}/api/chat"
    assert p.inner_text("#curl") == curl_of(request)
    # the key lives in the page's memory only: no storage, cookie or URL holds it
    stored = p.evaluate(
        "[localStorage.length, sessionStorage.length, document.cookie, location.href]"
    )
    assert stored == [0, 0, "", f"{pg.url}/playground"]


def test_an_sse_stream_is_shown_as_text(pg: Gateway, visit: Visit) -> None:
    p = visit.page
    enter_key(visit, db(pg.new_key))
    p.click("nav button[data-path='/v1/chat/completions']")
    p.click("#run")
    status = poll(lambda: finished(visit), 30)
    assert status.startswith("HTTP 200 OK")
    assert p.inner_text("#raw").rstrip().endswith("data: [DONE]")
    assert p.inner_text("#text").strip() != ""


def test_a_bad_key_shows_the_401_body_the_client_gets(pg: Gateway, visit: Visit) -> None:
    p = visit.page
    p.fill("#key", WRONG_KEY)
    with p.expect_request(lambda r: urlsplit(r.url).path == "/api/chat") as seen:
        p.click("#run")
    status = poll(lambda: finished(visit), 30)
    assert status.startswith("HTTP 401 Unauthorized")
    direct = httpx.post(
        f"{pg.url}/api/chat",
        content=seen.value.post_data,
        headers={"Authorization": f"Bearer {WRONG_KEY}", "Content-Type": "application/json"},
    )
    assert direct.status_code == 401
    assert p.inner_text("#raw") == direct.text
    assert json.loads(direct.text) == UNAUTHORIZED
    assert "key is missing, malformed, wrong" in p.inner_text("#explain")
    note = poll(lambda: "401" in p.inner_text("#models-note") and p.inner_text("#models-note"))
    assert note == f"/api/tags answered 401: {direct.text}"  # the picker's 401, as sent


def test_a_429_shows_retry_after(pg: Gateway, visit: Visit) -> None:
    p = visit.page
    tenant_id, _ = db(lambda: pg.tenant(allow_all=True))
    key = db(lambda: pg.key(tenant_id, requests_per_minute=1)).full_key
    enter_key(visit, key)
    statuses = []
    for _ in range(2):  # one request a minute: the second is refused, if not the first
        p.click("#run")
        statuses.append(poll(lambda: finished(visit), 30))
        if statuses[-1].startswith("HTTP 429"):
            break
    assert statuses[-1].startswith("HTTP 429 Too Many Requests"), statuses
    headers = dict(
        zip(
            p.eval_on_selector_all("#headers dt", "e => e.map(x => x.textContent)"),
            p.eval_on_selector_all("#headers dd", "e => e.map(x => x.textContent)"),
            strict=True,
        )
    )
    assert int(headers["retry-after"]) > 0
    assert f"Retry-After: {headers['retry-after']} s" in p.inner_text("#explain")


def test_the_model_picker_holds_the_keys_effective_models(pg: Gateway, visit: Visit) -> None:
    models = ["llama3.2", "qwen2.5:0.5b"]
    tenant_id, _ = db(lambda: pg.tenant(allow_all=False, allowed_models=models))
    one = db(lambda: pg.key(tenant_id, allowed_models=["qwen2.5:0.5b"])).full_key
    assert enter_key(visit, one) == ["qwen2.5:0.5b"]
    assert visit.page.input_value("#body").count('"model": "qwen2.5:0.5b"') == 1
    every = db(pg.new_key)
    tags = httpx.get(f"{pg.url}/api/tags", headers={"Authorization": f"Bearer {every}"}).json()
    assert enter_key(visit, every) == [m["name"] for m in tags["models"]]
