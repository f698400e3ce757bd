"""The operator CLI: ``neuronetz-gateway <subcommand>`` as a subprocess against the running
admin API, JSON on stdout, errors as JSON on stderr. It has no database URL to talk to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import grpc
import httpx
import pytest

from tests.gateway_client import Gateway

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def run(gw: Gateway, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NZ_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["NZ_ADMIN_ADDR"] = f"127.0.0.1:{gw.stack.ports['admin']}"
    env["NZ_ADMIN_TOKEN"] = gw.stack.admin_token if token is None else token
    return subprocess.run(
        [sys.executable, "-m", "neuronetz_gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def ok(gw: Gateway, *args: str) -> Any:
    result = run(gw, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def tenant(gw: Gateway) -> str:
    # The admin API starts just after authz's Check server: wait until it listens.
    with grpc.insecure_channel(f"127.0.0.1:{gw.stack.ports['admin']}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
    name = f"cli-{time.monotonic_ns() % 10**9}"
    created = ok(gw, "create-tenant", name, "--model", "llama3.2", "--rpm", "100")
    assert created["name"] == name
    assert created["allowed_models"] == {"models": ["llama3.2"]}
    assert created["limits"]["requests_per_minute"] == 100
    return name


def test_create_key_prints_the_key_once_and_list_keys_never(gw: Gateway, tenant: str) -> None:
    created = ok(gw, "create-key", tenant, "--name", "laptop", "--scope", "chat", "--tpm", "500")
    full_key = created["full_key"]
    assert created["key"]["scopes"] == ["SCOPE_CHAT"]
    assert created["key"]["limits"]["tokens_per_minute"] == 500
    resp = httpx.post(
        f"{gw.url}/api/chat", json=CHAT, headers={"Authorization": f"Bearer {full_key}"}
    )
    assert resp.status_code == 200, resp.text
    listed = run(gw, "list-keys", "--tenant", tenant)
    assert listed.returncode == 0, listed.stderr
    assert created["key"]["prefix"] in listed.stdout
    assert full_key.split("_", 2)[2] not in listed.stdout
    assert [k["name"] for k in json.loads(listed.stdout)["keys"]] == ["laptop"]


def test_set_budget_set_models_list_models_and_usage(gw: Gateway, tenant: str) -> None:
    budget = ok(gw, "set-budget", "--tenant", tenant, "--period", "monthly", "--tokens", "9000")
    monthly = next(p for p in budget["periods"] if p["period"] == "PERIOD_MONTHLY")
    assert monthly["limit"] == 9000
    cleared = ok(gw, "set-budget", "--tenant", tenant, "--period", "monthly", "--clear")
    monthly = next(p for p in cleared["periods"] if p["period"] == "PERIOD_MONTHLY")
    assert "limit" not in monthly

    key = ok(gw, "create-key", tenant)["key"]
    narrowed = ok(gw, "set-models", "--key", key["prefix"], "--model", "no-such-model")
    assert narrowed["allow_all"] is False
    assert ok(gw, "list-models", "--key", key["prefix"])["models"] == []
    inherited = ok(gw, "set-models", "--key", key["prefix"], "--inherit")
    assert "allow_all" not in inherited
    assert ok(gw, "list-models", "--key", key["prefix"])["models"] == ["llama3.2:latest"]
    ok(gw, "set-models", "--tenant", tenant, "--allow-all")
    assert ok(gw, "list-models", "--tenant", tenant)["allow_all"] is True
    backends = ok(gw, "list-models")["backends"]
    assert {b["backend"] for b in backends} == set(gw.stack.ollama_urls)

    usage = ok(gw, "show-usage", "--tenant", tenant, "--period", "daily", "--by", "key")
    assert "rows" in usage and "total" in usage
    assert usage["start"].endswith("T00:00:00Z")


def test_probe_backends_and_revoke_key(gw: Gateway, tenant: str) -> None:
    probed = ok(gw, "probe-backends", "--timeout", "2")["backends"]
    assert all(b["reachable"] and b["version"] for b in probed)
    key = ok(gw, "create-key", tenant)["key"]
    missing_reason = run(gw, "revoke-key", key["prefix"])
    assert missing_reason.returncode == 2  # argparse: --reason is required
    revoked = ok(gw, "revoke-key", key["prefix"], "--reason", "rotated")
    assert revoked["status"] == "KEY_STATUS_REVOKED"


def test_admin_call_reaches_any_method(gw: Gateway, tenant: str) -> None:
    found = ok(gw, "admin-call", "GetTenant", json.dumps({"tenant": tenant}))
    assert found["name"] == tenant


def test_errors_are_json_on_stderr(gw: Gateway, tenant: str) -> None:
    wrong = run(gw, "list-keys", token="not-the-token")
    assert wrong.returncode == 1
    assert json.loads(wrong.stderr)["error"]["code"] == "UNAUTHENTICATED"
    assert wrong.stdout == ""
    duplicate = run(gw, "create-tenant", tenant)
    assert duplicate.returncode == 1
    assert json.loads(duplicate.stderr)["error"] == {
        "code": "ALREADY_EXISTS",
        "message": f"tenant {tenant!r} already exists",
    }
    bad = run(gw, "create-tenant", "Bad Name")
    assert json.loads(bad.stderr)["error"]["code"] == "INVALID_ARGUMENT"
