"""The playground's routes in an Envoy config: off as shipped (envoy/envoy.yaml serves no
page), on when the config is rendered with them (``neuronetz-gateway envoy run --playground``,
the dev stack; docs/PLAYGROUND.md).

``GET /playground`` (and ``/playground/``) is a ``direct_response`` whose body is the page's
file: Envoy answers it itself, nothing is forwarded and no service is called, so ext_authz,
the ext_proc filters, the buffer and the rate-limit filter are switched off on these two routes
only. The guard (gateway/envoyguard/routes.py) accepts this: a route that answers locally
reaches no upstream. The response carries a CSP with the hashes of the page's own inline
script and style, computed here from the file Envoy will read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway import pagecsp
from gateway.playground import page

PATHS = ("/playground", "/playground/")
LISTENER = "gateway"  # the public listener of envoy/envoy.yaml
HCM = "envoy.filters.network.http_connection_manager"
# Envoy refuses a direct_response body over the route config's max (default 4 KiB).
BODY_LIMIT_BYTES = 262144

_EXT_PROC_OFF = {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
    "disabled": True,
}
_OFF = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
# Every filter of the shipped chain that would act on the request: none has anything to do.
FILTERS_OFF: dict[str, dict[str, Any]] = {
    "envoy.filters.http.ext_authz": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "disabled": True,
    },
    "envoy.filters.http.ratelimit": _OFF,
    "nz.strip": _EXT_PROC_OFF,
    "nz.rewrite": _EXT_PROC_OFF,
    "nz.accounting": _EXT_PROC_OFF,
    "envoy.filters.http.buffer": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
        "disabled": True,
    },
}


def headers(html: str) -> dict[str, str]:
    """The response headers of the page."""
    return {
        "content-type": "text/html; charset=utf-8",
        "content-security-policy": pagecsp.csp(html),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
        "x-frame-options": "DENY",
    }


def routes(path: Path = page.PAGE) -> list[dict[str, Any]]:
    """The two routes that serve the page at ``path`` (an absolute path Envoy can read)."""
    html = page.read(path)
    problems = page.catalogue_mismatch(html)
    if problems:
        raise ValueError(
            "the playground's catalogue is not the endpoint table: " + "; ".join(problems)
        )
    size = len(html.encode("utf-8"))
    if size > BODY_LIMIT_BYTES:
        raise ValueError(f"the playground page is {size} bytes, over {BODY_LIMIT_BYTES}")
    added = [
        {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for k, v in headers(html).items()
    ]
    return [
        {
            "name": "playground-slash" if p.endswith("/") else "playground",
            "match": {"path": p, "headers": [_GET_OR_HEAD]},
            "direct_response": {"status": 200, "body": {"filename": str(path.resolve())}},
            "response_headers_to_add": added,
            "typed_per_filter_config": dict(FILTERS_OFF),
        }
        for p in PATHS
    ]


_GET_OR_HEAD = {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}


def enable(config: dict[str, Any], path: Path = page.PAGE) -> dict[str, Any]:
    """``config`` (a parsed Envoy bootstrap) with the playground served on the public
    listener: its routes first in every virtual host, so they answer before the key check's
    401 routes. Changed in place and returned. Fails when there is no such listener."""
    served = 0
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] != LISTENER:
            continue
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                if flt["name"] != HCM:
                    continue
                route_config = flt["typed_config"]["route_config"]
                limit = route_config.get("max_direct_response_body_size_bytes", 4096)
                route_config["max_direct_response_body_size_bytes"] = max(limit, BODY_LIMIT_BYTES)
                for vhost in route_config["virtual_hosts"]:
                    vhost["routes"] = [*routes(path), *vhost["routes"]]
                    served += 1
    if not served:
        raise ValueError(f"no listener {LISTENER!r} with an HTTP connection manager to serve it")
    return config
