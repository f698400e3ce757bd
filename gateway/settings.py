"""Settings for every service, read once from the environment (``NZ_*`` and the usual URLs).

Validated at start: :func:`load_settings` raises :class:`SettingsError` naming every problem, one
line each (``neuronetz-gateway <service>`` prints them and exits 2, no traceback); an ``NZ_*``
variable no setting reads is reported by :func:`unknown_variables` (a misspelling is otherwise
silently ignored); ``neuronetz-gateway config check`` shows both, and the effective settings with
their secrets redacted (:func:`redacted`).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from gateway import backends
from gateway.workers import machine_cpus


class Settings(BaseModel):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/gateway"
    # PostgreSQL itself, for what needs a session of its own (LISTEN/NOTIFY for revocations,
    # migrate's and the audit maintenance's advisory locks); "": NZ_DATABASE_URL. Required
    # when NZ_DATABASE_URL is a transaction pooler (docs/PLATFORM.md, "PostgreSQL behind
    # PgBouncer").
    database_direct_url: str = ""
    # "transaction": NZ_DATABASE_URL is a transaction-pooling PgBouncer (statement cache off,
    # no session reset on release, a direct URL required); "": a direct connection.
    database_pooler: Literal["", "transaction"] = ""
    # asyncpg's prepared-statement cache per connection; -1: 100 direct, 0 behind a
    # transaction pooler (PgBouncer < 1.21; >= 1.21 with max_prepared_statements may keep 100)
    database_statement_cache_size: int = Field(default=-1, ge=-1)
    # NZ_REDIS_URL names a Redis Cluster: one seed node's URL or several, comma separated
    # (redis-py discovers the rest; docs/OPERATIONS.md, "Redis Cluster")
    redis_cluster: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Ollama backends, comma separated in NZ_OLLAMA_URLS (or OLLAMA_URL for one).
    ollama_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:11434"])
    # …or a YAML file naming them, with priorities and upstream credentials (gateway/backends.py)
    backends_file: str = ""

    authz_listen: str = "127.0.0.1:9001"
    ratelimit_listen: str = "127.0.0.1:9002"
    accounting_listen: str = "127.0.0.1:9003"
    admin_listen: str = "127.0.0.1:9004"
    # The operator console (authz/console/, docs/PLAYGROUND.md): a read-only page over the admin
    # API, served by authz on this address (e.g. 127.0.0.1:9005; keep it loopback). "": off.
    console_listen: str = ""
    metrics_port: int = 0  # 0: no Prometheus endpoint (nor /livez, /readyz)
    metrics_addr: str = "127.0.0.1"  # Kubernetes: 0.0.0.0, where the kubelet's probes reach

    admin_token: str = ""
    # `migrate` waits this long for a concurrent run's lock, then fails (gateway/migrate.py)
    migrate_lock_timeout_s: float = Field(default=300.0, gt=0)
    log_level: str = "info"
    otlp_endpoint: str = ""  # OTLP gRPC collector (host:port): traces on (gateway/tracing.py)
    # worker processes per service on one port (gateway/workers.py); default: the CPUs
    workers: int = Field(default_factory=machine_cpus, ge=1, le=64)
    worker_index: int = -1  # set by the supervisor for each worker; -1: not a worker
    # This pod (its sidecars share it): names accounting's in-flight snapshot. "": host name
    instance: str = ""

    # authz
    max_request_bytes: int = 1 << 20
    key_cache_ttl_s: float = 30.0
    discovery_interval_s: float = 5.0
    discovery_ttl_s: float = 60.0
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19456
    redis_timeout_s: float = 0.25
    # Ollama-options names (comma separated) every tenant may send because the backend ignores
    # them: the dev stack's mock knobs. Never Ollama's own options (authz/fields.py).
    inert_options: str = ""
    # keys under attack: a verified secret is remembered this long (no argon2 for it again);
    # past this many failed key checks in the window, an address gets 429 for uncached keys
    verified_key_ttl_s: float = 12 * 3600.0
    key_failures_per_address: int = 60
    key_failure_window_s: int = 60

    # ratelimit
    ratelimit_config: str = ""  # static YAML of domains; "": the shipped ratelimit/limits.yaml
    ratelimit_deadline_s: float = 0.3  # Redis slower than this: error → Envoy answers 503
    ratelimit_near_ratio: float = 0.8  # a window this full counts as near_limit in metrics
    # the YAML is reloaded when its file changes, polled this often (0: on SIGHUP only)
    ratelimit_config_poll_s: float = Field(default=3.0, ge=0)

    # accounting
    audit_buffer_rows: int = 20000  # buffered rows (Postgres down) before deny mode
    audit_overflow_rows: int = 5000  # room for in-flight requests past that; then dropped
    audit_batch_rows: int = 500
    audit_flush_interval_s: float = 0.2
    deny_mode_ttl_s: int = 5
    ledger_wait_s: float = 2.0  # budget settlement waits this long for the ledger row
    prompt_log_ttl_s: float = 7 * 86400.0
    prompt_log_sweep_interval_s: float = 60.0
    accounting_spool_dir: str = ""  # rows unwritten at shutdown go here ("": nowhere)
    # SIGTERM: accounting's gRPC streams (Envoy's ext_proc, access log) get this long to end
    # before they are cut, then it settles and writes everything (docs/PLATFORM.md, "Draining")
    accounting_stop_grace_s: float = Field(default=10.0, ge=0, le=60)

    # leases of a request in flight (authz takes them, accounting renews them while it streams)
    slot_lease_s: int = Field(15, ge=1)  # a slot nobody renews or releases is free after this
    reservation_lease_s: int = Field(15, ge=1)  # likewise a budget reservation
    # the RLS as accounting reaches it (tokens/min debits); "": ratelimit_listen
    ratelimit_target: str = ""
    # accounting as authz watches it (no inference while it is down); "": accounting_listen
    accounting_target: str = ""
    accounting_stale_after_s: float = Field(0.6, gt=0, le=5)  # unanswered this long: down

    # audit retention and bounds (gateway/auditparts.py, accounting/denials.py)
    audit_retention_days: int = Field(default=90, ge=1)  # day partitions older are dropped
    audit_partitions_ahead_days: int = Field(default=3, ge=0)  # day partitions made ahead
    audit_maintenance_interval_s: float = Field(default=3600.0, gt=0)  # accounting runs it
    audit_denial_keys_per_minute: int = Field(default=1000, ge=1)  # then client_ip "*"

    @field_validator("ollama_urls", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        return _url(value, ("postgresql", "postgres"), "postgresql://user@host:5432/gateway")

    @field_validator("database_direct_url")
    @classmethod
    def _direct_url(cls, value: str) -> str:
        if value == "":
            return value  # NZ_DATABASE_URL's server
        return _url(value, ("postgresql", "postgres"), "postgresql://user@host:5432/gateway")

    @field_validator("database_pooler")
    @classmethod
    def _pooler_needs_direct(cls, value: str, info: ValidationInfo) -> str:
        if value == "transaction" and not info.data.get("database_direct_url"):
            raise ValueError(
                "a transaction pooler needs NZ_DATABASE_DIRECT_URL, PostgreSQL's own URL "
                "(LISTEN/NOTIFY and advisory locks need a session of their own)"
            )
        return value

    @property
    def direct_database_url(self) -> str:
        """PostgreSQL itself (never a transaction pooler): for sessions of our own."""
        return self.database_direct_url or self.database_url

    @property
    def statement_cache_size(self) -> int:
        """asyncpg's statement cache per pooled connection (see database_statement_cache_size)."""
        if self.database_statement_cache_size >= 0:
            return self.database_statement_cache_size
        return 0 if self.database_pooler == "transaction" else 100

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str, info: ValidationInfo) -> str:
        if not info.data.get("redis_cluster"):
            if "," in value:
                raise ValueError("several URLs name a cluster: set NZ_REDIS_CLUSTER=1")
            return _url(value, ("redis", "rediss", "unix"), "redis://host:6379/0")
        seeds = [u.strip() for u in value.split(",")]
        example = "redis://10.0.0.1:6379,redis://10.0.0.2:6379"
        for seed in seeds:
            if not seed:
                raise ValueError(f"an empty seed URL (e.g. {example})")
            _url(seed, ("redis", "rediss"), example)
            if urlsplit(seed).path.strip("/") not in ("", "0"):
                raise ValueError(f"a cluster has database 0 only (e.g. {example})")
        if len({urlsplit(s).scheme for s in seeds}) > 1:
            raise ValueError(f"seeds mix redis:// and rediss:// (e.g. {example})")
        return ",".join(seeds)

    @field_validator("ollama_urls")
    @classmethod
    def _backend_urls(cls, value: list[str]) -> list[str]:
        # The backends' one rule (gateway/backends.py): scheme://host[:port], nothing else.
        try:
            backends.from_urls(value)
        except backends.BackendsError as exc:
            raise ValueError(f"{exc} (e.g. http://host:11434)") from None
        return value

    @field_validator(
        "authz_listen",
        "ratelimit_listen",
        "accounting_listen",
        "admin_listen",
        "console_listen",
        "ratelimit_target",
        "accounting_target",
    )
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value == "":
            return value  # a target left empty: the service's listen address
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("not host:port (e.g. 127.0.0.1:9001)")
        return value

    @field_validator("metrics_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("not a port (0-65535; 0: none)")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in _LEVELS:
            raise ValueError(f"not a log level ({', '.join(_LEVELS)})")
        return value

    @property
    def worker(self) -> bool:
        """One of several worker processes of its service (it shares its ports)."""
        return self.worker_index >= 0


_LEVELS = ("debug", "info", "warning", "error", "critical")
# Read from the environment besides the settings' own NZ_<NAME>s (tools, the dev stack, tests).
OTHER_VARIABLES = frozenset(
    {"NZ_ADMIN_TOKEN_FILE", "NZ_ADMIN_ADDR", "NZ_DEV_POD", "NZ_KEEP_STACK_DIR"}
)
_OTHER_PREFIXES = ("NZ_TEST_",)  # the tests' own switches
# Where a setting may come from instead of its NZ_<NAME>, when that is unset.
_FALLBACKS = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL", "ollama_urls": "OLLAMA_URL"}
_SECRETS = frozenset({"admin_token"})


class SettingsError(ValueError):
    """The environment's settings cannot be used; :attr:`problems`: one line each, naming the
    variable (never a secret's value)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _url(value: str, schemes: tuple[str, ...], example: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"not a {'/'.join(schemes)} URL (e.g. {example})")
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        raise ValueError(f"its port is not a number (e.g. {example})") from None
    if parts.scheme != "unix" and not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"no host (e.g. {example})")
    return value


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "[unparsable URL]"
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _shown(name: str, value: object) -> str:
    """A setting's value as an operator may see it: secrets redacted."""
    if name in _SECRETS:
        return "[redacted]" if value else ""
    if isinstance(value, list):
        return ",".join(_shown(name, v) for v in value)
    if isinstance(value, str) and value.count("://") > 1:  # a Redis Cluster's seed URLs
        return ",".join(redact_url(url) for url in value.split(","))
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return str(value)


def redacted(cfg: Settings) -> dict[str, str]:
    """Every setting by its variable's name (``NZ_<NAME>``), secrets redacted."""
    return {
        f"NZ_{name.upper()}": _shown(name, getattr(cfg, name)) for name in Settings.model_fields
    }


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``NZ_*`` variables set that nothing reads, each with a guess when one is close:
    ``NZ_REDIS_ULR (did you mean NZ_REDIS_URL?)``."""
    env = os.environ if environ is None else environ
    known = {f"NZ_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    found = []
    for var in sorted(env):
        if not var.startswith("NZ_") or var in known or var.startswith(_OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.8)
        found.append(f"{var} (did you mean {close[0]}?)" if close else var)
    return found


def _admin_token_from_env(env: Mapping[str, str]) -> str:
    token = env.get("NZ_ADMIN_TOKEN", "")
    path = env.get("NZ_ADMIN_TOKEN_FILE")
    if not token and path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(
                [f"NZ_ADMIN_TOKEN_FILE: cannot read {path}: {exc.strerror or exc}"]
            ) from None
    return token


def reach(target: str, listen: str) -> str:
    """Where one sidecar reaches another: ``target`` when set, else the other's own listen
    address (the services share a network namespace: a wildcard host is loopback)."""
    if target:
        return target
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):  # a wildcard listens everywhere: loopback
        host = "127.0.0.1"
    return f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP (``[::1]`` brackets allowed): reachable from this host
    (this pod) alone."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raw(env: Mapping[str, str]) -> tuple[dict[str, object], dict[str, str]]:
    """The settings the environment sets (name → text) and the variable each came from."""
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        var = f"NZ_{name.upper()}"
        if var not in env and env.get(_FALLBACKS.get(name, "")):
            var = _FALLBACKS[name]
        if var in env:
            values[name], sources[name] = env[var], var
    return values, sources


def _problems(exc: ValidationError, sources: Mapping[str, str]) -> list[str]:
    """One line per invalid setting: its variable, why, and its value (a secret's never)."""
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        var = sources.get(name, f"NZ_{name.upper()}")
        why = str(err["msg"]).removeprefix("Value error, ")
        shown = "" if name in _SECRETS else f" (got {_shown(name, err.get('input'))!r})"
        lines.append(f"{var}: {why}{shown}")
    return lines


@dataclass(frozen=True)
class Inspection:
    """The effective settings; every problem (one line each); the variables that are invalid
    (left at their defaults in ``settings``)."""

    settings: Settings
    problems: list[str]
    invalid: frozenset[str] = frozenset()


def inspect_environment(environ: Mapping[str, str] | None = None) -> Inspection:
    """What the environment's settings are, and what is wrong with them."""
    env = os.environ if environ is None else environ
    values, sources = _raw(env)
    problems: list[str] = []
    try:
        values["admin_token"] = _admin_token_from_env(env)
    except SettingsError as exc:
        problems += exc.problems
    try:
        return Inspection(Settings.model_validate(values), problems)
    except ValidationError as exc:
        problems += _problems(exc, sources)
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        rest = {k: v for k, v in values.items() if k not in bad}
        invalid = frozenset(f"NZ_{name.upper()}" for name in bad)
        return Inspection(Settings.model_validate(rest), problems, invalid)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment (``os.environ`` by default); raises
    :class:`SettingsError` listing every problem. Unknown variables are not an error here
    (:func:`unknown_variables`)."""
    found = inspect_environment(environ)
    if found.problems:
        raise SettingsError(found.problems)
    return found.settings


@cache
def settings() -> Settings:
    return load_settings()
