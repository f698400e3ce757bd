"""The gRPC edge of the admin API: protobuf in, plain values to :class:`Admin`, protobuf out.

Also the one place that turns failures into gRPC status codes: a missing or wrong admin token
is UNAUTHENTICATED, an API without a configured token PERMISSION_DENIED, and the provisioning
errors NOT_FOUND / ALREADY_EXISTS / INVALID_ARGUMENT; a database that cannot be reached is
UNAVAILABLE. Messages name what is wrong, never a secret.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from prometheus_client import Counter

from authz.admin import backends, budgets, models, usage
from authz.admin.auth import TokenCheck, Verdict
from authz.admin.records import KeyRecord, TenantRecord
from authz.admin.service import Admin, BudgetView, Target, UsageView
from authz.provisioning import (
    CEILING_COLUMNS,
    KEY_COLUMNS,
    KEY_LIMIT_COLUMNS,
    TENANT_COLUMNS,
    TENANT_LIMIT_COLUMNS,
    AlreadyExists,
    InvalidArgument,
    NotFound,
)
from gateway import logs, periods
from gateway.periods import Period
from gateway.storeerrors import POSTGRES_DOWN
from protos.neuronetz.admin.v1 import admin_pb2 as pb
from protos.neuronetz.admin.v1 import admin_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
_log = logs.get("admin")
ADMIN_CALLS = Counter(
    "admin_calls_total", "admin API calls by method and status", ["method", "code"]
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]

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


# -- protobuf → values ----------------------------------------------------------------------


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value.astimezone(UTC))
    return result


def _when(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _present(message: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: getattr(message, f) for f in fields if message.HasField(f)}


def _scopes(values: Any) -> list[str]:
    result: list[str] = []
    for value in values:
        if value not in _SCOPES:
            raise InvalidArgument("scopes must be SCOPE_CHAT, SCOPE_EMBEDDINGS or SCOPE_MODELS")
        result.append(_SCOPES[value])
    return result


def _models(message: Any, name: str) -> list[str] | None:
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


def tenant_changes(request: pb.UpdateTenantRequest) -> dict[str, Any]:
    top = {name: _optional(request, name) for name in TENANT_COLUMNS}
    top["allowed_models"] = lambda: _models(request, "allowed_models")
    groups = {"limits": _LIMITS, "defaults": _DEFAULTS, "ceilings": _CEILINGS}
    return _option_names(_changes(request, top, groups))


def key_changes(request: pb.UpdateKeyRequest) -> dict[str, Any]:
    top = {name: _optional(request, name) for name in KEY_COLUMNS}
    top["allowed_models"] = lambda: _models(request, "allowed_models")
    top["scopes"] = lambda: _scopes(request.scopes) or None
    if request.HasField("update_mask") and "scopes" in request.update_mask.paths:
        top["scopes"] = lambda: _scopes(request.scopes)
    return _option_names(_changes(request, top, {"limits": _LIMITS, "ceilings": _CEILINGS}))


def _target(request: Any) -> Target:
    which = request.WhichOneof("target")
    if which is None:
        raise InvalidArgument("name a tenant or a key")
    return Target(**{which: getattr(request, which)})


def _period(value: int) -> Period:
    if value not in _PERIODS:
        raise InvalidArgument("period must be PERIOD_DAILY, PERIOD_MONTHLY or PERIOD_TOTAL")
    return _PERIODS[value]


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
        reachable=found.reachable,
        version=found.version,
        model_count=found.model_count,
        latency=latency,
        error=found.error,
    )


# -- the servicer ---------------------------------------------------------------------------


def _rpc(
    method: Callable[[AdminServicer, Req], Awaitable[Resp]],
) -> Callable[[AdminServicer, Req, Context], Awaitable[Resp]]:
    """Authenticate, run, map failures to status codes, count and log (without secrets)."""
    name = method.__name__

    @functools.wraps(method)
    async def call(self: AdminServicer, request: Req, context: Context) -> Resp:
        started = time.monotonic()
        code, message = grpc.StatusCode.OK, ""
        verdict = self.tokens.check(context.invocation_metadata() or ())
        if verdict is Verdict.DISABLED:
            code = grpc.StatusCode.PERMISSION_DENIED
            message = "the admin API is disabled: no admin token is configured (NZ_ADMIN_TOKEN)"
        elif verdict is Verdict.UNAUTHENTICATED:
            code = grpc.StatusCode.UNAUTHENTICATED
            message = "missing or wrong admin token (authorization: Bearer <token>)"
        else:
            try:
                return await method(self, request)
            except InvalidArgument as exc:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except NotFound as exc:
                code, message = grpc.StatusCode.NOT_FOUND, str(exc)
            except AlreadyExists as exc:
                code, message = grpc.StatusCode.ALREADY_EXISTS, str(exc)
            except POSTGRES_DOWN as exc:
                code, message = grpc.StatusCode.UNAVAILABLE, "the database is unavailable"
                _log.warning("admin_unavailable", method=name, error=exc.__class__.__name__)
            except Exception:
                code, message = grpc.StatusCode.INTERNAL, "internal error"
                _log.exception("admin_failed", method=name)
            finally:
                ADMIN_CALLS.labels(name, code.name).inc()
                _log.info(
                    "admin_call",
                    method=name,
                    code=code.name,
                    ms=round((time.monotonic() - started) * 1000, 1),
                )
            await context.abort(code, message)
        ADMIN_CALLS.labels(name, code.name).inc()
        _log.warning("admin_denied", method=name, code=code.name)
        await context.abort(code, message)

    return call


class AdminServicer(pb_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, admin: Admin, tokens: TokenCheck) -> None:
        self.admin = admin
        self.tokens = tokens

    def _now(self) -> datetime:
        return self.admin.now()

    # tenants

    @_rpc
    async def CreateTenant(self, request: pb.CreateTenantRequest) -> pb.Tenant:
        limits = _present(request.limits, _LIMITS) | _present(request.defaults, _DEFAULTS)
        limits |= ceilings(request.ceilings)
        record = await self.admin.create_tenant(
            request.name,
            allow_all=request.allow_all,
            allowed_models=list(request.allowed_models.models),
            allow_cloud=request.allow_cloud,
            limits=limits,
        )
        return tenant_pb(record)

    @_rpc
    async def GetTenant(self, request: pb.GetTenantRequest) -> pb.Tenant:
        return tenant_pb(await self.admin.get_tenant(request.tenant))

    @_rpc
    async def ListTenants(self, request: pb.ListTenantsRequest) -> pb.ListTenantsResponse:
        found, token = await self.admin.list_tenants(
            request.page_size, request.page_token, request.include_disabled
        )
        return pb.ListTenantsResponse(tenants=[tenant_pb(t) for t in found], next_page_token=token)

    @_rpc
    async def UpdateTenant(self, request: pb.UpdateTenantRequest) -> pb.Tenant:
        record = await self.admin.update_tenant(request.tenant, tenant_changes(request))
        return tenant_pb(record)

    @_rpc
    async def DisableTenant(self, request: pb.DisableTenantRequest) -> pb.Tenant:
        record = await self.admin.set_tenant_status(request.tenant, "disabled", request.reason)
        return tenant_pb(record)

    @_rpc
    async def EnableTenant(self, request: pb.EnableTenantRequest) -> pb.Tenant:
        return tenant_pb(await self.admin.set_tenant_status(request.tenant, "active"))

    # keys

    @_rpc
    async def CreateKey(self, request: pb.CreateKeyRequest) -> pb.CreateKeyResponse:
        record, full_key = await self.admin.create_key(
            request.tenant,
            name=request.name,
            scopes=_scopes(request.scopes) or None,
            allow_all=request.allow_all if request.HasField("allow_all") else None,
            allowed_models=_models(request, "allowed_models"),
            prompt_log=request.prompt_log,
            limits=_present(request.limits, _LIMITS) | ceilings(request.ceilings),
            expires_at=_when(request, "expires_at"),
        )
        return pb.CreateKeyResponse(key=key_pb(record, self._now()), full_key=full_key)

    @_rpc
    async def GetKey(self, request: pb.GetKeyRequest) -> pb.ApiKey:
        return key_pb(await self.admin.get_key(request.key), self._now())

    @_rpc
    async def ListKeys(self, request: pb.ListKeysRequest) -> pb.ListKeysResponse:
        found, token = await self.admin.list_keys(
            request.tenant, request.page_size, request.page_token, request.include_revoked
        )
        now = self._now()
        return pb.ListKeysResponse(keys=[key_pb(k, now) for k in found], next_page_token=token)

    @_rpc
    async def UpdateKey(self, request: pb.UpdateKeyRequest) -> pb.ApiKey:
        record = await self.admin.update_key(request.key, key_changes(request))
        return key_pb(record, self._now())

    @_rpc
    async def RevokeKey(self, request: pb.RevokeKeyRequest) -> pb.ApiKey:
        return key_pb(await self.admin.revoke_key(request.key, request.reason), self._now())

    @_rpc
    async def ExpireKey(self, request: pb.ExpireKeyRequest) -> pb.ApiKey:
        record = await self.admin.expire_key(request.key, _when(request, "expires_at"))
        return key_pb(record, self._now())

    # budgets

    @_rpc
    async def SetBudget(self, request: pb.SetBudgetRequest) -> pb.BudgetStatus:
        tokens = request.tokens if request.HasField("tokens") else None
        view = await self.admin.set_budget(_target(request), _period(request.period), tokens)
        return budget_pb(view)

    @_rpc
    async def GetBudget(self, request: pb.GetBudgetRequest) -> pb.BudgetStatus:
        return budget_pb(await self.admin.get_budget(_target(request)))

    # models

    @_rpc
    async def ListModels(self, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
        found = self.admin.list_models(request.backend)
        return pb.ListModelsResponse(
            backends=[pb.BackendModels(backend=url, models=names) for url, names in found.items()]
        )

    @_rpc
    async def GetEffectiveModels(self, request: pb.GetEffectiveModelsRequest) -> pb.EffectiveModels:
        return effective_pb(await self.admin.effective_models(_target(request)))

    # usage

    @_rpc
    async def GetUsage(self, request: pb.GetUsageRequest) -> pb.UsageReport:
        target = Target()
        if request.WhichOneof("target") is not None:
            target = _target(request)
        start, end = _when(request, "start"), _when(request, "end")
        if request.period != pb.PERIOD_UNSPECIFIED:
            if start is not None or end is not None:
                raise InvalidArgument("give a period or start/end, not both")
            period = _period(request.period)
            start = None if period is Period.TOTAL else periods.start(period, self._now())
        by: list[usage.Dimension] = []
        for value in request.group_by:
            if value not in _DIMENSIONS:
                raise InvalidArgument("group_by must name TENANT, KEY or MODEL")
            by.append(_DIMENSIONS[value])
        view = await self.admin.usage(target, usage.Window(start, end), by)
        return usage_pb(view)

    # backends

    @_rpc
    async def ProbeBackends(self, request: pb.ProbeBackendsRequest) -> pb.ProbeBackendsResponse:
        timeout = 2.0
        if request.HasField("timeout"):
            timeout = request.timeout.ToNanoseconds() / 1e9
        found = await self.admin.probe_backends(timeout)
        return pb.ProbeBackendsResponse(backends=[probe_pb(b) for b in found])


def register(admin: Admin, tokens: TokenCheck) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(admin, tokens), server)

    return add
