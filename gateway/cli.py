"""``neuronetz-gateway``: run a service, migrate, or start the whole local stack."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence

import uvloop

from gateway.settings import load_settings

# Each service's entry module exposes ``async def run(settings)``. The local stack starts
# every service listed here, in this order.
SERVICE_MODULES = {
    "authz": "authz.main",
    "ratelimit": "ratelimit.main",
    "accounting": "accounting.main",
}


def _run_service(name: str) -> int:
    module = importlib.import_module(SERVICE_MODULES[name])
    # uvloop: the services' event loop (grpc aio, asyncpg, redis) runs ~1.5x the Checks/s.
    uvloop.run(module.run(load_settings()))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from gateway import migrate

    url = load_settings().database_url
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
        p.set_defaults(func=lambda a, n=name: _run_service(n))
    migrate = sub.add_parser("migrate", help="apply the database migrations this package ships")
    migrate.add_argument(
        "--status", action="store_true", help="list applied and pending migrations, apply none"
    )
    migrate.set_defaults(func=_migrate)
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
    from gateway import admincli  # operator subcommands: thin clients of the admin API

    admincli.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
