"""Render a shipped Envoy config for the local stack: same config, other loopback ports."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

# The shipped configs (envoy/, package data of `gateway`): what the local stack renders.
ENVOY_DIR: Traversable = files("gateway") / "envoy"


HCM = "envoy.filters.network.http_connection_manager"
# accounting's ext_proc filters in envoy/envoy.yaml (accounting/server.py): the usage-chunk
# strip, the request-body rewrite, the observed stream.
ACCOUNTING_FILTERS = ("nz.strip", "nz.rewrite", "nz.accounting")
FIXED_HEAP = "envoy.resource_monitors.fixed_heap"
DOWNSTREAM_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"
BACKENDS_CLUSTER = "ollama"  # the model servers (authz's EDS, authz/eds.py)
COLLECTOR_CLUSTER = "otel_collector"  # where Envoy's OpenTelemetry tracer exports (envoy.yaml)


@dataclass(frozen=True)
class EdgeLimits:
    """Envoy's edge limits (docs/PLATFORM.md, "Edge limits") where a rendered config wants other
    values than the shipped one: a smaller machine, or a test that must not wait 10 s. None
    keeps the shipped value."""

    max_heap_size_bytes: int | None = None
    max_downstream_connections: int | None = None
    request_headers_timeout_s: float | None = None
    request_timeout_s: float | None = None
    # How long a backend has for its first response byte before the next one is tried
    # (every route's retry_policy per_try_timeout; envoy.yaml: 120 s).
    backend_try_timeout_s: float | None = None
    # The CA bundle Envoy verifies https:// backends against (the ollama cluster's tls
    # transport socket, trusted_ca; envoy.yaml: the system's): a stack's own test CA.
    backend_ca_file: str | None = None


def render(
    source: Traversable,
    listener_port: int,
    admin_port: int,
    clusters: Mapping[str, Sequence[tuple[str, int]]],
    edge: EdgeLimits | None = None,
    listener_addr: str = "127.0.0.1",
) -> dict[str, Any]:
    """The config at ``source`` with the listener (on ``listener_addr``: loopback unless the
    stack stands for a pod, tests/e2e/test_pod_network.py), admin and named clusters
    re-pointed, and the ``edge`` limits that are set."""
    config: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    if edge is not None:
        _apply_edge(config, edge)
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] == "gateway":
            listener["address"]["socket_address"]["address"] = listener_addr
            listener["address"]["socket_address"]["port_value"] = listener_port
    for cluster in config["static_resources"]["clusters"]:
        endpoints = clusters.get(cluster["name"])
        if endpoints is None:
            continue
        if "load_assignment" not in cluster:
            # The ollama cluster's endpoints come from authz's EDS (NZ_OLLAMA_URLS or
            # NZ_BACKENDS_FILE), never from the Envoy config.
            raise ValueError(f"cluster {cluster['name']!r} has no static endpoints to re-point")
        cluster["load_assignment"]["endpoints"] = [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": host, "port_value": port}}
                        }
                    }
                ],
            }
            for host, port in endpoints
        ]
    return config


def _apply_edge(config: dict[str, Any], edge: EdgeLimits) -> None:
    monitors = {
        m["name"]: m["typed_config"]
        for m in config.get("overload_manager", {}).get("resource_monitors", [])
    }
    if edge.max_heap_size_bytes is not None:
        monitors[FIXED_HEAP]["max_heap_size_bytes"] = edge.max_heap_size_bytes
    if edge.max_downstream_connections is not None:
        limit = edge.max_downstream_connections
        monitors[DOWNSTREAM_CONNECTIONS]["max_active_downstream_connections"] = limit
    if edge.backend_ca_file is not None:
        _trust_backend_ca(config, edge.backend_ca_file)
    for hcm in http_connection_managers(config):
        if edge.backend_try_timeout_s is not None:
            for vhost in hcm["route_config"]["virtual_hosts"]:
                for route in vhost["routes"]:
                    policy = route.get("route", {}).get("retry_policy")
                    if policy is not None:
                        policy["per_try_timeout"] = f"{edge.backend_try_timeout_s}s"
        if edge.request_headers_timeout_s is not None:
            hcm["request_headers_timeout"] = f"{edge.request_headers_timeout_s}s"
        if edge.request_timeout_s is not None:
            hcm["request_timeout"] = f"{edge.request_timeout_s}s"


def _trust_backend_ca(config: dict[str, Any], ca_file: str) -> None:
    """Every TLS transport socket of the backends cluster verifies against ``ca_file``. Fails
    when there is none: a config that moved its TLS elsewhere must not be tested with the
    system's CAs by mistake."""
    replaced = 0
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] != BACKENDS_CLUSTER:
            continue
        for match in cluster.get("transport_socket_matches", []):
            tls = match["transport_socket"]["typed_config"]
            validation = tls.setdefault("common_tls_context", {}).setdefault(
                "validation_context", {}
            )
            validation["trusted_ca"] = {"filename": ca_file}
            replaced += 1
    if not replaced:
        raise ValueError(f"cluster {BACKENDS_CLUSTER!r} has no TLS transport socket to re-point")


def trace_to(config: dict[str, Any], host: str, port: int, sampling: float = 100.0) -> None:
    """Tracing on in ``config`` (off as shipped, docs/PLATFORM.md "Tracing"): every HTTP
    connection manager samples ``sampling`` percent of requests and the collector cluster
    points at ``host:port``. Fails when the config has no tracer to turn on: a config that
    dropped it must not pass a tracing test by tracing nothing."""
    managers = [hcm for hcm in http_connection_managers(config) if "tracing" in hcm]
    if not managers:
        raise ValueError("no HTTP connection manager has a tracing section to turn on")
    for hcm in managers:
        hcm["tracing"]["random_sampling"] = {"value": sampling}
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == COLLECTOR_CLUSTER:
            cluster["load_assignment"]["endpoints"] = [
                {"lb_endpoints": [{"endpoint": {"address": _socket(host, port)}}]}
            ]
            return
    raise ValueError(f"no cluster {COLLECTOR_CLUSTER!r} to point at the collector")


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def http_connection_managers(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The HTTP connection managers of every listener (their typed configs, not copies)."""
    return [
        flt["typed_config"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for flt in chain["filters"]
        if flt["name"] == HCM
    ]


def write(config: Mapping[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


class GuardRefused(RuntimeError):
    """The config guard (``neuronetz-gateway envoy check``) refused a config to be started."""


def write_checked(config: Mapping[str, Any], path: Path) -> Path:
    """:func:`write`, then the config guard: the stack's Envoy never starts on a config that
    switches the gateway's protection off (docs/PLATFORM.md, "Edit, check, roll out"). Envoy's
    own validation is skipped here: Envoy runs on the file next anyway."""
    from gateway.envoyguard.check import run
    from gateway.envoyguard.report import as_text

    write(config, path)
    violations = run([path], envoy_validate=False).violations
    if violations:
        raise GuardRefused("envoy check refused the config:\n" + as_text(violations, []))
    return path


def without_filters(
    config: Mapping[str, Any], drop: Iterable[str], access_log: bool = True
) -> dict[str, Any]:
    """A copy of ``config`` with the named HTTP filters removed, with their per-route and
    per-virtual-host settings (and, unless ``access_log``, the access log): the benchmarks'
    baselines, e.g. raw Envoy or the gateway minus one filter."""
    names = set(drop)
    result: dict[str, Any] = copy.deepcopy(dict(config))
    for listener in result["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                hcm = flt["typed_config"]
                hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] not in names]
                if not access_log:
                    hcm.pop("access_log", None)
                for vhost in hcm["route_config"]["virtual_hosts"]:
                    if "envoy.filters.http.ratelimit" in names:
                        vhost.pop("rate_limits", None)
                    for holder in [vhost, *vhost["routes"]]:
                        per_filter = holder.get("typed_per_filter_config", {})
                        for name in names:
                            per_filter.pop(name, None)
                        if not per_filter:
                            holder.pop("typed_per_filter_config", None)
                    for route in vhost["routes"]:
                        if "route" in route and "envoy.filters.http.ratelimit" in names:
                            route["route"].pop("rate_limits", None)
    return result
