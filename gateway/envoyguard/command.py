"""``neuronetz-gateway envoy check [FILE…]``: refuse an Envoy config that opens the gateway.

Exit 0: every file keeps every invariant; 1: violations (one line each, or ``--json``);
2: a file cannot be read as an Envoy config. The checks (and Envoy's typed messages) are
imported when the command runs, not when the CLI builds its parser: every service starts
through that CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments, on the CLI's ``envoy check`` subparser or main's own."""
    parser.add_argument(
        "files", nargs="*", type=Path, help="configs (default: the shipped envoy.yaml)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list (for CI)")
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=None,
        help="authz's NZ_MAX_REQUEST_BYTES (default: the environment's, else authz's default)",
    )
    parser.add_argument("--envoy", default=None, help="the Envoy binary for --mode validate")
    parser.add_argument("--no-validate", action="store_true", help="skip envoy --mode validate")


def run_parsed(args: argparse.Namespace) -> int:
    """Run the command on parsed arguments (add_arguments); the exit status."""
    from gateway.envoyguard.check import SHIPPED, default_max_request_bytes, run
    from gateway.envoyguard.load import LoadError
    from gateway.envoyguard.report import as_json, as_text

    try:
        limit = args.max_request_bytes
        if limit is None:
            limit = default_max_request_bytes()
    except ValueError:
        print("error: NZ_MAX_REQUEST_BYTES is not a whole number of bytes", file=sys.stderr)
        return 2
    files: list[Path] = args.files or [SHIPPED]
    try:
        result = run(files, limit, envoy=args.envoy, envoy_validate=not args.no_validate)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(as_json(result.violations))
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        text = as_text(result.violations, result.notes)
        if text:
            print(text)
        if not result.violations:
            print(f"ok: {len(files)} file(s) keep every invariant")
    return 1 if result.violations else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="neuronetz-gateway envoy check",
        description="Refuse an Envoy config that switches the gateway's protection off "
        "(docs/PLATFORM.md, 'Edit, check, roll out').",
    )
    add_arguments(parser)
    return run_parsed(parser.parse_args(argv))
