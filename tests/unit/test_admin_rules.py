"""The admin API's plain rules without a server: update masks, token check, page tokens,
usage roll-ups."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from authz.admin import pages
from authz.admin.auth import TokenCheck, Verdict
from authz.admin.convert import key_changes, tenant_changes
from authz.admin.errors import InvalidArgument
from authz.admin.usage import Dimension, UsageRow, roll_up
from authz.admin.validation import check_limits, check_tenant_name
from protos.neuronetz.admin.v1 import admin_pb2 as pb


def test_without_a_mask_only_present_fields_change() -> None:
    request = pb.UpdateTenantRequest(
        tenant="acme", limits=pb.Limits(budget_daily=0), allow_cloud=False
    )
    assert tenant_changes(request) == {"budget_daily": 0, "allow_cloud": False}


def test_a_mask_writes_exactly_the_named_fields_and_clears_unset_ones() -> None:
    request = pb.UpdateTenantRequest(
        tenant="acme",
        limits=pb.Limits(budget_daily=10, budget_total=99),
        update_mask=field_mask_pb2.FieldMask(
            paths=["limits.budget_daily", "limits.requests_per_minute", "allowed_models"]
        ),
    )
    assert tenant_changes(request) == {
        "budget_daily": 10,
        "requests_per_minute": None,
        "allowed_models": None,
    }
    whole = pb.UpdateKeyRequest(
        key="k", update_mask=field_mask_pb2.FieldMask(paths=["limits", "allow_all"])
    )
    changes = key_changes(whole)
    assert changes["allow_all"] is None
    assert {k for k, v in changes.items() if v is None} >= {"budget_daily", "max_concurrent"}


def test_unknown_mask_paths_and_tenant_only_fields_on_keys_are_rejected() -> None:
    for paths in (["nope"], ["limits.nope"], ["defaults.default_max_tokens"]):
        request = pb.UpdateKeyRequest(key="k", update_mask=field_mask_pb2.FieldMask(paths=paths))
        with pytest.raises(InvalidArgument, match="update_mask"):
            key_changes(request)


def test_scopes_change_when_given_or_masked() -> None:
    assert "scopes" not in key_changes(pb.UpdateKeyRequest(key="k"))
    given = pb.UpdateKeyRequest(key="k", scopes=[pb.SCOPE_MODELS])
    assert key_changes(given)["scopes"] == ["models"]
    masked = pb.UpdateKeyRequest(key="k", update_mask=field_mask_pb2.FieldMask(paths=["scopes"]))
    assert key_changes(masked)["scopes"] == []  # provisioning then refuses: no scope at all
    with pytest.raises(InvalidArgument, match="scopes"):
        key_changes(pb.UpdateKeyRequest(key="k", scopes=[pb.SCOPE_UNSPECIFIED]))


def test_limits_and_names_are_validated_with_a_reason() -> None:
    with pytest.raises(InvalidArgument, match="requests_per_minute must be between"):
        check_limits({"requests_per_minute": 1 << 31}, ["requests_per_minute"])
    with pytest.raises(InvalidArgument, match="unknown limits"):
        check_limits({"budget_yearly": 1}, ["budget_daily"])
    assert check_limits({"budget_total": 1 << 40}, ["budget_total"]) == {"budget_total": 1 << 40}
    for bad in ("", "Acme", "-acme", "a" * 64, "acme corp"):
        with pytest.raises(InvalidArgument, match="tenant name"):
            check_tenant_name(bad)


@pytest.mark.parametrize(
    ("metadata", "verdict"),
    [
        ([("authorization", "Bearer s3cret-token")], Verdict.OK),
        ([("authorization", "Bearer s3cret-toke")], Verdict.UNAUTHENTICATED),
        (
            [("authorization", "Bearer s3cret-token"), ("authorization", "Bearer x")],
            Verdict.UNAUTHENTICATED,
        ),
        ([("authorization", "s3cret-token")], Verdict.UNAUTHENTICATED),
        ([], Verdict.UNAUTHENTICATED),
    ],
)
def test_token_check(metadata: list[tuple[str, str]], verdict: Verdict) -> None:
    assert TokenCheck("s3cret-token").check(metadata) is verdict


def test_no_configured_token_denies_everyone() -> None:
    assert TokenCheck("").check([("authorization", "Bearer ")]) is Verdict.DISABLED


def test_page_tokens_round_trip_and_refuse_foreign_ones() -> None:
    token = pages.encode("keys", ["2026-01-01T00:00:00+00:00", "id"])
    assert pages.decode("keys", token) == ["2026-01-01T00:00:00+00:00", "id"]
    assert pages.decode("keys", "") is None
    for bad in (token[:-3], "!!!", pages.encode("tenants", ["x"])):
        with pytest.raises(InvalidArgument, match="page_token"):
            pages.decode("keys", bad)
    assert pages.size(0) == pages.DEFAULT_PAGE_SIZE
    assert pages.size(10_000) == pages.MAX_PAGE_SIZE


def test_usage_rolls_up_to_the_dimensions_asked_for() -> None:
    rows = [
        UsageRow("t1", "a", "k1", "p1", "m1", requests=2, tokens_in=10, tokens_out=5),
        UsageRow("t1", "a", "k1", "p1", "m2", requests=1, denied=1),
        UsageRow("t1", "a", "k2", "p2", "m1", tokens_in=1, tokens_out=1),
        UsageRow("t2", "b", "k3", "p3", "m1", requests=4, tokens_out=7),
    ]
    (total,) = roll_up(rows, [])
    assert (total.requests, total.denied, total.tokens_total) == (7, 1, 24)
    assert total.tenant == total.key_prefix == total.model == ""
    by_tenant = {r.tenant: r.tokens_total for r in roll_up(rows, [Dimension.TENANT])}
    assert by_tenant == {"a": 17, "b": 7}
    by_key = {(r.tenant, r.key_prefix): r.requests for r in roll_up(rows, [Dimension.KEY])}
    assert by_key == {("a", "p1"): 3, ("a", "p2"): 0, ("b", "p3"): 4}
    by_model = {r.model: r.tokens_in for r in roll_up(rows, [Dimension.MODEL])}
    assert by_model == {"m1": 11, "m2": 0}
