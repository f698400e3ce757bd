"""Tracing is off unless NZ_OTLP_ENDPOINT is set: no interceptor, no OpenTelemetry loaded
(gateway/tracing.py). The trace itself, on: tests/e2e/test_tracing.py."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from devstack import envoyconf
from gateway import tracing
from gateway.settings import load_settings

# A fresh interpreter: what a service with the default settings installs and imports. Not
# the SDK's tracing, its exporter nor the gRPC instrumentation (redis-py imports OpenTelemetry's
# metrics API and SDK for metrics of its own, off unless an application initialises them).
_OFF = """
import json, sys
TRACING = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation")
from gateway.settings import load_settings
from gateway.tracing import interceptors
import authz.main, ratelimit.main, accounting.main
cfg = load_settings()
installed = [len(interceptors(s, cfg.otlp_endpoint)) for s in ("authz", "ratelimit", "accounting")]
loaded = sorted(m for m in sys.modules if m.startswith(TRACING))
print(json.dumps({"endpoint": cfg.otlp_endpoint, "installed": installed, "loaded": loaded}))
"""


def test_with_tracing_off_no_interceptor_is_installed_and_no_opentelemetry_is_loaded() -> None:
    env = {"PATH": "/usr/bin:/bin"}  # no NZ_OTLP_ENDPOINT: the default
    out = subprocess.run(
        [sys.executable, "-c", _OFF], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == {"endpoint": "", "installed": [0, 0, 0], "loaded": []}


def test_the_one_setting_turns_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NZ_OTLP_ENDPOINT", "collector.observability:4317")
    assert load_settings().otlp_endpoint == "collector.observability:4317"


@pytest.mark.parametrize(
    ("method", "traced"),
    [
        ("/envoy.service.auth.v3.Authorization/Check", True),
        ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", True),
        ("/envoy.service.ext_proc.v3.ExternalProcessor/Process", True),
        # Probes, reflection and the long-lived streams: no span per connection.
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
        ("/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints", False),
        ("/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs", False),
        ("/neuronetz.admin.v1.Admin/ListTenants", False),
    ],
)
def test_only_the_rpcs_of_a_request_are_traced(method: str, traced: bool) -> None:
    assert tracing.traced(method) is traced


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("127.0.0.1:4317", "http://127.0.0.1:4317"),  # a bare host:port: plaintext
        ("http://collector:4317", "http://collector:4317"),
        ("https://collector.example:4317", "https://collector.example:4317"),
    ],
)
def test_the_collector_endpoint_is_plaintext_unless_https(endpoint: str, url: str) -> None:
    assert tracing.collector_url(endpoint) == url


def _shipped() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (envoyconf.ENVOY_DIR / "envoy.yaml").read_text(encoding="utf-8")
    )
    return loaded


def _collector(config: dict[str, Any]) -> Any:
    (cluster,) = [
        c
        for c in config["static_resources"]["clusters"]
        if c["name"] == envoyconf.COLLECTOR_CLUSTER
    ]
    return cluster["load_assignment"]["endpoints"]


def test_the_shipped_envoy_config_traces_nothing_until_its_sampling_is_raised() -> None:
    config = _shipped()
    managers = envoyconf.http_connection_managers(config)
    assert managers and all(m["tracing"]["random_sampling"] == {"value": 0} for m in managers)
    envoyconf.trace_to(config, "127.0.0.1", 14317)
    assert all(m["tracing"]["random_sampling"] == {"value": 100.0} for m in managers)
    address = _collector(config)[0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 14317}}


def test_a_config_without_a_tracer_cannot_be_traced_by_mistake() -> None:
    config = _shipped()
    for manager in envoyconf.http_connection_managers(config):
        del manager["tracing"]
    with pytest.raises(ValueError, match="tracing section"):
        envoyconf.trace_to(config, "127.0.0.1", 4317)
