"""Prometheus metrics endpoint. Labels are tenants at most, never keys."""

from __future__ import annotations

from prometheus_client import start_http_server


def serve(port: int) -> None:
    if port:
        start_http_server(port, addr="127.0.0.1")
