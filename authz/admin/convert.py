"""Protobuf ↔ plain values for the admin API: requests to the arguments of
:class:`authz.admin.operations.Admin`, its results to response messages. No gRPC here; an
input that cannot be converted raises :class:`InvalidArgument`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from authz.admin import backends, budgets, models, usage
from authz.admin.columns import (
    CEILING_COLUMNS,
    KEY_COLUMNS,
    KEY_LIMIT_COLUMNS,
    TENANT_COLUMNS,
    TENANT_LIMIT_COLUMNS,
)
from authz.admin.errors import InvalidArgument
from authz.admin.operations import BudgetView, Target, UsageView
from authz.admin.records import KeyRecord, TenantRecord
from gateway import periods
from gateway.periods import Period
from protos.neuronetz.admin.v1 import admin_pb2 as pb

_LIMITS = KEY_LIMIT_COLUMNS  # the fields of pb.Limits
_DEFAULTS = TENANT_LIMIT_COLUMNS[len(KEY_LIMIT_COLUMNS) :]  # the fields of pb.RequestDefaults
_CEILINGS = CEILING_COLUMNS  # the fields of pb.Ceilings
_SCOPES: dict[Any, str] = {
    pb.SCOPE_CHAT: "chat",
    pb.SCOPE_EMBEDDINGS: "embeddings",
    pb.SCOPE_MODELS: "models",
}
_SCOPE_VALUES = {name: value for value, name in _SCOPES.items()}
_PERIODS: dict[int, Period] = {
    pb.PERIOD_DAILY: Period.DAILY,
    pb.PERIOD_MONTHLY: Period.MONTHLY,
    pb.PERIOD_TOTAL: Period.TOTAL,
}
_PERIOD_VALUES: dict[Period, Any] = {p: v for v, p in _PERIODS.items()}
_DIMENSIONS: dict[int, usage.Dimension] = {
    pb.USAGE_DIMENSION_TENANT: usage.Dimension.TENANT,
    pb.USAGE_DIMENSION_KEY: usage.Dimension.KEY,
    pb.USAGE_DIMENSION_MODEL: usage.Dimension.MODEL,
}
DEFAULT_PROBE_TIMEOUT_S = 2.0


# -- protobuf → values ----------------------------------------------------------------------


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value.astimezone(UTC))
    return result


def when(message: Any, name: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime; None when unset."""
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _present(message: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: getattr(message, f) for f in fields if message.HasField(f)}


def scopes(values: Any) -> list[str]:
    result: list[str] = []
    for value in values:
        if value not in _SCOPES:
            raise InvalidArgument("scopes must be SCOPE_CHAT, SCOPE_EMBEDDINGS or SCOPE_MODELS")
        result.append(_SCOPES[value])
    return result


def model_list(message: Any, name: str) -> list[str] | None:
    """A ModelList field as a list; None when unset (on a key: inherit the tenant's)."""
    return list(getattr(message, name).models) if message.HasField(name) else None


def _changes(
    request: Any,
    top: dict[str, Callable[[], Any]],
    groups: dict[str, tuple[str, ...]],
) -> dict[str, Any]:
    """Column → new value from an Update*Request: the fields present, or with an
    ``update_mask`` exactly the named ones (a named field left unset clears it)."""
    changes: dict[str, Any] = {}
    if not request.HasField("update_mask"):
        for name, read in top.items():
            value = read()
            if value is not None:
                changes[name] = value
        for group, fields in groups.items():
            changes.update(_present(getattr(request, group), fields))
        return changes
    for path in request.update_mask.paths:
        group, _, leaf = path.partition(".")
        if group in top and not leaf:
            changes[group] = top[group]()
        elif group in groups and (not leaf or leaf in groups[group]):
            message = getattr(request, group)
            for name in [leaf] if leaf else groups[group]:
                changes[name] = getattr(message, name) if message.HasField(name) else None
        else:
            raise InvalidArgument(f"update_mask names an unknown field {path!r}")
    return changes


def _optional(request: Any, name: str) -> Callable[[], Any]:
    return lambda: getattr(request, name) if request.HasField(name) else None


def _option_names(values: dict[str, Any]) -> dict[str, Any]:
    """``allowed_options`` from its OptionList message to a list of names."""
    found = values.get("allowed_options")
    if found is not None:
        values["allowed_options"] = list(found.options)
    return values


def ceilings(message: pb.Ceilings) -> dict[str, Any]:
    """The ceilings a Create*Request sets (absent: the default, or inherit)."""
    return _option_names(_present(message, _CEILINGS))


def tenant_limits(request: pb.CreateTenantRequest) -> dict[str, Any]:
    """The limits, request defaults and ceilings a CreateTenantRequest sets."""
    limits = _present(request.limits, _LIMITS) | _present(request.defaults, _DEFAULTS)
    return limits | ceilings(request.ceilings)


def key_limits(request: pb.CreateKeyRequest) -> dict[str, Any]:
    """The limits and ceilings a CreateKeyRequest sets (absent: inherit the tenant's)."""
    return _present(request.limits, _LIMITS) | ceilings(request.ceilings)


def tenant_changes(request: pb.UpdateTenantRequest) -> dict[str, Any]:
    top = {name: _optional(request, name) for name in TENANT_COLUMNS}
    top["allowed_models"] = lambda: model_list(request, "allowed_models")
    groups = {"limits": _LIMITS, "defaults": _DEFAULTS, "ceilings": _CEILINGS}
    return _option_names(_changes(request, top, groups))


def key_changes(request: pb.UpdateKeyRequest) -> dict[str, Any]:
    top = {name: _optional(request, name) for name in KEY_COLUMNS}
    top["allowed_models"] = lambda: model_list(request, "allowed_models")
    top["scopes"] = lambda: scopes(request.scopes) or None
    if request.HasField("update_mask") and "scopes" in request.update_mask.paths:
        top["scopes"] = lambda: scopes(request.scopes)
    return _option_names(_changes(request, top, {"limits": _LIMITS, "ceilings": _CEILINGS}))


def target(request: Any) -> Target:
    which = request.WhichOneof("target")
    if which is None:
        raise InvalidArgument("name a tenant or a key")
    return Target(**{which: getattr(request, which)})


def period(value: int) -> Period:
    if value not in _PERIODS:
        raise InvalidArgument("period must be PERIOD_DAILY, PERIOD_MONTHLY or PERIOD_TOTAL")
    return _PERIODS[value]


def usage_query(
    request: pb.GetUsageRequest, now: datetime
) -> tuple[Target, usage.Window, list[usage.Dimension]]:
    """Whose usage (everyone's when no target is named), over which window (a period up to
    ``now``, or start/end), grouped by what."""
    found = Target()
    if request.WhichOneof("target") is not None:
        found = target(request)
    start, end = when(request, "start"), when(request, "end")
    if request.period != pb.PERIOD_UNSPECIFIED:
        if start is not None or end is not None:
            raise InvalidArgument("give a period or start/end, not both")
        chosen = period(request.period)
        start = None if chosen is Period.TOTAL else periods.start(chosen, now)
    by: list[usage.Dimension] = []
    for value in request.group_by:
        if value not in _DIMENSIONS:
            raise InvalidArgument("group_by must name TENANT, KEY or MODEL")
        by.append(_DIMENSIONS[value])
    return found, usage.Window(start, end), by


def probe_timeout(request: pb.ProbeBackendsRequest) -> float:
    """Seconds to wait for each backend (the default when unset)."""
    if request.HasField("timeout"):
        return request.timeout.ToNanoseconds() / 1e9
    return DEFAULT_PROBE_TIMEOUT_S


# -- values → protobuf ----------------------------------------------------------------------


def ceilings_pb(values: dict[str, Any]) -> pb.Ceilings:
    message = pb.Ceilings()
    for name in ("max_output_tokens", "max_num_ctx"):
        if values.get(name) is not None:
            setattr(message, name, values[name])
    if values.get("allowed_options") is not None:
        message.allowed_options.CopyFrom(pb.OptionList(options=values["allowed_options"]))
    return message


def tenant_pb(record: TenantRecord) -> pb.Tenant:
    limits = {c: v for c, v in record.limits.items() if v is not None}
    return pb.Tenant(
        id=record.id,
        name=record.name,
        status=pb.TENANT_STATUS_ACTIVE if record.status == "active" else pb.TENANT_STATUS_DISABLED,
        allow_all=record.allow_all,
        allowed_models=pb.ModelList(models=record.allowed_models),
        allow_cloud=record.allow_cloud,
        limits=pb.Limits(**{c: v for c, v in limits.items() if c in _LIMITS}),
        defaults=pb.RequestDefaults(**{c: v for c, v in limits.items() if c in _DEFAULTS}),
        ceilings=ceilings_pb(record.ceilings),
        created_at=_ts(record.created_at),
        updated_at=_ts(record.updated_at),
    )


def key_status(record: KeyRecord, now: datetime) -> Any:
    if record.status == "revoked":
        return pb.KEY_STATUS_REVOKED
    if record.expires_at is not None and record.expires_at <= now:
        return pb.KEY_STATUS_EXPIRED
    return pb.KEY_STATUS_ACTIVE


def key_pb(record: KeyRecord, now: datetime) -> pb.ApiKey:
    message = pb.ApiKey(
        id=record.id,
        tenant_id=record.tenant_id,
        tenant=record.tenant,
        prefix=record.prefix,
        name=record.name,
        status=key_status(record, now),
        scopes=[_SCOPE_VALUES[s] for s in record.scopes if s in _SCOPE_VALUES],
        prompt_log=record.prompt_log,
        limits=pb.Limits(**{c: v for c, v in record.limits.items() if v is not None}),
        ceilings=ceilings_pb(record.ceilings),
        expires_at=_ts(record.expires_at),
        created_at=_ts(record.created_at),
        updated_at=_ts(record.updated_at),
        revoked_at=_ts(record.revoked_at),
        revoked_reason=record.revoked_reason or "",
        last_used_at=_ts(record.last_used_at),
    )
    if record.allow_all is not None:
        message.allow_all = record.allow_all
    if record.allowed_models is not None:
        message.allowed_models.CopyFrom(pb.ModelList(models=record.allowed_models))
    return message


def budget_pb(view: BudgetView) -> pb.BudgetStatus:
    return pb.BudgetStatus(
        tenant_id=view.tenant.id,
        tenant=view.tenant.name,
        key_id=view.key.id if view.key else "",
        key_prefix=view.key.prefix if view.key else "",
        periods=[_period_pb(p) for p in view.periods],
    )


def _period_pb(status: budgets.PeriodStatus) -> pb.PeriodBudget:
    message = pb.PeriodBudget(
        period=_PERIOD_VALUES[status.period],
        source=status.source,
        used=status.used,
        reserved=status.reserved,
        resets_at=_ts(status.resets_at),
    )
    if status.limit is not None:
        message.limit = status.limit
    if status.remaining is not None:
        message.remaining = status.remaining
    return message


def _usage_row_pb(row: usage.UsageRow) -> pb.UsageRow:
    return pb.UsageRow(
        tenant_id=row.tenant_id,
        tenant=row.tenant,
        key_id=row.key_id,
        key_prefix=row.key_prefix,
        model=row.model,
        requests=row.requests,
        denied=row.denied,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        tokens_total=row.tokens_total,
    )


def usage_pb(view: UsageView) -> pb.UsageReport:
    return pb.UsageReport(
        start=_ts(view.window.start),
        end=_ts(view.window.end),
        rows=[_usage_row_pb(r) for r in view.rows],
        total=_usage_row_pb(view.total),
    )


def backend_models_pb(found: list[models.BackendListing]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        backends=[
            pb.BackendModels(
                backend=b.url, models=b.models, name=b.name, priority=b.priority, live=b.live
            )
            for b in found
        ]
    )


def effective_pb(policy: models.Policy) -> pb.EffectiveModels:
    return pb.EffectiveModels(
        allow_all=policy.allow_all,
        allowed_models=pb.ModelList(models=policy.allowed),
        source=policy.source,
        models=policy.models,
    )


def probe_pb(found: backends.BackendProbe) -> pb.BackendStatus:
    latency = pb.BackendStatus().latency
    latency.FromNanoseconds(int(found.latency_s * 1e9))
    return pb.BackendStatus(
        url=found.url,
        name=found.name,
        priority=found.priority,
        reachable=found.reachable,
        version=found.version,
        model_count=found.model_count,
        latency=latency,
        error=found.error,
    )
