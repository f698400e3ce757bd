"""Start the admin gRPC server inside the authz process, on ``admin_listen`` (loopback by
default), with health and reflection so grpcurl needs no .proto file, and the interceptor that
guards every AdminService call (:mod:`authz.admin.interceptor`)."""

from __future__ import annotations

import asyncpg
import grpc

from authz.admin.auth import TokenCheck
from authz.admin.interceptor import AdminInterceptor
from authz.admin.models import ModelSource
from authz.admin.operations import Admin
from authz.admin.servicer import SERVICE_NAME, register
from gateway import apikeys, grpcserver, logs
from gateway.backends import Backend, from_urls
from gateway.settings import Settings, is_loopback
from gateway.storage import Store

_log = logs.get("admin")


async def start(
    cfg: Settings,
    pool: asyncpg.Pool,
    *,
    discovery: ModelSource | None = None,
    redis: Store | None = None,
    backends: tuple[Backend, ...] | None = None,
) -> grpc.aio.Server:
    """``backends``: the configured ones (authz passes discovery's); without them (tests),
    the backends ``cfg.ollama_urls`` names."""
    tokens = TokenCheck(cfg.admin_token)
    if not tokens.enabled:
        _log.warning("admin_disabled", reason="no admin token configured; every call is denied")
    elif len(cfg.admin_token) < 24:
        _log.warning("admin_token_short", hint="use at least 24 random characters")
    if not is_loopback(cfg.admin_listen.rsplit(":", 1)[0]):
        _log.warning("admin_not_loopback", listen=cfg.admin_listen)
    hasher = apikeys.hasher(cfg.argon2_time_cost, cfg.argon2_memory_kib)
    configured = from_urls(list(cfg.ollama_urls)) if backends is None else backends
    admin = Admin(pool, hasher, configured, discovery=discovery, redis=redis)
    server = await grpcserver.start(
        cfg.admin_listen,
        [register(admin)],
        [SERVICE_NAME],
        reuse_port=cfg.worker,
        interceptors=[AdminInterceptor(tokens)],
    )
    _log.info("admin_serving", listen=cfg.admin_listen)
    return server
