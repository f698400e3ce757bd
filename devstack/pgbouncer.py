"""Debian's ``pgbouncer`` in transaction pooling mode in front of the stack's PostgreSQL
(docs/PLATFORM.md, "PostgreSQL behind PgBouncer"): its ini and user list in the stack's work
dir, the process, and its admin console (``SHOW POOLS``/``SHOW STATS``, read with ``psql``).

PgBouncer refuses to run as root: as root it runs as :func:`unprivileged_user`, as PostgreSQL
does. It is a system package (``apt-get install pgbouncer``, which scripts/test does), not a
Python one: :func:`pgbouncer_bin` finds it on PATH or in /usr/sbin, or says how to install it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devstack.processes import Proc, free_port, postgres_bin, unprivileged_user

# Server connections per (database, user): fewer than the services' pools together (authz 10,
# accounting 8, and the admin RPC's), so client transactions really share server connections.
DEFAULT_POOL_SIZE = 6
ADMIN_DATABASE = "pgbouncer"  # the admin console's pseudo-database
MISSING = (
    "pgbouncer is not installed (Debian: apt-get install -y pgbouncer; scripts/test installs "
    "it when it runs as root or with sudo -n)"
)


class PgBouncerMissing(RuntimeError):
    pass


def pgbouncer_bin() -> str:
    """The ``pgbouncer`` binary: on PATH, else Debian's /usr/sbin (not on every PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found is None:
        raise PgBouncerMissing(MISSING)
    return found


@dataclass(frozen=True)
class PoolerConfig:
    """What the ini says: where PgBouncer listens and what it forwards to."""

    listen_port: int
    server_host: str
    server_port: int
    user: str
    default_pool_size: int = DEFAULT_POOL_SIZE


def render_ini(cfg: PoolerConfig, userlist: Path) -> str:
    """The ini: every database name forwarded to the server (``*``), transaction pooling,
    trust authentication (the embedded PostgreSQL trusts loopback too), TCP on loopback only."""
    lines = [
        "[databases]",
        f"* = host={cfg.server_host} port={cfg.server_port}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {cfg.listen_port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {userlist}",
        f"admin_users = {cfg.user}",
        f"stats_users = {cfg.user}",
        "pool_mode = transaction",
        f"default_pool_size = {cfg.default_pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        "max_client_conn = 1000",
        "max_db_connections = 0",
        # Session state is never reset between clients: nothing may leave any (and nothing does)
        "server_reset_query =",
        # psycopg and JDBC clients send it; PgBouncer refuses unknown startup parameters
        "ignore_startup_parameters = extra_float_digits",
        "server_login_retry = 1",
        # A client waiting this long for a server connection gets an error: PostgreSQL down
        # behind PgBouncer fails fast, as it does without it (PgBouncer's default: 120 s)
        "query_wait_timeout = 2",
        "log_connections = 0",
        "log_disconnections = 0",
        "",
    ]
    return "\n".join(lines)


def _with_port(url: str, port: int, database: str | None = None) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    user = f"{parts.username}@" if parts.username else ""
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit(parts._replace(netloc=f"{user}{host}:{port}", path=path))


class PgBouncer:
    """One PgBouncer in front of the PostgreSQL at ``server_url`` (a trust-authenticated one:
    the embedded PostgreSQL, or an external one whose user needs no password)."""

    def __init__(self, server_url: str, work_dir: Path, log_dir: Path) -> None:
        parts = urlsplit(server_url)
        self.server_url = server_url
        self.config = PoolerConfig(
            listen_port=free_port(),
            server_host=parts.hostname or "127.0.0.1",
            server_port=parts.port or 5432,
            user=parts.username or "postgres",
        )
        self.dir = work_dir / "pgbouncer"
        self.dir.mkdir(mode=0o755, exist_ok=True)
        userlist = self.dir / "userlist.txt"
        userlist.write_text(f'"{self.config.user}" ""\n', encoding="utf-8")
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(render_ini(self.config, userlist), encoding="utf-8")
        self.proc = Proc(
            "pgbouncer",
            [pgbouncer_bin(), str(ini)],
            log_dir,
            port=self.config.listen_port,
            user=unprivileged_user(),
        )

    @property
    def url(self) -> str:
        """The server's URL with PgBouncer's port: what the services connect to."""
        return _with_port(self.server_url, self.config.listen_port)

    def start(self) -> PgBouncer:
        self.proc.start()
        return self

    def stop(self) -> None:
        self.proc.stop()

    def show(self, what: str) -> list[dict[str, str]]:
        """``SHOW <what>`` on the admin console (``POOLS``, ``STATS``, ``SERVERS``...): one dict
        per row, by column. The console speaks the simple query protocol only: psql reads it."""
        admin = _with_port(self.server_url, self.config.listen_port, ADMIN_DATABASE)
        psql = str(postgres_bin() / "psql")
        out = subprocess.run(
            [psql, "-X", "-A", "-F", "\t", "-P", "footer=off", "-c", f"SHOW {what}", admin],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        header, *rows = out.splitlines()
        names = header.split("\t")
        return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]
