"""The PgBouncer settings (gateway/settings.py) and the test stack's PgBouncer ini
(devstack/pgbouncer.py): what an operator sets, what is refused, what PgBouncer is told."""

from __future__ import annotations

from pathlib import Path

from devstack.pgbouncer import PoolerConfig, render_ini
from gateway.settings import inspect_environment, redacted

POOLER = "postgresql://gw@pgbouncer:6432/gateway"
DIRECT = "postgresql://gw@postgres:5432/gateway"


def test_a_direct_connection_by_default_keeps_asyncpgs_statement_cache() -> None:
    found = inspect_environment({"NZ_DATABASE_URL": DIRECT})
    assert found.problems == []
    assert found.settings.database_pooler == ""
    assert found.settings.statement_cache_size == 100
    assert found.settings.direct_database_url == DIRECT


def test_behind_a_transaction_pooler_the_cache_is_off_and_sessions_go_direct() -> None:
    env = {
        "NZ_DATABASE_URL": POOLER,
        "NZ_DATABASE_POOLER": "transaction",
        "NZ_DATABASE_DIRECT_URL": DIRECT,
    }
    found = inspect_environment(env)
    assert found.problems == []
    assert found.settings.statement_cache_size == 0
    assert found.settings.database_url == POOLER
    assert found.settings.direct_database_url == DIRECT
    # PgBouncer >= 1.21 with max_prepared_statements: the cache may be kept
    kept = inspect_environment({**env, "NZ_DATABASE_STATEMENT_CACHE_SIZE": "100"})
    assert kept.settings.statement_cache_size == 100


def test_a_transaction_pooler_without_a_direct_url_is_refused_by_name() -> None:
    found = inspect_environment({"NZ_DATABASE_URL": POOLER, "NZ_DATABASE_POOLER": "transaction"})
    assert found.problems == [
        "NZ_DATABASE_POOLER: a transaction pooler needs NZ_DATABASE_DIRECT_URL, PostgreSQL's "
        "own URL (LISTEN/NOTIFY and advisory locks need a session of their own) "
        "(got 'transaction')"
    ]


def test_unknown_pool_modes_and_non_postgres_direct_urls_are_refused() -> None:
    found = inspect_environment(
        {"NZ_DATABASE_POOLER": "session", "NZ_DATABASE_DIRECT_URL": "redis://x:6379/0"}
    )
    assert found.problems == [
        "NZ_DATABASE_DIRECT_URL: not a postgresql/postgres URL "
        "(e.g. postgresql://user@host:5432/gateway) (got 'redis://x:6379/0')",
        "NZ_DATABASE_POOLER: Input should be '' or 'transaction' (got 'session')",
    ]


def test_the_direct_urls_password_is_redacted_in_config_check() -> None:
    found = inspect_environment({"NZ_DATABASE_DIRECT_URL": "postgresql://gw:s3cret@pg/gateway"})
    assert redacted(found.settings)["NZ_DATABASE_DIRECT_URL"] == "postgresql://gw:***@pg/gateway"


def test_the_test_stacks_pgbouncer_pools_transactions_on_loopback() -> None:
    ini = render_ini(PoolerConfig(6500, "127.0.0.1", 5500, "postgres"), Path("/w/userlist.txt"))
    lines = set(ini.splitlines())
    assert {
        "* = host=127.0.0.1 port=5500",
        "listen_addr = 127.0.0.1",
        "listen_port = 6500",
        "pool_mode = transaction",
        "default_pool_size = 6",
        "auth_file = /w/userlist.txt",
        "server_reset_query =",
        "query_wait_timeout = 2",
        "ignore_startup_parameters = extra_float_digits",
    } <= lines
