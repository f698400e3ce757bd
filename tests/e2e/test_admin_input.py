"""Admin API input the operator did not mean, or a caller forged: forged page tokens and
control characters in free text are INVALID_ARGUMENT with a clear message, change nothing,
and are never an INTERNAL error (issue 11 §11). grpcurl-style calls, as tests/e2e/test_admin.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import httpx
import pytest

from tests.e2e.test_admin import Grpcurl, rpc_error, tenant_name
from tests.gateway_client import Gateway


def token(kind: str, position: Any) -> str:
    """A page token as a client could forge one: the server's own encoding."""
    raw = json.dumps({"k": kind, "p": position}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def invalid(admin: Grpcurl, method: str, body: dict[str, Any]) -> str:
    with pytest.raises(grpc.RpcError) as excinfo:
        admin.call(method, body)
    code, message = rpc_error(excinfo)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    return message


FORGED = [
    ("ListKeys", token("keys", ["2026-01-01T00:00:00+00:00", "not-a-uuid"])),
    ("ListKeys", token("keys", ["2026-01-01T00:00:00+00:00", 5])),
    ("ListKeys", token("keys", ["2026-01-01T00:00:00", "6f1c2a52-0d2c-4c5e-9a43-3c1b1e4a2f10"])),
    ("ListKeys", token("keys", [{"a": 1}, "6f1c2a52-0d2c-4c5e-9a43-3c1b1e4a2f10"])),
    ("ListKeys", token("keys", ["2026-01-01T00:00:00+00:00"])),
    ("ListTenants", token("tenants", ["a\u0000b"])),
    ("ListTenants", token("tenants", [{"name": "x"}])),
    ("ListTenants", token("tenants", ["a", "b"])),
    ("ListTenants", token("keys", ["2026-01-01T00:00:00+00:00", "x"])),
    ("ListTenants", "%%%not-base64%%%"),
    ("ListTenants", base64.urlsafe_b64encode(b"\xff\xfe{").decode()),
]


@pytest.mark.parametrize(
    ("method", "forged"), FORGED, ids=[f"{m}-{i}" for i, (m, _) in enumerate(FORGED)]
)
def test_a_forged_page_token_is_invalid_argument(admin: Grpcurl, method: str, forged: str) -> None:
    message = invalid(admin, method, {"page_token": forged})
    assert message == "page_token is not one this server issued"


def test_a_page_token_the_server_issued_still_pages(admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name})
    for _ in range(3):
        admin.call("CreateKey", {"tenant": name})
    first = admin.call("ListKeys", {"tenant": name, "page_size": 2})
    second = admin.call(
        "ListKeys", {"tenant": name, "page_size": 2, "page_token": first["nextPageToken"]}
    )
    assert len(first["keys"]) == 2 and len(second["keys"]) == 1


# C0 (NUL, TAB, LF, CR, ESC), DEL and C1 (NEL, CSI).
CONTROLS = ["\u0000", "\t", "\n", "\r", "\u001b[31m", "\u007f", "\u0085", "\u009b"]


@pytest.mark.parametrize("control", CONTROLS, ids=[f"U+{ord(c[0]):04X}" for c in CONTROLS])
def test_control_characters_in_free_text_are_invalid_argument_and_change_nothing(
    gw: Gateway, admin: Grpcurl, control: str
) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name, "allow_all": True})
    created = admin.call("CreateKey", {"tenant": name, "name": "ci"})
    key, prefix = created["fullKey"], created["key"]["prefix"]
    text = f"leaked{control}forged line"
    where = f"U+{ord(control[0]):04X}"

    message = invalid(admin, "CreateKey", {"tenant": name, "name": text})
    assert "the key name must not contain control characters" in message and where in message
    message = invalid(admin, "UpdateKey", {"key": prefix, "name": text})
    assert "the key name must not contain control characters" in message
    message = invalid(admin, "RevokeKey", {"key": prefix, "reason": text})
    assert "the reason must not contain control characters" in message
    assert "leaked" not in message  # the value is never repeated
    message = invalid(admin, "DisableTenant", {"tenant": name, "reason": text})
    assert "the reason must not contain control characters" in message
    message = invalid(admin, "GetTenant", {"tenant": f"{name}{control}"})
    assert "the tenant must not contain control characters" in message
    invalid(admin, "CreateTenant", {"name": f"x{control}"})

    # Nothing changed: one key, still named "ci", still working; the tenant still active.
    keys = admin.call("ListKeys", {"tenant": name})["keys"]
    assert [(k["name"], k["status"]) for k in keys] == [("ci", "KEY_STATUS_ACTIVE")]
    assert admin.call("GetTenant", {"tenant": name})["status"] == "TENANT_STATUS_ACTIVE"
    resp = httpx.get(f"{gw.url}/api/tags", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert resp.status_code == 200
    audit = gw.sql(
        "SELECT operation FROM gateway.admin_audit WHERE target = $1 OR target = $2",
        f"tenant:{name}",
        f"key:{prefix}",
    )
    assert sorted(r["operation"] for r in audit) == ["CreateKey", "CreateTenant"]


def test_other_unicode_is_welcome_in_free_text(admin: Grpcurl) -> None:
    name = tenant_name()
    admin.call("CreateTenant", {"name": name})
    created = admin.call("CreateKey", {"tenant": name, "name": "Büro-Schlüssel ✓ 東京"})
    assert created["key"]["name"] == "Büro-Schlüssel ✓ 東京"
    revoked = admin.call("RevokeKey", {"key": created["key"]["prefix"], "reason": "geleakt, ja"})
    assert revoked["revokedReason"] == "geleakt, ja"
