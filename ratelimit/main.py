"""Run the RLS: ``ShouldRateLimit`` on ``ratelimit_listen``.

The static config is loaded and validated first: a bad file stops the service at start-up.
Afterwards it reloads on change (polled every ``NZ_RATELIMIT_CONFIG_POLL_S``) or SIGHUP, and a
bad new file keeps the old rules (ratelimit/config.py, :class:`~ratelimit.config.Reloader`).
Ready while Redis answers (gateway/readiness.py): no decision without it.
"""

from __future__ import annotations

import asyncio

from gateway import grpcserver, logs, metrics
from gateway.readiness import Readiness, redis_probe
from gateway.settings import Settings
from gateway.storage import redis_client
from gateway.tracing import interceptors as tracing_interceptors
from ratelimit import config, server
from ratelimit.announce import Announcer
from ratelimit.decide import Decider
from ratelimit.windows import Windows


async def run(cfg: Settings) -> None:
    logs.configure("ratelimit", cfg.log_level)
    log = logs.get("ratelimit")
    try:
        static = config.load(cfg.ratelimit_config or None)
    except config.ConfigError as exc:
        log.error("bad static rate-limit config", error=str(exc))
        raise SystemExit(2) from exc
    health = grpcserver.Health()  # its gRPC server's: /readyz answers from it
    metrics.serve(cfg.metrics_port, cfg.metrics_addr, health.serving)
    redis = redis_client(cfg.redis_url, cfg.redis_timeout_s, cfg.redis_cluster)
    readiness = Readiness(health, {"redis": redis_probe(redis)})
    await readiness.check()
    reloader = config.Reloader(static, cfg.ratelimit_config or None)
    background = [asyncio.create_task(readiness.run(), name="readiness")]
    if cfg.ratelimit_config_poll_s > 0:
        watch = reloader.watch(cfg.ratelimit_config_poll_s)
        background.append(asyncio.create_task(watch, name="config_watch"))
    windows = Windows(redis, deadline_s=cfg.ratelimit_deadline_s)
    decider = Decider(static, windows, near_ratio=cfg.ratelimit_near_ratio)
    announcer = Announcer(redis, timeout_s=cfg.ratelimit_deadline_s)
    grpc_server = await grpcserver.start(
        cfg.ratelimit_listen,
        [server.register(decider, announcer)],
        [server.SERVICE_NAME],
        reuse_port=cfg.worker,
        health=health,
        interceptors=tracing_interceptors("ratelimit", cfg.otlp_endpoint),
    )
    log.info("serving", listen=cfg.ratelimit_listen, domains=static.domains)

    async def stop() -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await announcer.close()
        await redis.aclose()

    await grpcserver.serve_until_signalled(
        [grpc_server], on_stop=stop, on_reload=lambda: reloader.reload("sighup")
    )
