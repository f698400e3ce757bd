"""Settings for every service, read once from the environment (``NZ_*`` and the usual URLs)."""

from __future__ import annotations

import ipaddress
import os
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from gateway.workers import machine_cpus


class Settings(BaseModel):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/gateway"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Ollama backends, comma separated in NZ_OLLAMA_URLS (or OLLAMA_URL for one).
    ollama_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:11434"])
    # …or a YAML file naming them, with priorities and upstream credentials (gateway/backends.py)
    backends_file: str = ""

    authz_listen: str = "127.0.0.1:9001"
    ratelimit_listen: str = "127.0.0.1:9002"
    accounting_listen: str = "127.0.0.1:9003"
    admin_listen: str = "127.0.0.1:9004"
    metrics_port: int = 0  # 0: no Prometheus endpoint (nor /livez, /readyz)
    metrics_addr: str = "127.0.0.1"  # Kubernetes: 0.0.0.0, where the kubelet's probes reach

    admin_token: str = ""
    # `migrate` waits this long for a concurrent run's lock, then fails (gateway/migrate.py)
    migrate_lock_timeout_s: float = Field(default=300.0, gt=0)
    log_level: str = "info"
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

    @property
    def worker(self) -> bool:
        """One of several worker processes of its service (it shares its ports)."""
        return self.worker_index >= 0


def _admin_token_from_env() -> str:
    token = os.environ.get("NZ_ADMIN_TOKEN", "")
    path = os.environ.get("NZ_ADMIN_TOKEN_FILE")
    if not token and path:
        token = Path(path).read_text(encoding="utf-8").strip()
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


def load_settings() -> Settings:
    """Build settings from the environment; unknown variables are ignored."""
    values: dict[str, object] = {}
    for name in Settings.model_fields:
        env = os.environ.get(f"NZ_{name.upper()}")
        if env is not None:
            values[name] = env
    if "database_url" not in values and os.environ.get("DATABASE_URL"):
        values["database_url"] = os.environ["DATABASE_URL"]
    if "redis_url" not in values and os.environ.get("REDIS_URL"):
        values["redis_url"] = os.environ["REDIS_URL"]
    if "ollama_urls" not in values and os.environ.get("OLLAMA_URL"):
        values["ollama_urls"] = os.environ["OLLAMA_URL"]
    values["admin_token"] = _admin_token_from_env()
    return Settings.model_validate(values)


@cache
def settings() -> Settings:
    return load_settings()
