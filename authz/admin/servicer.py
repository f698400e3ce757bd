"""The AdminService servicer: each RPC converts its request (:mod:`authz.admin.convert`), calls
:class:`authz.admin.operations.Admin` and converts the result back.

The admin token check, the status codes of failures and the metrics are the interceptor's
(:mod:`authz.admin.interceptor`): a method here only returns or raises.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc

from authz.admin import convert
from authz.admin.operations import Admin
from protos.neuronetz.admin.v1 import admin_pb2 as pb
from protos.neuronetz.admin.v1 import admin_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(pb_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    def _now(self) -> datetime:
        return self.admin.now()

    # tenants

    async def CreateTenant(self, request: pb.CreateTenantRequest, _: Context) -> pb.Tenant:
        record = await self.admin.create_tenant(
            request.name,
            allow_all=request.allow_all,
            allowed_models=list(request.allowed_models.models),
            allow_cloud=request.allow_cloud,
            limits=convert.tenant_limits(request),
        )
        return convert.tenant_pb(record)

    async def GetTenant(self, request: pb.GetTenantRequest, _: Context) -> pb.Tenant:
        return convert.tenant_pb(await self.admin.get_tenant(request.tenant))

    async def ListTenants(
        self, request: pb.ListTenantsRequest, _: Context
    ) -> pb.ListTenantsResponse:
        found, token = await self.admin.list_tenants(
            request.page_size, request.page_token, request.include_disabled
        )
        tenants = [convert.tenant_pb(t) for t in found]
        return pb.ListTenantsResponse(tenants=tenants, next_page_token=token)

    async def UpdateTenant(self, request: pb.UpdateTenantRequest, _: Context) -> pb.Tenant:
        record = await self.admin.update_tenant(request.tenant, convert.tenant_changes(request))
        return convert.tenant_pb(record)

    async def DisableTenant(self, request: pb.DisableTenantRequest, _: Context) -> pb.Tenant:
        record = await self.admin.set_tenant_status(request.tenant, "disabled", request.reason)
        return convert.tenant_pb(record)

    async def EnableTenant(self, request: pb.EnableTenantRequest, _: Context) -> pb.Tenant:
        return convert.tenant_pb(await self.admin.set_tenant_status(request.tenant, "active"))

    # keys

    async def CreateKey(self, request: pb.CreateKeyRequest, _: Context) -> pb.CreateKeyResponse:
        record, full_key = await self.admin.create_key(
            request.tenant,
            name=request.name,
            scopes=convert.scopes(request.scopes) or None,
            allow_all=request.allow_all if request.HasField("allow_all") else None,
            allowed_models=convert.model_list(request, "allowed_models"),
            prompt_log=request.prompt_log,
            limits=convert.key_limits(request),
            expires_at=convert.when(request, "expires_at"),
        )
        return pb.CreateKeyResponse(key=convert.key_pb(record, self._now()), full_key=full_key)

    async def GetKey(self, request: pb.GetKeyRequest, _: Context) -> pb.ApiKey:
        return convert.key_pb(await self.admin.get_key(request.key), self._now())

    async def ListKeys(self, request: pb.ListKeysRequest, _: Context) -> pb.ListKeysResponse:
        found, token = await self.admin.list_keys(
            request.tenant, request.page_size, request.page_token, request.include_revoked
        )
        now = self._now()
        keys = [convert.key_pb(k, now) for k in found]
        return pb.ListKeysResponse(keys=keys, next_page_token=token)

    async def UpdateKey(self, request: pb.UpdateKeyRequest, _: Context) -> pb.ApiKey:
        record = await self.admin.update_key(request.key, convert.key_changes(request))
        return convert.key_pb(record, self._now())

    async def RevokeKey(self, request: pb.RevokeKeyRequest, _: Context) -> pb.ApiKey:
        record = await self.admin.revoke_key(request.key, request.reason)
        return convert.key_pb(record, self._now())

    async def ExpireKey(self, request: pb.ExpireKeyRequest, _: Context) -> pb.ApiKey:
        record = await self.admin.expire_key(request.key, convert.when(request, "expires_at"))
        return convert.key_pb(record, self._now())

    # budgets

    async def SetBudget(self, request: pb.SetBudgetRequest, _: Context) -> pb.BudgetStatus:
        tokens = request.tokens if request.HasField("tokens") else None
        target, period = convert.target(request), convert.period(request.period)
        return convert.budget_pb(await self.admin.set_budget(target, period, tokens))

    async def GetBudget(self, request: pb.GetBudgetRequest, _: Context) -> pb.BudgetStatus:
        return convert.budget_pb(await self.admin.get_budget(convert.target(request)))

    # models

    async def ListModels(self, request: pb.ListModelsRequest, _: Context) -> pb.ListModelsResponse:
        return convert.backend_models_pb(self.admin.list_models(request.backend))

    async def GetEffectiveModels(
        self, request: pb.GetEffectiveModelsRequest, _: Context
    ) -> pb.EffectiveModels:
        policy = await self.admin.effective_models(convert.target(request))
        return convert.effective_pb(policy)

    # usage

    async def GetUsage(self, request: pb.GetUsageRequest, _: Context) -> pb.UsageReport:
        target, window, by = convert.usage_query(request, self._now())
        return convert.usage_pb(await self.admin.usage(target, window, by))

    # backends

    async def ProbeBackends(
        self, request: pb.ProbeBackendsRequest, _: Context
    ) -> pb.ProbeBackendsResponse:
        found = await self.admin.probe_backends(convert.probe_timeout(request))
        return pb.ProbeBackendsResponse(backends=[convert.probe_pb(b) for b in found])


def register(admin: Admin) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(admin), server)

    return add
