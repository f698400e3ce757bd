"""Render a shipped Envoy config for the local stack: same config, other loopback ports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ENVOY_DIR = Path(__file__).resolve().parent.parent / "envoy"


def url_endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def render(
    source: Path,
    listener_port: int,
    admin_port: int,
    clusters: Mapping[str, Sequence[tuple[str, int]]],
) -> dict[str, Any]:
    """The config at ``source`` with the listener, admin and named clusters re-pointed."""
    config: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] == "gateway":
            listener["address"]["socket_address"]["address"] = "127.0.0.1"
            listener["address"]["socket_address"]["port_value"] = listener_port
    for cluster in config["static_resources"]["clusters"]:
        endpoints = clusters.get(cluster["name"])
        if endpoints is None:
            continue
        cluster["load_assignment"]["endpoints"] = [
            {
                "priority": index if cluster["name"] == "ollama" else 0,
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": host, "port_value": port}}
                        }
                    }
                ],
            }
            for index, (host, port) in enumerate(endpoints)
        ]
    return config


def write(config: Mapping[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path
