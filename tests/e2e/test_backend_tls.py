"""An https:// backend (issue 13, "a hosted Ollama API"): a mock served over TLS with a
certificate for ``localhost`` from the stack's own test CA, with credentials in the backends
file. authz polls its model list over https (it trusts the CA through SSL_CERT_FILE), Envoy
reaches it with verified TLS (the ollama cluster's tls transport socket, its trusted_ca pointed
at the stack's CA bundle) and adds its credentials; the client sees an ordinary answer.

The module's stack shares the session's PostgreSQL and Redis."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from devstack.stack import MockBackend, Stack
from tests.e2e.test_accounting_helpers import audit_rows
from tests.gateway_client import Caller, Gateway, beside

HOSTED_SECRET = "Bearer hosted-secret"
HOSTED = MockBackend(
    "hosted", ("gpt-oss:20b",), headers=(("authorization", HOSTED_SECRET),), tls=True
)


@pytest.fixture(scope="module")
def hosted(stack: Stack) -> Iterator[Gateway]:
    with beside(
        stack,
        mocks=[HOSTED],
        extra_env={"NZ_DISCOVERY_INTERVAL_S": "1"},
    ) as running:
        yield running


@pytest.fixture
def who(hosted: Gateway) -> Caller:
    return hosted.caller()


def mock_requests(gw: Gateway, who: Caller) -> list[dict[str, Any]]:
    """The requests of ``who`` the https mock received, read over https with the stack's CA."""
    trust = ssl.create_default_context(cafile=gw.stack.backend_ca)
    url = f"{gw.stack.backends['hosted']}/_mock/requests"
    log = httpx.get(url, verify=trust, timeout=5).json()
    return [r for r in log if r["headers"].get("x-nz-key-prefix") == who.prefix]


def test_the_backend_is_named_by_an_https_url_the_stack_trusts(hosted: Gateway) -> None:
    url = hosted.stack.backends["hosted"]
    assert url.startswith("https://localhost:")
    assert hosted.stack.backend_ca is not None
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/_mock/info", verify=True, timeout=5)  # a stranger does not trust it


def chat(gw: Gateway, who: Caller) -> tuple[ollama.ChatResponse, list[httpx.Response]]:
    """A chat through the gateway with the official client: its answer, and the HTTP responses
    it got (their headers)."""
    responses: list[httpx.Response] = []
    client = ollama.Client(
        host=gw.url, headers=who.headers, timeout=30, event_hooks={"response": [responses.append]}
    )
    reply = client.chat(
        model="gpt-oss:20b", messages=[{"role": "user", "content": "hi"}], stream=False
    )
    return reply, responses


def test_a_chat_is_answered_by_the_https_backend_with_its_credentials(
    hosted: Gateway, who: Caller
) -> None:
    reply, responses = chat(hosted, who)
    assert reply.model == "gpt-oss:20b"
    assert reply.message.content
    assert [r.headers.get("x-mock-backend") for r in responses] == ["hosted"]
    (request,) = mock_requests(hosted, who)
    assert request["path"] == "/api/chat"
    assert request["headers"]["authorization"] == HOSTED_SECRET
    assert who.key not in str(request["headers"])  # the client's key stays at the gateway


def test_the_audit_row_names_the_https_backend(hosted: Gateway, who: Caller) -> None:
    chat(hosted, who)
    (row,) = audit_rows(hosted, who)
    assert (row["backend"], row["model"], row["attempts"]) == ("hosted", "gpt-oss:20b", 1)


def test_envoy_reaches_the_backend_over_verified_tls(hosted: Gateway, who: Caller) -> None:
    chat(hosted, who)
    stats = hosted.envoy_stats("ssl")
    assert stats["cluster.ollama.ssl.handshake"] >= 1
    # The certificate's chain and its name were checked, and passed.
    assert stats.get("cluster.ollama.ssl.fail_verify_error", 0) == 0
    assert stats.get("cluster.ollama.ssl.fail_verify_san", 0) == 0
