"""Shared helpers of the authz tests (no tests here): callers with their ids, polling, the
authz metrics, direct Redis access."""

from __future__ import annotations

from typing import Any

import httpx

from tests.gateway_client import Caller, Gateway
from tests.polling import poll as poll  # the authz tests' poller, shared with all tests
from tests.redisclient import SyncRedis, sync_client

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "say hello to me"}]}
FORBIDDEN = {"error": "forbidden"}
FORBIDDEN_OPENAI = {
    "error": {"message": "forbidden", "type": "permission_denied", "code": "forbidden"}
}
UNAUTHORIZED = {"error": "invalid or missing API key"}


def caller(gw: Gateway, tenant: dict[str, Any] | None = None, **key: Any) -> Caller:
    """A fresh tenant (allow_all unless told otherwise) with one key."""
    return gw.caller(tenant, **key)


def chat(gw: Gateway, who: Caller | str, **body: Any) -> httpx.Response:
    headers = who.headers if isinstance(who, Caller) else {"Authorization": f"Bearer {who}"}
    payload = {**CHAT, "stream": False, "options": {"num_predict": 2}, **body}
    return httpx.post(f"{gw.url}/api/chat", json=payload, headers=headers, timeout=10)


def argon2_verifies(gw: Gateway) -> float:
    return gw.metric("authz", "authz_argon2_verifications_total")


def rds(gw: Gateway) -> SyncRedis:
    return sync_client(gw.stack, socket_timeout=2)
