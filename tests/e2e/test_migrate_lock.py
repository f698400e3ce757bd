"""`neuronetz-gateway migrate` waits a bounded time for a concurrent run's lock
(NZ_MIGRATE_LOCK_TIMEOUT_S), then fails with a clear error and applies nothing; a Job behind
a hung run fails instead of hanging (deploy/kubernetes: the migrations Job)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import asyncpg

from devstack.stack import Stack
from tests.databases import fresh_database

_LOCK_ID = 0x6E7A_6777  # the advisory lock every migrate run takes ("nzgw")


async def _migrate_while_locked(url: str, env: dict[str, str]) -> tuple[int, str, float, bool]:
    """Run the CLI while another session holds the migration lock: its exit status, stderr,
    how long it took, and whether it created the migrations table."""
    holder = await asyncpg.connect(url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "neuronetz_gateway",
            "migrate",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:  # still waiting for the lock: the bound did not hold
                proc.kill()
                await proc.wait()
        took = time.monotonic() - started
        table = await holder.fetchval("SELECT to_regclass('gateway.schema_migrations') IS NOT NULL")
        assert proc.returncode is not None
        return proc.returncode, err.decode(), took, bool(table)
    finally:
        await holder.close()


def test_migrate_gives_up_on_a_held_lock_after_the_timeout(stack: Stack) -> None:
    url = fresh_database(stack.database_url, "ml")
    env = {**stack.service_env(), "NZ_DATABASE_URL": url, "NZ_MIGRATE_LOCK_TIMEOUT_S": "1.5"}
    status, err, took, table = asyncio.run(_migrate_while_locked(url, env))
    assert status == 1
    assert err.startswith(
        "migrate: the migration lock is still held by another migrate run after 1.5 s "
        "(NZ_MIGRATE_LOCK_TIMEOUT_S); nothing was applied."
    )
    assert "Traceback" not in err
    assert 1.5 <= took < 15  # the bound, plus the CLI's start-up
    assert table is False  # nothing applied, not even the bookkeeping table
    # Once the lock is free the same command applies everything.
    done = subprocess.run(
        [sys.executable, "-m", "neuronetz_gateway", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "0001_schema.sql" in done.stdout
