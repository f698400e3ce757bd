"""Every invariant of issue 18 on one typed config: walks the listeners and their HTTP
connection managers (filters.py: the filter chain, routes.py: the route table), checks each
manager's path and header handling (D) and stream timeouts (F), and the admin address (G)."""

from __future__ import annotations

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from gateway.envoyguard.filters import check_chain
from gateway.envoyguard.routes import STREAM_IDLE_MIN_S, check_routes, duration_cuts, idle_cuts
from gateway.envoyguard.typed import unpack
from gateway.envoyguard.violations import Violation
from gateway.envoyguard.yamlpath import join
from gateway.settings import is_loopback

_HCM = hcm_pb2.HttpConnectionManager
# Both send one spelling of a path on: refused, or redirected to the unescaped one (which is
# then matched as such). KEEP_UNCHANGED (the default) and UNESCAPE_AND_FORWARD do not.
_SAFE_ESCAPED_SLASHES = (_HCM.REJECT_REQUEST, _HCM.UNESCAPE_AND_REDIRECT)
_SAFE_UNDERSCORES = (
    protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
    protocol_pb2.HttpProtocolOptions.DROP_HEADER,
)


def check(file: str, config: bootstrap_pb2.Bootstrap, max_request_bytes: int) -> list[Violation]:
    found: list[Violation] = []
    found += _check_admin(file, config)
    if config.HasField("dynamic_resources"):
        found.append(
            Violation(
                file,
                "dynamic_resources",
                "X-cannot-check",
                "cannot check: listeners, routes or clusters come from xDS",
                "check the xDS server's resources instead",
            )
        )
    for i, listener in enumerate(config.static_resources.listeners):
        lpath = join("static_resources", "listeners", i)
        chains = [
            (join(lpath, "filter_chains", j), c) for j, c in enumerate(listener.filter_chains)
        ]
        if listener.HasField("default_filter_chain"):
            chains.append((join(lpath, "default_filter_chain"), listener.default_filter_chain))
        for cpath, chain in chains:
            found += _check_filter_chain(file, cpath, chain, max_request_bytes)
    return found


def _check_filter_chain(
    file: str, path: str, chain: listener_components_pb2.FilterChain, max_request_bytes: int
) -> list[Violation]:
    found: list[Violation] = []
    managers = 0
    for k, network_filter in enumerate(chain.filters):
        hcm = unpack(network_filter.typed_config, _HCM)
        if hcm is None:
            continue
        managers += 1
        hpath = join(path, "filters", k, "typed_config")
        routes, filter_found = check_chain(file, hpath, hcm.http_filters, max_request_bytes)
        found += filter_found
        found += _check_manager(file, hpath, hcm)
        if hcm.HasField("route_config"):
            found += check_routes(file, join(hpath, "route_config"), hcm.route_config, routes)
        else:
            found.append(
                Violation(
                    file,
                    hpath,
                    "X-cannot-check",
                    "cannot check: routes come from RDS or scoped routes, not an inline "
                    "route_config",
                    "inline the route_config",
                )
            )
    if managers == 0 and len(chain.filters) > 0:
        found.append(
            Violation(
                file,
                join(path, "filters"),
                "A-filter-chain",
                "a filter chain without an HTTP connection manager: its traffic reaches the "
                "upstream without ext_authz, rate limits or accounting",
                "serve it through the gateway listener's http_connection_manager",
            )
        )
    return found


def _check_manager(file: str, path: str, hcm: hcm_pb2.HttpConnectionManager) -> list[Violation]:
    found: list[Violation] = []

    def add(where: str, invariant: str, message: str, fix: str) -> None:
        found.append(Violation(file, join(path, where), invariant, message, fix))

    if not hcm.normalize_path.value:
        add(
            "normalize_path",
            "D-path-normalization",
            "normalize_path is off: /api/./pull or /api/%70ull reach the route table "
            "un-normalised and can pass it",
            "set normalize_path: true",
        )
    if not hcm.merge_slashes:
        add(
            "merge_slashes",
            "D-path-normalization",
            "merge_slashes is off: /api//pull is not /api/pull to the routes, yet is to Ollama",
            "set merge_slashes: true",
        )
    if hcm.path_with_escaped_slashes_action not in _SAFE_ESCAPED_SLASHES:
        action = _HCM.PathWithEscapedSlashesAction.Name(hcm.path_with_escaped_slashes_action)
        add(
            "path_with_escaped_slashes_action",
            "D-path-normalization",
            f"escaped slashes are passed on ({action}): /api%2Fpull reaches the model server "
            "un-normalised",
            "set path_with_escaped_slashes_action: REJECT_REQUEST",
        )
    underscores = hcm.common_http_protocol_options.headers_with_underscores_action
    if underscores not in _SAFE_UNDERSCORES:
        add(
            "common_http_protocol_options.headers_with_underscores_action",
            "D-header-underscores",
            "headers with underscores are allowed (ALLOW): an x_api_key header passes to a "
            "backend that may read it as x-api-key",
            "set headers_with_underscores_action: REJECT_REQUEST",
        )
    if hcm.HasField("stream_idle_timeout") and (
        why := idle_cuts("stream_idle_timeout", hcm.stream_idle_timeout)
    ):
        add(
            "stream_idle_timeout",
            "F-streaming-timeouts",
            why,
            f"set stream_idle_timeout: {STREAM_IDLE_MIN_S:g}s",
        )
    options = hcm.common_http_protocol_options
    if options.HasField("max_stream_duration") and (
        why := duration_cuts(options.max_stream_duration)
    ):
        add(
            "common_http_protocol_options.max_stream_duration",
            "F-streaming-timeouts",
            why,
            "remove it (the streaming routes set their own)",
        )
    return found


def _check_admin(file: str, config: bootstrap_pb2.Bootstrap) -> list[Violation]:
    if not config.HasField("admin") or not config.admin.HasField("address"):
        return []
    address = config.admin.address
    if not address.HasField("socket_address"):
        return []  # a Unix socket (pipe) or an internal address: not on the network
    host = address.socket_address.address
    if is_loopback(host):
        return []
    return [
        Violation(
            file,
            "admin.address.socket_address.address",
            "G-admin-loopback",
            f"Envoy's admin interface listens on {host}: anyone who reaches it can stop "
            "Envoy, change its runtime or dump its config",
            "bind admin to 127.0.0.1 (or a Unix socket)",
        )
    ]
