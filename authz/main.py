"""Run the authz service: ext_authz Check on ``authz_listen``."""

from __future__ import annotations

from authz import server
from authz.check import Authorizer
from authz.keys import KeyStore
from gateway import apikeys, grpcserver, logs, metrics
from gateway.settings import Settings
from gateway.storage import pg_pool


async def run(cfg: Settings) -> None:
    logs.configure("authz", cfg.log_level)
    metrics.serve(cfg.metrics_port)
    pool = await pg_pool(cfg.database_url)
    ph = apikeys.hasher(cfg.argon2_time_cost, cfg.argon2_memory_kib)
    authorizer = Authorizer(KeyStore(pool, ph, cfg.key_cache_ttl_s))
    grpc_server = await grpcserver.start(
        cfg.authz_listen, [server.register(authorizer)], [server.SERVICE_NAME]
    )
    logs.get("authz").info("serving", listen=cfg.authz_listen)
    await grpcserver.serve_until_signalled([grpc_server], on_stop=pool.close)
