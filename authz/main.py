"""Run the authz service: ext_authz Check on ``authz_listen``, with model discovery and the
revocation listener running beside it."""

from __future__ import annotations

import asyncio
import contextlib

from authz import eds, fields, server
from authz.accounting_health import AccountingHealth
from authz.admission import Admitter
from authz.check import Authorizer
from authz.discovery import Discovery
from authz.keys import KeyStore
from authz.revocations import RevocationListener
from authz.throttle import Subscriber, Throttles
from gateway import apikeys, backends, grpcserver, logs, metrics
from gateway.leases import Leases
from gateway.readiness import Readiness, postgres_probe, redis_probe
from gateway.settings import Settings, reach
from gateway.storage import pg_pool, redis_client
from gateway.tracing import interceptors as tracing_interceptors

_FIRST_DISCOVERY_S = 3.0
_FIRST_ACCOUNTING_S = 3.0


async def run(cfg: Settings) -> None:
    logs.configure("authz", cfg.log_level)
    log = logs.get("authz")
    health = grpcserver.Health()  # its gRPC server's: /readyz answers from it
    metrics.serve(cfg.metrics_port, cfg.metrics_addr, health.serving)
    pool = await pg_pool(cfg)
    redis = redis_client(cfg.redis_url, cfg.redis_timeout_s, cfg.redis_cluster)
    ph = apikeys.hasher(cfg.argon2_time_cost, cfg.argon2_memory_kib)
    keys = KeyStore(
        pool,
        redis,
        ph,
        cfg.key_cache_ttl_s,
        verified_ttl_s=cfg.verified_key_ttl_s,
        address_limit=cfg.key_failures_per_address,
        address_window_s=cfg.key_failure_window_s,
    )
    admitter = Admitter(redis, pool, Leases(cfg.slot_lease_s, cfg.reservation_lease_s))
    configured = backends.configured(cfg.backends_file, cfg.ollama_urls)
    discovery = Discovery(configured, redis, cfg.discovery_interval_s, cfg.discovery_ttl_s)
    with contextlib.suppress(Exception):  # Redis may be late; the first Check loads it again
        await admitter.load()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(discovery.refresh(), _FIRST_DISCOVERY_S)
    # LISTEN needs a session of its own: PostgreSQL itself, never a transaction pooler
    listener = RevocationListener(cfg.direct_database_url, keys)
    throttles = Throttles()  # the RLS's refusals, heard on Redis pub/sub
    subscriber = Subscriber(cfg.redis_url, throttles, cfg.redis_timeout_s)
    accounting = AccountingHealth(
        reach(cfg.accounting_target, cfg.accounting_listen), cfg.accounting_stale_after_s
    )
    # Ready only while Redis and PostgreSQL answer: a Check needs both (gateway/readiness.py).
    readiness = Readiness(health, {"redis": redis_probe(redis), "postgresql": postgres_probe(pool)})
    await readiness.check()
    background = [asyncio.create_task(accounting.run(), name="accounting_health")]
    background.append(asyncio.create_task(readiness.run(), name="readiness"))
    if not await accounting.first_answer(_FIRST_ACCOUNTING_S):
        log.warning("accounting is not answering: inference is refused until it does")
    background += [
        asyncio.create_task(discovery.run(), name="discovery"),
        asyncio.create_task(listener.run(), name="revocations"),
        asyncio.create_task(subscriber.run(), name="throttles"),
    ]
    authorizer = Authorizer(
        keys,
        admitter,
        discovery,
        cfg.max_request_bytes,
        throttles,
        inert_options=fields.inert_options(cfg.inert_options),
        accounting=accounting,
    )
    grpc_server = await grpcserver.start(
        cfg.authz_listen,
        [server.register(authorizer), eds.register(discovery)],
        [server.SERVICE_NAME, eds.SERVICE_NAME],
        reuse_port=cfg.worker,
        health=health,
        interceptors=tracing_interceptors("authz", cfg.otlp_endpoint),
    )
    log.info("serving", listen=cfg.authz_listen, backends=[b.name for b in configured])

    async def stop() -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await discovery.close()
        await redis.aclose()
        await pool.close()

    from authz.admin import startup as admin  # the admin API: its own server on admin_listen

    admin_server = await admin.start(
        cfg, pool, discovery=discovery, redis=redis, backends=configured
    )
    from authz.console import server as console  # the operator console, on console_listen

    page = await console.start(cfg)  # None: NZ_CONSOLE_LISTEN is "" (off)

    async def stop_all() -> None:
        if page is not None:
            await page.close()
        await stop()

    await grpcserver.serve_until_signalled([grpc_server, admin_server], on_stop=stop_all)
