"""``neuronetz-gateway dev``: the whole gateway on this machine, a demo tenant and key."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
from pathlib import Path
from typing import Any

import asyncpg

from authz import provisioning
from devstack.stack import Stack, StackConfig
from gateway import apikeys


async def _demo_key(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        tenant_id = await conn.fetchval("SELECT id::text FROM gateway.tenants WHERE name='demo'")
        if tenant_id is None:
            tenant_id = await provisioning.create_tenant(
                conn,
                "demo",
                allow_all=True,
                requests_per_minute=600,
                tokens_per_minute=200_000,
                max_concurrent=16,
                budget_daily=1_000_000,
            )
        created = await provisioning.create_key(conn, apikeys.hasher(), tenant_id, name="demo")
        return created.full_key
    finally:
        await conn.close()


def _banner(stack: Stack, key: str) -> str:
    url = stack.listener
    model = "llama3.2" if not stack.config.ollama_urls else "<model>"
    return f"""
neuronetz-gateway is up.

  listener     {url}
  demo key     {key}
  admin token  {stack.admin_token}
  postgres     {stack.database_url}
  redis        {stack.redis_url}
  ollama       {", ".join(stack.ollama_urls)}

Try it:
  # a streamed chat
  curl -N {url}/api/chat -H 'Authorization: Bearer {key}' \\
       -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "hello"}}]}}'
  # no key: 401
  curl -i {url}/api/tags
  # model management is not served: 403
  curl -i {url}/api/pull -H 'Authorization: Bearer {key}' -d '{{"model": "{model}"}}'

Ctrl-C stops everything this command started.
"""


def run_dev(args: argparse.Namespace) -> int:
    config = StackConfig(
        work_dir=Path(args.work_dir) if args.work_dir else None,
        ollama_urls=[u.rstrip("/") for u in args.ollama_url],
        listener_port=args.port,
        log_level="info",
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(config).start()
    try:
        key = asyncio.run(_demo_key(stack.database_url))
        state: dict[str, Any] = {
            "listener": stack.listener,
            "demo_key": key,
            "admin": f"127.0.0.1:{stack.ports['admin']}",
            "admin_token": stack.admin_token,
            "database_url": stack.database_url,
            "redis_url": stack.redis_url,
            "ollama_url": stack.ollama_urls[0],
            "ollama_urls": stack.ollama_urls,
            "envoy_admin": stack.envoy_admin,
            "logs": str(stack.work_dir / "logs"),
        }
        if args.state_file:
            Path(args.state_file).write_text(json.dumps(state, indent=2), encoding="utf-8")
        print(_banner(stack, key), flush=True)
        stop.wait()
    finally:
        print("stopping…", flush=True)
        stack.stop()
    return 0
