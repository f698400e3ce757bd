"""The route table of an HTTP connection manager: what each route that forwards to an upstream
may match (C), that no per-filter config switches protection off for it (A), that it lets
long streams live (F) and that it does not send a key header upstream (D).

Known exceptions: routes that answer locally (``direct_response``, ``redirect``) never reach
the model server, so they may disable filters — the shipped 401 routes switch ext_authz, the
ext_proc filters and the buffer off so that no body is read before a key (docs/PLATFORM.md,
"No body before a key"). Every route with a ``route`` action is checked, whatever its
cluster: the shipped config forwards only to ``ollama``, and a route to any other cluster
would expose that cluster the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from google.protobuf import any_pb2, duration_pb2

from gateway import endpoints
from gateway.envoyguard.filters import Chain, key_headers
from gateway.envoyguard.paths import BLOCKED_PROBES, path_match
from gateway.envoyguard.typed import per_route_config, seconds, unpack
from gateway.envoyguard.violations import Violation
from gateway.envoyguard.yamlpath import join

# Streaming (docs/PLATFORM.md "Timeouts", envoy/envoy.yaml): a model may load for 300 s
# before its first byte, and a generation may stream up to 840 s (max_stream_duration).
STREAM_IDLE_MIN_S = 300.0
STREAM_DURATION_MIN_S = 840.0


def idle_cuts(name: str, timeout: duration_pb2.Duration) -> str | None:
    """Why an idle timeout (a route's, or the manager's stream_idle_timeout) cuts streams."""
    idle = seconds(timeout)
    if 0 < idle < STREAM_IDLE_MIN_S:
        return (
            f"{name} {idle:g}s cuts a stream while a model loads "
            f"(up to {STREAM_IDLE_MIN_S:g}s silent)"
        )
    return None


def duration_cuts(timeout: duration_pb2.Duration) -> str | None:
    """Why a max_stream_duration (a route's or the manager's) cuts generations."""
    longest = seconds(timeout)
    if 0 < longest < STREAM_DURATION_MIN_S:
        return (
            f"max_stream_duration {longest:g}s cuts generations shorter than the "
            f"{STREAM_DURATION_MIN_S:g}s the gateway allows"
        )
    return None


@dataclass(frozen=True, slots=True)
class Level:
    """One place a per-filter config for a route can sit (most specific last)."""

    path: str
    configs: dict[str, any_pb2.Any]


def check_routes(
    file: str, path: str, config: route_pb2.RouteConfiguration, chain: Chain
) -> list[Violation]:
    """``path``: the route_config's YAML path."""
    found: list[Violation] = []
    top = Level(join(path, "typed_per_filter_config"), dict(config.typed_per_filter_config))
    found += _key_headers_added(file, path, config.request_headers_to_add)
    for v, vhost in enumerate(config.virtual_hosts):
        vpath = join(path, "virtual_hosts", v)
        found += _key_headers_added(file, vpath, vhost.request_headers_to_add)
        if vhost.HasField("matcher"):
            found.append(
                Violation(
                    file,
                    join(vpath, "matcher"),
                    "X-cannot-check",
                    "cannot check: routes selected by a matcher tree",
                    "use a routes list",
                )
            )
        host = Level(join(vpath, "typed_per_filter_config"), dict(vhost.typed_per_filter_config))
        for r, route in enumerate(vhost.routes):
            if route.WhichOneof("action") != "route":
                continue  # answers locally: never reaches an upstream
            rpath = join(vpath, "routes", r)
            levels = [
                top,
                host,
                Level(join(rpath, "typed_per_filter_config"), dict(route.typed_per_filter_config)),
            ]
            weighted = route.route.weighted_clusters.clusters
            for w, cluster in enumerate(weighted):
                wpath = join(rpath, "route", "weighted_clusters", "clusters", w)
                levels.append(
                    Level(
                        join(wpath, "typed_per_filter_config"),
                        dict(cluster.typed_per_filter_config),
                    )
                )
                found += _key_headers_added(file, wpath, cluster.request_headers_to_add)
            found += _key_headers_added(file, rpath, route.request_headers_to_add)
            found += _check_route(file, rpath, route, vhost, levels, chain)
    return found


def _check_route(
    file: str,
    path: str,
    route: rc.Route,
    vhost: rc.VirtualHost,
    levels: list[Level],
    chain: Chain,
) -> list[Violation]:
    found: list[Violation] = []
    match = path_match(route.match)
    target = _target(route.route)
    unlisted = match.unlisted()
    if unlisted:
        blocked = [p for p in unlisted if p in BLOCKED_PROBES]
        shown = ", ".join((blocked or unlisted)[:4])
        what = "blocked Ollama endpoints" if blocked else "paths not in the endpoint table"
        found.append(
            Violation(
                file,
                join(path, "match"),
                "C-route-path",
                f"{match.describe()} forwards {what} to {target}: {shown}",
                "match only the endpoint table's paths (exact `path` routes); a new endpoint "
                "goes into gateway/endpoints.py first",
            )
        )
    rewrite = _path_rewrite(route.route)
    if rewrite:
        found.append(
            Violation(
                file,
                join(path, "route", rewrite),
                "C-route-path",
                f"{rewrite} changes the path sent to {target}: the model server gets a path "
                "neither the route table nor authz has seen",
                "remove the rewrite; route the endpoint table's paths as they are",
            )
        )
    reached = match.endpoints()
    inference = any(e.kind is endpoints.Kind.INFERENCE for e in reached) or match.kind == "any"
    for name in chain.authz:
        found += _disabled(file, levels, name, "ext_authz", "without a key check")
    for name in chain.ratelimit:
        found += _disabled(file, levels, name, "the rate-limit filter", "without rate limits")
        found += _no_descriptors(file, path, route, vhost, levels, name, chain)
    if inference:
        for name in chain.ext_proc:
            found += _disabled(file, levels, name, f"ext_proc {name}", "unaccounted")
    for name in chain.ext_proc:
        found += _ext_proc_fail_open(file, levels, name)
    if any(e.framing is not None for e in reached) or match.kind == "any":
        found += _check_stream_timeouts(file, join(path, "route"), route.route)
    return found


def _target(action: rc.RouteAction) -> str:
    which = action.WhichOneof("cluster_specifier")
    if which == "cluster":
        return f"cluster {action.cluster}"
    if which == "weighted_clusters":
        return "clusters " + ", ".join(c.name for c in action.weighted_clusters.clusters)
    return f"the upstream ({which})"


def _path_rewrite(action: rc.RouteAction) -> str | None:
    if action.prefix_rewrite:
        return "prefix_rewrite"
    if action.HasField("regex_rewrite"):
        return "regex_rewrite"
    if action.HasField("path_rewrite_policy"):
        return "path_rewrite_policy"
    if action.path_rewrite:
        return "path_rewrite"
    return None


def _per_route(levels: list[Level], name: str) -> Iterator[tuple[str, any_pb2.Any, bool]]:
    for level in levels:
        value = level.configs.get(name)
        if value is not None:
            inner, disabled = per_route_config(value)
            yield join(level.path, name), inner, disabled


def _disabled(file: str, levels: list[Level], name: str, what: str, effect: str) -> list[Violation]:
    found: list[Violation] = []
    for where, config, wrapper_disabled in _per_route(levels, name):
        authz = unpack(config, ext_authz_pb2.ExtAuthzPerRoute)
        ext_proc = unpack(config, ext_proc_pb2.ExtProcPerRoute)
        if (
            wrapper_disabled
            or (authz is not None and authz.disabled)
            or (ext_proc is not None and ext_proc.disabled)
        ):
            found.append(
                Violation(
                    file,
                    where,
                    "A-per-route",
                    f"typed_per_filter_config disables {what} on a route that forwards to "
                    f"the upstream: its requests pass {effect}",
                    f"remove this {name} entry (only local direct_response routes may disable it)",
                )
            )
    return found


def _no_descriptors(
    file: str,
    path: str,
    route: rc.Route,
    vhost: rc.VirtualHost,
    levels: list[Level],
    name: str,
    chain: Chain,
) -> list[Violation]:
    """The rate-limit filter asks the RLS only with descriptors: from the most specific
    RateLimitPerRoute that has rate_limits, else the route's and virtual host's own."""
    where, most_specific = path, None
    for at, config, _ in _per_route(levels, name):
        per_route = unpack(config, rate_limit_pb2.RateLimitPerRoute)
        if per_route is not None:
            where, most_specific = at, per_route
    if most_specific is not None and len(most_specific.rate_limits) > 0:
        return []
    if route.route.rate_limits or vhost.rate_limits:
        return []
    if any(c.rate_limits for c in chain.ratelimit_configs):
        return []
    return [
        Violation(
            file,
            where,
            "A-per-route",
            "no rate-limit descriptors for this route (an empty RateLimitPerRoute overrides "
            "the virtual host's): its requests are never rate limited",
            "remove the override, or give it the virtual host's rate_limits",
        )
    ]


def _ext_proc_fail_open(file: str, levels: list[Level], name: str) -> list[Violation]:
    found: list[Violation] = []
    for where, config, _ in _per_route(levels, name):
        ext_proc = unpack(config, ext_proc_pb2.ExtProcPerRoute)
        if ext_proc is not None and ext_proc.overrides.failure_mode_allow.value:
            found.append(
                Violation(
                    file,
                    join(where, "overrides", "failure_mode_allow"),
                    "B-failure-mode",
                    f"ext_proc {name} is overridden to failure_mode_allow: true on this route",
                    "remove the override",
                )
            )
    return found


def _check_stream_timeouts(file: str, path: str, action: rc.RouteAction) -> list[Violation]:
    found: list[Violation] = []

    def add(where: str, message: str, fix: str) -> None:
        found.append(Violation(file, join(path, where), "F-streaming-timeouts", message, fix))

    if not action.HasField("timeout"):
        add(
            "timeout",
            "a streaming route without timeout: Envoy's default (15 s) cuts every longer "
            "generation",
            "set timeout: 0s",
        )
    elif seconds(action.timeout) != 0:
        add(
            "timeout",
            f"timeout {seconds(action.timeout):g}s on a streaming route cuts generations "
            "that run longer",
            "set timeout: 0s (idle_timeout and max_stream_duration bound a stream)",
        )
    if action.HasField("idle_timeout") and (why := idle_cuts("idle_timeout", action.idle_timeout)):
        add("idle_timeout", why, f"set idle_timeout: {STREAM_IDLE_MIN_S:g}s")
    duration = action.max_stream_duration
    if duration.HasField("max_stream_duration") and (
        why := duration_cuts(duration.max_stream_duration)
    ):
        add(
            "max_stream_duration.max_stream_duration",
            why,
            f"set it to {STREAM_DURATION_MIN_S:g}s",
        )
    return found


def _key_headers_added(
    file: str, path: str, headers: Iterable[base_pb2.HeaderValueOption]
) -> list[Violation]:
    found: list[Violation] = []
    keys = key_headers()
    for index, option in enumerate(headers):
        if option.header.key.lower() in keys:
            found.append(
                Violation(
                    file,
                    join(path, "request_headers_to_add", index),
                    "D-credentials",
                    f"request_headers_to_add sets {option.header.key} towards the upstream: "
                    "a key header reaches the model server",
                    "remove it: authz removes the client's key headers and nothing may add one",
                )
            )
    return found
