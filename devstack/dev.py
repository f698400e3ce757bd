"""``neuronetz-gateway dev``: the whole gateway on this machine, a demo tenant and key."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import grpc

from devstack.stack import Stack, StackConfig
from gateway import admincli as admin


def _demo_key(admin_addr: str, token: str) -> str:
    """The demo tenant (created once) and a fresh demo key, through the admin API."""
    from protos.neuronetz.admin.v1 import admin_pb2 as pb

    try:
        # The admin API starts just after authz's Check server: wait for it.
        request = pb.GetTenantRequest(tenant="demo")
        admin.call(admin_addr, token, "GetTenant", request, wait_for_ready=True)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        limits = pb.Limits(
            requests_per_minute=600,
            tokens_per_minute=200_000,
            max_concurrent=16,
            budget_daily=1_000_000,
        )
        create = pb.CreateTenantRequest(name="demo", allow_all=True, limits=limits)
        admin.call(admin_addr, token, "CreateTenant", create)
    created = admin.call(
        admin_addr, token, "CreateKey", pb.CreateKeyRequest(tenant="demo", name="demo")
    )
    return str(created.full_key)


def _cli() -> str:
    """The CLI as a command that works when pasted into any shell: its full path."""
    beside = Path(sys.executable).parent / "neuronetz-gateway"
    if beside.exists():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m neuronetz_gateway"


def _banner(stack: Stack, key: str) -> str:
    url = stack.listener
    cli = _cli()
    model = "llama3.2" if not stack.config.ollama_urls else "<model>"
    return f"""
neuronetz-gateway is up.

  listener     {url}
  playground   {url}/playground   (paste the demo key)
  demo key     {key}
  admin API    127.0.0.1:{stack.ports["admin"]}
  admin token  {stack.admin_token}
  console      {stack.console_url}   (the admin token; usage, budgets, keys, backends)
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
  # the admin API (docs/OPERATIONS.md): the CLI, or grpcurl with the same token
  export NZ_ADMIN_ADDR=127.0.0.1:{stack.ports["admin"]} NZ_ADMIN_TOKEN={stack.admin_token}
  {cli} list-keys --tenant demo
  {cli} show-usage --tenant demo --period daily --by model

Ctrl-C stops everything this command started.
"""


def run_dev(args: argparse.Namespace) -> int:
    as_pod = os.environ.get("NZ_DEV_POD") == "1"
    config = StackConfig(
        work_dir=Path(args.work_dir) if args.work_dir else None,
        ollama_urls=[u.rstrip("/") for u in args.ollama_url],
        listener_port=args.port,
        # NZ_DEV_POD=1: as a pod runs it (tests/e2e/test_pod_network.py): Envoy's listener on
        # 0.0.0.0 (envoy.yaml) under `envoy run` (its probe port); the services' probes follow
        # NZ_METRICS_ADDR
        listener_addr="0.0.0.0" if as_pod else "127.0.0.1",
        supervise_envoy=as_pod,
        log_level="info",
        playground=True,  # the API playground at /playground (docs/PLAYGROUND.md)
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(config).start()
    try:
        key = _demo_key(f"127.0.0.1:{stack.ports['admin']}", stack.admin_token)
        state: dict[str, Any] = {
            "listener": stack.listener,
            "playground": f"{stack.listener}/playground",
            "demo_key": key,
            "admin": f"127.0.0.1:{stack.ports['admin']}",
            "admin_token": stack.admin_token,
            "console": stack.console_url,
            "database_url": stack.database_url,
            "redis_url": stack.redis_url,
            "ollama_url": stack.ollama_urls[0],
            "ollama_urls": stack.ollama_urls,
            "envoy_admin": stack.envoy_admin,
            # Every port: the services' gRPC and metrics ports ("authz", "authz_metrics", …).
            "ports": stack.ports,
            "logs": str(stack.work_dir / "logs"),
            "cli": _cli(),
            # Every process this command started (all stop on Ctrl-C / SIGTERM).
            "pids": {name: proc.popen.pid for name, proc in stack.procs.items() if proc.popen},
        }
        if args.state_file:
            Path(args.state_file).write_text(json.dumps(state, indent=2), encoding="utf-8")
        print(_banner(stack, key), flush=True)
        stop.wait()
    finally:
        print("stopping…", flush=True)
        stack.stop()
    return 0
