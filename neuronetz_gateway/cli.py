"""``neuronetz-gateway``: run a service, migrate, or start the whole local stack.

Run as ``neuronetz-gateway`` (the console script) or ``python -m neuronetz_gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from gateway import backends, workers
from gateway.envoyguard import command as envoy_check
from gateway.services import SERVICE_MODULES
from gateway.settings import (
    SettingsError,
    inspect_environment,
    load_settings,
    redacted,
    unknown_variables,
)
from neuronetz_gateway.envoyrun import add_arguments as envoy_run_arguments
from neuronetz_gateway.envoyrun import run_parsed as envoy_run

# How the workers of ``--workers`` run: this command again, as a module.
WORKER_COMMAND = (sys.executable, "-m", "neuronetz_gateway")


def _run_service(name: str, workers_flag: int | None = None) -> int:
    unknown = unknown_variables()  # first: a misspelling may be why a setting is bad
    if unknown and "NZ_WORKER_INDEX" not in os.environ:  # the supervisor warns for its workers
        print(
            f"neuronetz-gateway {name}: warning: unknown variables ignored: {', '.join(unknown)}",
            file=sys.stderr,
        )
    cfg = load_settings()  # SettingsError: main() prints each problem, exit 2
    if workers_flag is not None:
        cfg = cfg.model_copy(update={"workers": max(1, workers_flag)})
    if cfg.workers > 1 and not cfg.worker:
        command = [*WORKER_COMMAND, name]
        return workers.supervise(name, command, cfg.workers, cfg.metrics_port)
    module = importlib.import_module(SERVICE_MODULES[name])
    # uvloop: the services' event loop (grpc aio, asyncpg, redis) runs ~1.5x the Checks/s.
    from gateway.storeerrors import STORE_ERRORS  # the services' imports: asyncpg, redis
    from gateway.tracing import TracingUnavailable

    # A store unreachable at start, a port taken, tracing asked for and impossible: one line.
    one_line: tuple[type[Exception], ...] = (*STORE_ERRORS, TracingUnavailable)
    try:
        uvloop.run(module.run(cfg))
    except one_line as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        print(f"neuronetz-gateway {name}: cannot run: {why}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from gateway import migrate

    url = load_settings().direct_database_url  # its advisory lock needs a session
    try:
        if args.status:
            states = asyncio.run(migrate.status(url))
            for row in states:
                when = row.applied_at.isoformat(timespec="seconds") if row.applied_at else "-"
                print(f"{row.state:<8} {row.name}  {when}")
            return 1 if any(row.state == "changed" for row in states) else 0
        applied = asyncio.run(migrate.apply(url))
    except migrate.MigrationError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _audit_retention(args: argparse.Namespace) -> int:
    """Create the audit log's partitions ahead and drop those past the retention
    (gateway/auditparts.py: what accounting also runs periodically); idempotent."""
    import asyncpg

    from gateway import auditparts
    from gateway.storeerrors import POSTGRES_ERRORS

    cfg = load_settings()
    days = args.retention_days if args.retention_days is not None else cfg.audit_retention_days

    async def run() -> auditparts.Maintenance:
        conn = await asyncpg.connect(cfg.direct_database_url)  # a session's advisory lock
        try:
            return await auditparts.maintain(
                conn, retention_days=days, ahead_days=cfg.audit_partitions_ahead_days, wait=True
            )
        finally:
            await conn.close()

    failures: tuple[type[Exception], ...] = (ValueError, *POSTGRES_ERRORS)
    try:
        done = asyncio.run(run())
    except failures as exc:
        print(f"audit retention: {exc}", file=sys.stderr)
        return 1
    for name in done.created:
        print(f"created {name}")
    for name in done.dropped:
        print(f"dropped {name}")
    if done.moved_rows:
        print(f"moved {done.moved_rows} rows from {auditparts.DEFAULT_PARTITION} into their days")
    if done.purged_rows:
        print(
            f"deleted {done.purged_rows} rows older than {days} days"
            f" from {auditparts.DEFAULT_PARTITION}"
        )
    if not (done.created or done.dropped or done.moved_rows or done.purged_rows):
        print(f"nothing to do: partitions up to date, retention {days} days")
    return 0


def _config_check(_args: argparse.Namespace) -> int:
    """Print the effective settings (secrets redacted) and every problem; 1 when there is any
    (an invalid setting or an unknown ``NZ_*`` variable)."""
    found = inspect_environment()
    problems = [*found.problems]
    problems += [f"{var}: unknown variable, ignored" for var in unknown_variables()]
    if found.settings.backends_file and "NZ_BACKENDS_FILE" not in found.invalid:
        # Read as authz reads it at start (its header secrets too): authz is the one reader.
        try:
            backends.load_file(Path(found.settings.backends_file))
        except backends.BackendsError as exc:
            problems.append(f"NZ_BACKENDS_FILE: {exc}")
    for var, value in redacted(found.settings).items():
        print(f"{var}={'(invalid: see below)' if var in found.invalid else value}")
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("ok: no problems", file=sys.stderr)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from devstack.processes import missing_local_extra

    missing = missing_local_extra()
    if missing:
        print(
            "dev: the local stack needs " + ", ".join(missing) + ": "
            "pip install 'neuronetz-gateway[local]' (scripts/dev does this)",
            file=sys.stderr,
        )
        return 1
    from devstack.dev import run_dev

    return run_dev(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuronetz-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SERVICE_MODULES:
        p = sub.add_parser(name, help=f"run the {name} gRPC service")
        p.add_argument(
            "--workers",
            type=int,
            help="worker processes on the service's ports (default: NZ_WORKERS, else the CPUs)",
        )
        p.set_defaults(func=lambda a, n=name: _run_service(n, a.workers))
    migrate = sub.add_parser("migrate", help="apply the database migrations this package ships")
    migrate.add_argument(
        "--status", action="store_true", help="list applied and pending migrations, apply none"
    )
    migrate.set_defaults(func=_migrate)
    audit = sub.add_parser("audit", help="maintain the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    retention = audit_sub.add_parser(
        "retention",
        help="create the audit log's day partitions ahead, drop those past the retention",
    )
    retention.add_argument(
        "--retention-days",
        type=int,
        help="keep this many days (default: NZ_AUDIT_RETENTION_DAYS, 90)",
    )
    retention.set_defaults(func=_audit_retention)
    config = sub.add_parser("config", help="the settings the services read (NZ_*)")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser(
        "check",
        help="print the effective settings (secrets redacted) and every problem",
        description="Read the settings from the environment as a service would, print them "
        "(NZ_<NAME>=value, passwords and the admin token redacted) and every problem, one line "
        "each: invalid values and NZ_* variables no setting reads. Exit 1 on any problem.",
    )
    config_check.set_defaults(func=_config_check)
    dev = sub.add_parser("dev", help="run the whole gateway locally on embedded defaults")
    dev.add_argument(
        "--ollama-url",
        action="append",
        default=[],
        help="a real Ollama to use instead of the mock (repeat for several)",
    )
    dev.add_argument("--port", type=int, default=8080, help="listener port (0: any free)")
    dev.add_argument("--state-file", help="write the stack's URLs and demo key here as JSON")
    dev.add_argument("--work-dir", help="keep the stack's data here (default: a temp dir)")
    dev.set_defaults(func=_dev)
    envoy = sub.add_parser("envoy", help="the Envoy config platform teams edit")
    envoy_sub = envoy.add_subparsers(dest="envoy_command", required=True)
    check = envoy_sub.add_parser(
        "check",
        help="refuse an Envoy config that switches the gateway's protection off",
        description="Parse each config into Envoy's typed messages, run envoy --mode validate "
        "when Envoy is at hand, and check the gateway's invariants (docs/PLATFORM.md).",
    )
    envoy_check.add_arguments(check)
    check.set_defaults(func=envoy_check.run_parsed)
    supervise = envoy_sub.add_parser(
        "run",
        help="run Envoy and drain it on SIGTERM without cutting a stream",
        description="Start Envoy with the arguments after --, serve /readyz and /livez on the "
        "probe port, and on SIGTERM fail readiness, drain Envoy's listeners, wait until no "
        "request is active (or the drain timeout), then stop Envoy and exit with its code "
        '(docs/PLATFORM.md, "Draining").',
    )
    envoy_run_arguments(supervise)
    supervise.set_defaults(func=envoy_run)
    from gateway import admincli  # operator subcommands: thin clients of the admin API

    admincli.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except SettingsError as exc:  # one line per problem, no traceback
        for line in exc.problems:
            print(f"neuronetz-gateway {args.command}: bad setting: {line}", file=sys.stderr)
        return 2
    return result
