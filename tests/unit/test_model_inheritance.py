"""Key → tenant inheritance of the model grant (``allow_all``, ``allowed_models``), defined once
in ``authz.models.inherit`` and used by Check's principal and the admin API's effective view.
Every expected value is written out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from authz import models
from authz.admin import models as admin_models
from authz.admin.records import KeyRecord, TenantRecord
from authz.models import Inherited, inherit
from authz.principal import from_row

WHEN = datetime(2026, 1, 1, tzinfo=UTC)
TENANT_MODELS = ["llama3", "qwen3:8b"]

# (key allow_all, key models) → what the key ends up with, for a tenant with allow_all=False
# and TENANT_MODELS; and its effective models when the backend hosts DISCOVERED.
DISCOVERED = frozenset({"llama3:latest", "mistral:latest", "qwen3:8b"})
ALL = ("llama3:latest", "mistral:latest", "qwen3:8b")
TENANTS = ("llama3:latest", "qwen3:8b")
CASES = [
    pytest.param(
        None, None, Inherited(False, ("llama3", "qwen3:8b"), "tenant"), TENANTS, id="null"
    ),
    pytest.param(True, None, Inherited(True, ("llama3", "qwen3:8b"), "key"), ALL, id="allow-all"),
    pytest.param(False, None, Inherited(False, ("llama3", "qwen3:8b"), "key"), TENANTS, id="false"),
    pytest.param(
        None, ["mistral"], Inherited(False, ("mistral",), "key"), ("mistral:latest",), id="list"
    ),
    pytest.param(None, [], Inherited(False, (), "key"), (), id="empty-list"),
    pytest.param(True, ["mistral"], Inherited(True, ("mistral",), "key"), ALL, id="both"),
]
PARAMS = ("key_allow_all", "key_models", "want", "effective")


@pytest.mark.parametrize(PARAMS, CASES)
def test_inherit_takes_each_null_from_the_tenant(
    key_allow_all: bool | None,
    key_models: list[str] | None,
    want: Inherited,
    effective: tuple[str, ...],
) -> None:
    assert inherit(False, TENANT_MODELS, key_allow_all, key_models) == want


def test_a_key_may_narrow_an_allow_all_tenant() -> None:
    assert inherit(True, [], False, None) == Inherited(False, (), "key")
    assert inherit(True, [], None, ["llama3"]) == Inherited(True, ("llama3",), "key")
    assert inherit(True, [], None, None) == Inherited(True, (), "tenant")


def _row(key_allow_all: bool | None, key_models: list[str] | None) -> dict[str, Any]:
    """A PRINCIPAL_SQL row as Postgres returns it (only what ``from_row`` reads)."""
    row: dict[str, Any] = {
        "key_id": "k1",
        "prefix": "abcdefghijkl",
        "key_hash": "",
        "status": "active",
        "expires_at": None,
        "scopes": ["chat"],
        "k_allow_all": key_allow_all,
        "k_models": key_models,
        "prompt_log": False,
        "tenant_id": "t1",
        "tenant": "acme",
        "tenant_status": "active",
        "t_allow_all": False,
        "t_models": TENANT_MODELS,
        "allow_cloud": False,
        "default_max_tokens": 1024,
        "keep_alive_min_s": 60,
        "keep_alive_max_s": 1800,
        "max_output_tokens": None,
        "max_num_ctx": None,
        "allowed_options": None,
    }
    for side in ("k", "t"):
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrent",
            "budget_daily",
            "budget_monthly",
            "budget_total",
        ):
            row[f"{side}_{name}"] = None
    return row


@pytest.mark.parametrize(PARAMS, CASES)
def test_checks_principal_inherits_the_same_way(
    key_allow_all: bool | None,
    key_models: list[str] | None,
    want: Inherited,
    effective: tuple[str, ...],
) -> None:
    who = from_row(_row(key_allow_all, key_models))  # type: ignore[arg-type]
    assert who.allow_all is want.allow_all
    assert who.allowed_models == frozenset(want.allowed)
    assert models.effective(who, DISCOVERED) == frozenset(effective)


@pytest.mark.parametrize(PARAMS, CASES)
def test_the_admin_view_reports_the_same_grant_and_its_source(
    key_allow_all: bool | None,
    key_models: list[str] | None,
    want: Inherited,
    effective: tuple[str, ...],
) -> None:
    tenant = TenantRecord(
        id="t1",
        name="acme",
        status="active",
        allow_all=False,
        allowed_models=tuple(TENANT_MODELS),
        allow_cloud=False,
        limits={},
        ceilings={},
        created_at=WHEN,
        updated_at=WHEN,
    )
    key = KeyRecord(
        id="k1",
        tenant_id="t1",
        tenant="acme",
        prefix="abcdefghijkl",
        name="",
        status="active",
        scopes=("chat",),
        allow_all=key_allow_all,
        allowed_models=None if key_models is None else tuple(key_models),
        prompt_log=False,
        limits={},
        ceilings={},
        expires_at=None,
        created_at=WHEN,
        updated_at=WHEN,
        revoked_at=None,
        revoked_reason=None,
    )
    policy = admin_models.policy(tenant, key, {"http://ollama:11434": DISCOVERED})
    assert (policy.allow_all, policy.source, policy.models) == (
        want.allow_all,
        want.source,
        effective,
    )
    assert policy.allowed == (() if want.allow_all else want.allowed)
