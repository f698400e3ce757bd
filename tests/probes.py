"""``GET`` a probe or metrics port as the kubelet and Prometheus do: plain HTTP/1.1."""

from __future__ import annotations

import http.client


def http_get(host: str, port: int, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(status, body) of ``GET path``; raises OSError when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()
