"""The admin API as an operator meets it: grpcurl-style calls through server reflection (no
generated stubs here), the effects through Envoy's listener, rows in Postgres."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from gateway.backends import from_urls
from tests.e2e.test_authz_support import FORBIDDEN
from tests.gateway_client import Gateway
from tests.polling import poll

SERVICE = "neuronetz.admin.v1.AdminService"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "count to three please"}]}
_seq = iter(range(1, 1_000_000))


class Grpcurl:
    """What grpcurl does: descriptors from server reflection, requests from JSON."""

    def __init__(self, addr: str, token: str) -> None:
        self.channel = grpc.insecure_channel(addr)
        # The admin API starts just after authz's Check server: wait until it listens.
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.token = token
        self.db = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def services(self) -> list[str]:
        return list(self.db.get_services())

    def call(self, method: str, body: dict[str, Any] | None = None, **opts: Any) -> Any:
        """``grpcurl -H 'authorization: Bearer …' -d '<json>' addr Service/Method``."""
        desc = self.pool.FindServiceByName(SERVICE).methods_by_name[method]
        request_class = message_factory.GetMessageClass(desc.input_type)
        response_class = message_factory.GetMessageClass(desc.output_type)
        request = json_format.Parse(json.dumps(body or {}), request_class())
        stub: Any = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        token = opts.get("token", self.token)
        metadata = opts.get("metadata", [("authorization", f"Bearer {token}")])
        response = stub(request, metadata=metadata, timeout=10)
        return json_format.MessageToDict(response)

    def raw(self, method: str, body: dict[str, Any] | None = None) -> str:
        """The response exactly as grpcurl would print it (JSON text)."""
        return json.dumps(self.call(method, body))


@contextmanager
def admin_of(gw: Gateway) -> Iterator[Grpcurl]:
    """grpcurl at ``gw``'s admin API with its operator token; the channel closed at the end."""
    client = Grpcurl(f"127.0.0.1:{gw.stack.ports['admin']}", gw.stack.admin_token)
    try:
        yield client
    finally:
        client.channel.close()


def tenant_name() -> str:
    return f"adm-{time.monotonic_ns() % 10**9}-{next(_seq)}"


def rpc_error(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, str]:
    err: Any = excinfo.value
    return err.code(), err.details()


def chat(gw: Gateway, key: str, **extra: Any) -> httpx.Response:
    body = {**CHAT, "stream": False, **extra}
    return httpx.post(f"{gw.url}/api/chat", json=body, headers={"Authorization": f"Bearer {key}"})


# -- grpcurl-friendliness -------------------------------------------------------------------


def test_reflection_lists_the_admin_service_health_and_reflection(gw: Gateway) -> None:
    # No token: reflection and health are open (they reveal the schema, not data).
    client = Grpcurl(f"127.0.0.1:{gw.stack.ports['admin']}", "")
    try:
        services = client.services()
        assert SERVICE in services
        assert "grpc.health.v1.Health" in services
        assert any(s.startswith("grpc.reflection.") for s in services)
        methods = set(client.pool.FindServiceByName(SERVICE).methods_by_name)
        assert {
            "CreateTenant",
            "GetTenant",
            "ListTenants",
            "UpdateTenant",
            "DisableTenant",
            "CreateKey",
            "GetKey",
            "ListKeys",
            "UpdateKey",
            "RevokeKey",
            "ExpireKey",
            "SetBudget",
            "GetBudget",
            "ListModels",
            "GetEffectiveModels",
            "GetUsage",
            "ProbeBackends",
        } <= methods
        health = health_pb2_grpc.HealthStub(client.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        client.channel.close()


def test_create_chat_revoke_usage_the_grpcurl_way(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    tenant = admin.call("CreateTenant", {"name": name, "allow_all": True})
    assert tenant["name"] == name
    assert tenant["status"] == "TENANT_STATUS_ACTIVE"  # enums by name
    created = admin.call("CreateKey", {"tenant": name, "name": "ci"})
    full_key, key = created["fullKey"], created["key"]
    assert full_key.startswith(f"nz_{key['prefix']}_")
    assert key["status"] == "KEY_STATUS_ACTIVE"
    assert key["scopes"] == ["SCOPE_CHAT", "SCOPE_EMBEDDINGS", "SCOPE_MODELS"]
    assert key["createdAt"].endswith("Z")  # google.protobuf.Timestamp, RFC 3339

    resp = chat(gw, full_key, options={"num_predict": 5})
    assert resp.status_code == 200, resp.text
    final = resp.json()
    tokens_in, tokens_out = final["prompt_eval_count"], final["eval_count"]
    assert (tokens_in, tokens_out) == (4, 5)

    revoked = admin.call("RevokeKey", {"key": key["prefix"], "reason": "leaked in CI log"})
    assert revoked["status"] == "KEY_STATUS_REVOKED"
    assert revoked["revokedReason"] == "leaked in CI log"
    started = time.monotonic()
    poll(
        lambda: chat(gw, full_key).status_code == 401,
        timeout_s=1.0,
        what="a revoked key refused (401) within a second of RevokeKey",
    )
    assert time.monotonic() - started <= 1.0 + 0.5  # the last request itself may take a moment

    def usage() -> dict[str, Any] | None:
        report = admin.call("GetUsage", {"key": key["id"]})
        total = report.get("total", {})
        return report if int(total.get("tokensTotal", 0)) >= tokens_in + tokens_out else None

    report = poll(usage, timeout_s=5.0, interval_s=0.2, what="GetUsage counting the request")
    total = report["total"]
    assert int(total["tokensIn"]) == tokens_in
    assert int(total["tokensOut"]) == tokens_out
    by_model = admin.call(
        "GetUsage", {"tenant": name, "group_by": ["USAGE_DIMENSION_KEY", "USAGE_DIMENSION_MODEL"]}
    )
    row = next(r for r in by_model["rows"] if r.get("keyPrefix") == key["prefix"])
    assert row["model"].startswith("llama3.2")
    assert int(row["tokensTotal"]) == tokens_in + tokens_out

    audit = gw.sql(
        "SELECT operation, target FROM gateway.admin_audit WHERE target IN ($1, $2) ORDER BY id",
        f"tenant:{name}",
        f"key:{key['prefix']}",
    )
    assert [(r["operation"], r["target"]) for r in audit] == [
        ("CreateTenant", f"tenant:{name}"),
        ("CreateKey", f"key:{key['prefix']}"),
        ("RevokeKey", f"key:{key['prefix']}"),
    ]
    revocations = gw.sql(
        "SELECT reason FROM gateway.revocations WHERE key_id = $1::uuid", key["id"]
    )
    assert [r["reason"] for r in revocations] == ["leaked in CI log"]


def test_the_full_key_appears_in_exactly_one_response(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name, "allowed_models": {"models": ["llama3.2"]}})
    created = admin.raw("CreateKey", {"tenant": name, "limits": {"budget_daily": 1000}})
    full_key = json.loads(created)["fullKey"]
    key = json.loads(created)["key"]
    secret = full_key.split("_", 2)[2]
    assert created.count(full_key) == 1
    assert chat(gw, full_key).status_code == 200
    (row,) = gw.sql("SELECT key_hash FROM gateway.api_keys WHERE id = $1::uuid", key["id"])
    stored_hash = row["key_hash"]
    later = [
        admin.raw("GetKey", {"key": key["prefix"]}),
        admin.raw("GetKey", {"key": key["id"]}),
        admin.raw("ListKeys", {"tenant": name}),
        admin.raw("ListKeys", {}),
        admin.raw("GetTenant", {"tenant": name}),
        admin.raw("UpdateKey", {"key": key["id"], "name": "renamed"}),
        admin.raw("GetBudget", {"key": key["id"]}),
        admin.raw("SetBudget", {"key": key["id"], "period": "PERIOD_TOTAL", "tokens": 5}),
        admin.raw("GetEffectiveModels", {"key": key["prefix"]}),
        admin.raw("GetUsage", {"tenant": name, "group_by": ["USAGE_DIMENSION_KEY"]}),
        admin.raw("ExpireKey", {"key": key["id"]}),
        admin.raw("RevokeKey", {"key": key["id"], "reason": "test"}),
        admin.raw("RevokeKey", {"key": key["id"], "reason": "again"}),
    ]
    for text in later:
        assert secret not in text
        assert stored_hash not in text
        assert "argon2" not in text
    assert key["prefix"] in later[0]
    # Nor does it reach the audit trail or the service's log.
    details = gw.sql("SELECT details::text AS d FROM gateway.admin_audit")
    assert not [r for r in details if secret in r["d"] or "argon2" in r["d"]]
    log = (gw.stack.work_dir / "logs" / "authz.log").read_text(errors="replace")
    assert secret not in log
    assert gw.stack.admin_token not in log


def test_a_keys_last_use_is_its_newest_authenticated_request(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name, "allow_all": True})
    created = admin.call("CreateKey", {"tenant": name, "name": "last-use"})
    full_key, prefix = created["fullKey"], created["key"]["prefix"]
    assert "lastUsedAt" not in created["key"]  # never used

    def last_used() -> str | None:
        found: str | None = admin.call("GetKey", {"key": prefix}).get("lastUsedAt")
        return found

    def newest_audited() -> datetime:
        rows = gw.sql("SELECT max(ts) AS ts FROM gateway.audit_log WHERE key_prefix = $1", prefix)
        newest: datetime = rows[0]["ts"]
        return newest

    assert chat(gw, full_key).status_code == 200
    first = poll(last_used, timeout_s=5.0, interval_s=0.1, what="lastUsedAt after a request")
    assert _instant(first) == newest_audited()

    # A request the key authenticated but policy refused is a use (403: model not allowed).
    admin.call("UpdateKey", {"key": prefix, "allow_all": False, "allowed_models": {"models": []}})

    def refused() -> httpx.Response | None:
        reply = chat(gw, full_key)
        return reply if reply.status_code == 403 else None

    reply = poll(refused, timeout_s=2.0, what="the key refused the model after UpdateKey")
    assert reply.json() == FORBIDDEN

    def moved_on() -> str | None:
        found = last_used()
        return found if found != first else None

    moved = poll(moved_on, timeout_s=5.0, interval_s=0.1, what="lastUsedAt moved by the 403")
    assert _instant(moved) == newest_audited() > _instant(first)

    # The right prefix with a wrong secret is not the key's use: nothing moves. (A 401 is
    # audited in a per-minute aggregate, accounting/denials.py: wait for its count to grow.)
    since = datetime.now(UTC) - timedelta(minutes=2)

    def denied_401() -> int:
        rows = gw.sql(
            "SELECT coalesce(sum(count), 0) AS n FROM gateway.audit_log"
            " WHERE status = 401 AND ts >= $1",
            since,
        )
        count: int = rows[0]["n"]
        return count

    time.sleep(0.3)  # earlier 401s flushed (the audit buffer writes every 0.1 s)
    before = denied_401()
    forged = full_key[:-4] + ("aaaa" if not full_key.endswith("aaaa") else "bbbb")
    assert chat(gw, forged).status_code == 401
    poll(lambda: denied_401() > before, timeout_s=5.0, interval_s=0.1, what="the 401 audited")
    time.sleep(0.3)  # what that batch would have updated, it has
    assert last_used() == moved


def _instant(rfc3339: str) -> datetime:
    """A google.protobuf.Timestamp's JSON (RFC 3339, ``Z``) as a datetime."""
    return datetime.fromisoformat(rfc3339)


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "Bearer wrong-token")],
        [("authorization", "Basic YWRtaW46YWRtaW4=")],
        [("authorization", "Bearer ")],
    ],
    ids=["missing", "wrong", "basic", "empty"],
)
def test_missing_or_wrong_admin_token_is_unauthenticated(
    gw: Gateway, admin: Grpcurl, metadata: list[tuple[str, str]]
) -> None:
    name = tenant_name()
    with pytest.raises(grpc.RpcError) as excinfo:
        admin.call("CreateTenant", {"name": name}, metadata=metadata)
    code, message = rpc_error(excinfo)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "token" in message
    with pytest.raises(grpc.RpcError) as excinfo:
        admin.call("ListKeys", {}, metadata=metadata)
    assert rpc_error(excinfo)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert not gw.sql("SELECT 1 FROM gateway.tenants WHERE name = $1", name)


@pytest.mark.parametrize(
    ("method", "body", "words"),
    [
        ("CreateTenant", {"name": "Not A Valid Name!"}, "tenant name"),
        ("CreateTenant", {"name": "", "allow_all": True}, "tenant name"),
        ("CreateTenant", {"name": "x-neg", "limits": {"budget_daily": -1}}, "budget_daily"),
        ("CreateTenant", {"name": "x-model", "allowed_models": {"models": ["a b"]}}, "model"),
        (
            "CreateTenant",
            {"name": "x-ka", "defaults": {"keep_alive_min_s": 100, "keep_alive_max_s": 10}},
            "keep_alive",
        ),
        ("CreateKey", {"tenant": "{tenant}", "scopes": ["SCOPE_UNSPECIFIED"]}, "scope"),
        ("CreateKey", {"tenant": "{tenant}", "expires_at": "2001-01-01T00:00:00Z"}, "past"),
        ("RevokeKey", {"key": "{key}", "reason": "   "}, "reason"),
        ("SetBudget", {"tenant": "{tenant}", "tokens": 5}, "period"),
        ("SetBudget", {"period": "PERIOD_DAILY", "tokens": 5}, "tenant or a key"),
        ("ListKeys", {"page_size": -1}, "page_size"),
        ("ListKeys", {"page_token": "bm90LWEtdG9rZW4"}, "page_token"),
        ("UpdateTenant", {"tenant": "{tenant}"}, "nothing to change"),
        ("UpdateTenant", {"tenant": "{tenant}", "update_mask": "noSuchField"}, "update_mask"),
        ("UpdateKey", {"key": "{key}", "limits": {"max_concurrent": 1 << 40}}, "max_concurrent"),
        ("GetUsage", {"period": "PERIOD_DAILY", "start": "2030-01-01T00:00:00Z"}, "period"),
        ("ProbeBackends", {"timeout": "100s"}, "timeout"),
    ],
)
def test_bad_arguments_are_invalid_argument_with_a_message(
    gw: Gateway, admin: Grpcurl, method: str, body: dict[str, Any], words: str
) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name})
    key = admin.call("CreateKey", {"tenant": name})["key"]["prefix"]
    filled = json.loads(json.dumps(body).replace("{tenant}", name).replace("{key}", key))
    with pytest.raises(grpc.RpcError) as excinfo:
        admin.call(method, filled)
    code, message = rpc_error(excinfo)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert words in message


def test_not_found_and_already_exists(admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name})
    with pytest.raises(grpc.RpcError) as excinfo:
        admin.call("CreateTenant", {"name": name})
    assert rpc_error(excinfo) == (grpc.StatusCode.ALREADY_EXISTS, f"tenant {name!r} already exists")
    for method, body in [
        ("GetTenant", {"tenant": "no-such-tenant"}),
        ("GetTenant", {"tenant": "00000000-0000-0000-0000-000000000000"}),
        ("GetKey", {"key": "aaaaaaaaaaaa"}),
        ("RevokeKey", {"key": "00000000-0000-0000-0000-000000000000", "reason": "x"}),
        ("CreateKey", {"tenant": "no-such-tenant"}),
        ("GetUsage", {"key": "aaaaaaaaaaaa"}),
    ]:
        with pytest.raises(grpc.RpcError) as excinfo:
            admin.call(method, body)
        code, message = rpc_error(excinfo)
        assert code == grpc.StatusCode.NOT_FOUND, (method, message)
        assert "not found" in message


def test_a_leaked_full_key_can_be_revoked_as_it_is_and_is_never_echoed(
    gw: Gateway, admin: Grpcurl
) -> None:
    full_key = gw.new_key()
    secret = full_key.split("_", 2)[2]
    assert chat(gw, full_key).status_code == 200
    with pytest.raises(grpc.RpcError) as excinfo:
        admin.call("GetTenant", {"tenant": full_key})
    code, message = rpc_error(excinfo)
    assert code == grpc.StatusCode.NOT_FOUND
    assert secret not in message
    forged = full_key[: -len(secret)] + "A" * len(secret)
    assert admin.call("GetKey", {"key": forged})["prefix"] == full_key.split("_")[1]
    revoked = admin.raw("RevokeKey", {"key": full_key, "reason": "found on a pastebin"})
    assert secret not in revoked
    assert json.loads(revoked)["status"] == "KEY_STATUS_REVOKED"
    assert poll(lambda: chat(gw, full_key).status_code == 401, timeout_s=1.0)


# -- tenants, keys, pagination --------------------------------------------------------------


def test_list_keys_pages_through_every_key_once(admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name})
    made = {admin.call("CreateKey", {"tenant": name})["key"]["id"] for _ in range(5)}
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = admin.call("ListKeys", {"tenant": name, "page_size": 2, "page_token": token})
        pages += 1
        seen.extend(k["id"] for k in page.get("keys", []))
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(made)
    # Revoked keys are left out unless asked for.
    admin.call("RevokeKey", {"key": seen[0], "reason": "rotation"})
    active = admin.call("ListKeys", {"tenant": name})["keys"]
    assert seen[0] not in {k["id"] for k in active}
    every = admin.call("ListKeys", {"tenant": name, "include_revoked": True})["keys"]
    assert len(every) == 5


def test_list_tenants_pages_in_name_order(admin: Grpcurl) -> None:
    base = tenant_name()
    names = [f"{base}-{i}" for i in range(3)]
    for n in names:
        admin.call("CreateTenant", {"name": n})
    seen: list[str] = []
    token = ""
    while True:
        page = admin.call("ListTenants", {"page_size": 1, "page_token": token})
        seen.extend(t["name"] for t in page["tenants"])
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == sorted(seen)
    assert [n for n in seen if n.startswith(base)] == names


def test_update_tenant_sets_and_clears_limits(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name, "limits": {"requests_per_minute": 60}})
    updated = admin.call(
        "UpdateTenant",
        {
            "tenant": name,
            "limits": {"budget_monthly": 5000},
            "defaults": {"default_max_tokens": 64},
        },
    )
    assert updated["limits"] == {"requestsPerMinute": "60", "budgetMonthly": "5000"}
    assert updated["defaults"]["defaultMaxTokens"] == "64"
    # Named in the mask but not set: cleared (no limit); the other limit stays.
    cleared = admin.call(
        "UpdateTenant", {"tenant": name, "update_mask": "limits.requestsPerMinute,allowAll"}
    )
    assert cleared["limits"] == {"budgetMonthly": "5000"}
    (row,) = gw.sql(
        "SELECT l.requests_per_minute, l.budget_monthly, t.allow_all FROM gateway.tenants t"
        " JOIN gateway.tenant_limits l ON l.tenant_id = t.id WHERE t.name = $1",
        name,
    )
    assert (row["requests_per_minute"], row["budget_monthly"], row["allow_all"]) == (
        None,
        5000,
        False,
    )


def test_update_key_scopes_limits_and_model_inheritance(admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name, "allowed_models": {"models": ["llama3.2"]}})
    key = admin.call("CreateKey", {"tenant": name})["key"]
    assert "allowAll" not in key and "allowedModels" not in key  # inherits
    updated = admin.call(
        "UpdateKey",
        {
            "key": key["prefix"],
            "scopes": ["SCOPE_EMBEDDINGS"],
            "allowed_models": {"models": ["nomic-embed-text"]},
            "limits": {"tokens_per_minute": 1000},
        },
    )
    assert updated["scopes"] == ["SCOPE_EMBEDDINGS"]
    assert updated["allowedModels"] == {"models": ["nomic-embed-text"]}
    assert updated["limits"] == {"tokensPerMinute": "1000"}
    back = admin.call(
        "UpdateKey", {"key": key["id"], "update_mask": "allowedModels,limits.tokensPerMinute"}
    )
    assert "allowedModels" not in back
    assert back.get("limits", {}) == {}
    policy = admin.call("GetEffectiveModels", {"key": key["id"]})
    assert policy["source"] == "tenant"
    assert policy["allowedModels"] == {"models": ["llama3.2"]}


def test_disabled_tenant_and_expired_key_stop_within_a_second(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name, "allow_all": True})
    first = admin.call("CreateKey", {"tenant": name})["fullKey"]
    assert chat(gw, first).status_code == 200  # now cached by authz
    admin.call("DisableTenant", {"tenant": name, "reason": "unpaid"})
    assert poll(lambda: chat(gw, first).status_code == 401, timeout_s=1.0)
    enabled = admin.call("EnableTenant", {"tenant": name})
    assert enabled["status"] == "TENANT_STATUS_ACTIVE"
    second = admin.call("CreateKey", {"tenant": name})
    third = admin.call("CreateKey", {"tenant": name})
    assert chat(gw, third["fullKey"]).status_code == 200
    expired = admin.call("ExpireKey", {"key": third["key"]["id"]})
    assert expired["status"] == "KEY_STATUS_EXPIRED"
    assert poll(lambda: chat(gw, third["fullKey"]).status_code == 401, timeout_s=1.0)
    # The control: the same tenant's key that was left alone works.
    assert chat(gw, second["fullKey"]).status_code == 200
    operations = gw.sql(
        "SELECT operation FROM gateway.admin_audit WHERE target = $1 ORDER BY id", f"tenant:{name}"
    )
    assert [r["operation"] for r in operations] == [
        "CreateTenant",
        "DisableTenant",
        "EnableTenant",
    ]
    (row,) = gw.sql(
        "SELECT details->>'expires_at' AS at FROM gateway.admin_audit"
        " WHERE operation = 'ExpireKey' AND target = $1",
        f"key:{third['key']['prefix']}",
    )
    assert row["at"]


# -- budgets, models, backends --------------------------------------------------------------


def test_budgets_set_and_remaining(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name, "allow_all": True})
    created = admin.call("CreateKey", {"tenant": name})
    status = admin.call("SetBudget", {"tenant": name, "period": "PERIOD_DAILY", "tokens": 100000})
    daily = next(p for p in status["periods"] if p["period"] == "PERIOD_DAILY")
    assert daily["limit"] == "100000"
    assert daily["source"] == "tenant"
    assert daily["remaining"] == "100000"
    assert daily["resetsAt"].endswith("T00:00:00Z")
    total = next(p for p in status["periods"] if p["period"] == "PERIOD_TOTAL")
    assert "limit" not in total and "resetsAt" not in total

    resp = chat(gw, created["fullKey"], options={"num_predict": 6})
    assert resp.status_code == 200
    spent = resp.json()["prompt_eval_count"] + resp.json()["eval_count"]

    def remaining() -> dict[str, Any] | None:
        budget = admin.call("GetBudget", {"key": created["key"]["prefix"]})
        period = next(p for p in budget["periods"] if p["period"] == "PERIOD_DAILY")
        return period if period["remaining"] == str(100000 - spent) else None

    found = poll(remaining, timeout_s=5.0, interval_s=0.2, what="GetBudget showing the spend")
    assert found["used"] == str(spent)
    assert "reserved" not in found  # nothing in flight: 0, omitted like grpcurl does

    # A request in flight holds a reservation that GetBudget shows (live Redis counters).
    body = {**CHAT, "options": {"num_predict": 8, "mock_frame_delay_ms": 150}}
    headers = {"Authorization": f"Bearer {created['fullKey']}"}
    with httpx.stream("POST", f"{gw.url}/api/chat", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(lines)  # the first frame: the request is admitted and streaming
        in_flight = admin.call("GetBudget", {"tenant": name})
        daily = next(p for p in in_flight["periods"] if p["period"] == "PERIOD_DAILY")
        assert int(daily.get("reserved", 0)) > 0, daily
        assert int(daily["remaining"]) == 100000 - spent - int(daily["reserved"])
        for _ in lines:
            pass

    own = admin.call(
        "SetBudget", {"key": created["key"]["id"], "period": "PERIOD_DAILY", "tokens": 50}
    )
    daily = next(p for p in own["periods"] if p["period"] == "PERIOD_DAILY")
    assert (daily["limit"], daily["source"]) == ("50", "key")
    cleared = admin.call("SetBudget", {"key": created["key"]["id"], "period": "PERIOD_DAILY"})
    daily = next(p for p in cleared["periods"] if p["period"] == "PERIOD_DAILY")
    assert (daily["limit"], daily["source"]) == ("100000", "tenant")


# The mock's installed models (devstack/mock_ollama/models.py), written out: three local, one cloud.
MOCK_LOCAL = ["llama3.2:latest", "nomic-embed-text:latest", "qwen2.5:0.5b"]
MOCK_CLOUD = "gpt-oss:20b-cloud"


def needs_the_mock(gw: Gateway) -> None:
    if "mock_ollama" not in gw.stack.procs:
        pytest.skip("needs the mock's models (a cloud model among them)")


def test_models_discovered_and_effective(gw: Gateway, admin: Grpcurl) -> None:
    needs_the_mock(gw)
    listed = admin.call("ListModels", {})["backends"]
    # One backend named "ollama" at priority 0: JSON leaves a zero priority out, as grpcurl does.
    assert listed == [
        {
            "backend": gw.stack.ollama_urls[0],
            "name": "ollama",
            "live": True,
            "models": [MOCK_CLOUD, *MOCK_LOCAL],
        }
    ]
    by_name = admin.call("ListModels", {"backend": "ollama"})["backends"]
    by_url = admin.call("ListModels", {"backend": gw.stack.ollama_urls[0]})["backends"]
    assert by_name == by_url == listed
    with pytest.raises(grpc.RpcError) as excinfo:
        admin.call("ListModels", {"backend": "no-such-backend"})
    assert rpc_error(excinfo) == (grpc.StatusCode.NOT_FOUND, "no backend 'no-such-backend'")

    name = tenant_name()
    admin.call(
        "CreateTenant",
        {"name": name, "allowed_models": {"models": ["llama3.2", "not-installed:7b"]}},
    )
    policy = admin.call("GetEffectiveModels", {"tenant": name})
    assert policy["models"] == ["llama3.2:latest"]
    assert policy["source"] == "tenant"
    everything = admin.call(
        "UpdateTenant", {"tenant": name, "allow_all": True, "update_mask": "allowAll"}
    )
    assert everything["allowAll"] is True
    policy = admin.call("GetEffectiveModels", {"tenant": name})
    assert policy["models"] == MOCK_LOCAL  # no cloud model without the opt-in
    admin.call("UpdateTenant", {"tenant": name, "allow_cloud": True, "update_mask": "allowCloud"})
    policy = admin.call("GetEffectiveModels", {"tenant": name})
    assert policy["models"] == [MOCK_CLOUD, *MOCK_LOCAL]


@pytest.mark.parametrize("allowed", [None, [MOCK_CLOUD, "llama3.2"]], ids=["all", "listed"])
def test_a_cloud_model_needs_the_opt_in_in_the_admin_view_and_at_check(
    gw: Gateway, admin: Grpcurl, allowed: list[str] | None
) -> None:
    needs_the_mock(gw)
    models = {"allow_all": True} if allowed is None else {"allowed_models": {"models": allowed}}
    local = MOCK_LOCAL if allowed is None else ["llama3.2:latest"]
    keys = {}
    for opted_in in (False, True):
        name = tenant_name()
        admin.call("CreateTenant", {"name": name, "allow_cloud": opted_in, **models})
        key = admin.call("CreateKey", {"tenant": name})
        keys[opted_in] = key["fullKey"]
        want = [MOCK_CLOUD, *local] if opted_in else local
        assert admin.call("GetEffectiveModels", {"tenant": name})["models"] == want
        assert admin.call("GetEffectiveModels", {"key": key["key"]["id"]})["models"] == want

    denied = chat(gw, keys[False], model=MOCK_CLOUD, options={"num_predict": 2})
    assert (denied.status_code, denied.json()) == (403, FORBIDDEN)
    allowed_resp = chat(gw, keys[True], model=MOCK_CLOUD, options={"num_predict": 2})
    assert allowed_resp.status_code == 200, allowed_resp.text
    assert allowed_resp.json()["model"] == MOCK_CLOUD
    local_resp = chat(gw, keys[False], options={"num_predict": 2})  # llama3.2: still fine
    assert local_resp.status_code == 200, local_resp.text


def test_probe_backends_reports_version_and_models(gw: Gateway, admin: Grpcurl) -> None:
    found = admin.call("ProbeBackends", {"timeout": "2s"})["backends"]
    # The default stack: one backend "ollama" at priority 0 (JSON leaves a zero out).
    configured = [(b.name, b.url, b.priority) for b in from_urls(gw.stack.ollama_urls)]
    assert [(b["name"], b["url"], b.get("priority", 0)) for b in found] == configured
    for backend in found:
        assert backend["reachable"] is True
        assert backend["version"]
        assert backend["modelCount"] >= 1
        assert "error" not in backend


def test_database_down_is_unavailable_and_changes_nothing(gw: Gateway, admin: Grpcurl) -> None:
    name = tenant_name()
    postgres = gw.managed("postgres")
    assert postgres.popen is not None
    # A fast shutdown (SIGINT): SIGTERM would wait for every client to disconnect first.
    os.killpg(postgres.popen.pid, signal.SIGINT)
    postgres.popen.wait(10)
    postgres.stop()
    try:
        for method, body in [
            ("CreateTenant", {"name": name}),
            ("ListKeys", {}),
            ("GetUsage", {}),
        ]:
            with pytest.raises(grpc.RpcError) as excinfo:
                admin.call(method, body)
            code, message = rpc_error(excinfo)
            assert code == grpc.StatusCode.UNAVAILABLE, (method, code, message)
            assert message == "the database is unavailable"
    finally:
        postgres.start(60)
    poll(
        lambda: _tenant_missing(admin, name),
        timeout_s=10.0,
        interval_s=0.2,
        what="the admin API answering again after Postgres came back",
    )


def _tenant_missing(admin: Grpcurl, name: str) -> bool:
    try:
        admin.call("GetTenant", {"tenant": name})
    except grpc.RpcError as exc:
        return bool(exc.code() == grpc.StatusCode.NOT_FOUND)
    return False
