"""The local stack's and the benchmarks' Envoy configs: derived from the shipped one, valid."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz import eds
from authz.check import _UNAUTHORIZED_HEADERS
from devstack import envoyconf
from devstack.processes import envoy_bin
from gateway import apikeys, backends, endpoints
from gateway.errorbodies import UPSTREAM_UNAVAILABLE, ErrorText, body_for, error_body

ROOT = Path(__file__).resolve().parents[2]

RATELIMIT = "envoy.filters.http.ratelimit"


def _rendered() -> dict[str, Any]:
    return envoyconf.render(
        envoyconf.ENVOY_DIR / "envoy.yaml", 18080, 19901, {"authz": [("127.0.0.1", 1)]}
    )


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][
        0
    ]["typed_config"]
    return hcm


def _validate(config: dict[str, Any], tmp_path: Path) -> None:
    _validate_file(envoyconf.write(config, tmp_path / "envoy.yaml"))


def _validate_file(path: Path) -> None:
    result = subprocess.run(
        [envoy_bin(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_shipped_file_is_valid_as_envoy_reads_it() -> None:
    """Every other check here reads envoy.yaml through PyYAML, which also accepts what Envoy's
    own YAML loader refuses (``<<:`` merge keys, docs/PLATFORM.md "Anchors"): the file as
    written must validate too."""
    _validate_file(ROOT / "envoy" / "envoy.yaml")


def test_render_repoints_listener_admin_and_clusters(tmp_path: Path) -> None:
    config = _rendered()
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("127.0.0.1", 18080)
    assert config["admin"]["address"]["socket_address"]["port_value"] == 19901
    authz = next(c for c in config["static_resources"]["clusters"] if c["name"] == "authz")
    endpoint = authz["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 1
    _validate(config, tmp_path)


def test_the_backends_are_never_in_the_envoy_config() -> None:
    """The ollama cluster's endpoints come from authz's EDS: a rendered config cannot carry
    backend addresses (they would go stale with discovery, and lose the model subsets)."""
    with pytest.raises(ValueError, match="ollama"):
        envoyconf.render(
            envoyconf.ENVOY_DIR / "envoy.yaml", 18080, 19901, {"ollama": [("127.0.0.1", 1)]}
        )


@pytest.mark.parametrize(
    ("drop", "access_log"),
    [
        (list(envoyconf.ACCOUNTING_FILTERS), False),
        ([RATELIMIT], True),
        ([*envoyconf.ACCOUNTING_FILTERS, RATELIMIT], False),
    ],
)
def test_without_filters_removes_them_and_their_route_settings(
    drop: list[str], access_log: bool, tmp_path: Path
) -> None:
    original = _rendered()
    config = envoyconf.without_filters(original, drop, access_log=access_log)
    hcm = _hcm(config)
    assert not {f["name"] for f in hcm["http_filters"]} & set(drop)
    assert ("access_log" in hcm) is access_log
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for holder in [vhost, *vhost["routes"]]:
            assert not set(holder.get("typed_per_filter_config", {})) & set(drop)
    assert {f["name"] for f in _hcm(original)["http_filters"]} >= set(drop)  # copy, not edit
    _validate(config, tmp_path)


# -- edge limits (issue 11 §4) -------------------------------------------------------------


def _shipped() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        (envoyconf.ENVOY_DIR / "envoy.yaml").read_text(encoding="utf-8")
    )
    return config


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (vhost,) = _hcm(config)["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = vhost["routes"]
    return routes


def _monitors(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m["typed_config"] for m in config["overload_manager"]["resource_monitors"]}


def test_the_shipped_config_follows_the_edge_best_practices() -> None:
    config = _shipped()
    monitors = _monitors(config)
    assert monitors[envoyconf.FIXED_HEAP]["max_heap_size_bytes"] > 0
    assert monitors[envoyconf.DOWNSTREAM_CONNECTIONS]["max_active_downstream_connections"] > 0
    actions = {a["name"] for a in config["overload_manager"]["actions"]}
    assert {
        "envoy.overload_actions.shrink_heap",
        "envoy.overload_actions.disable_http_keepalive",
        "envoy.overload_actions.stop_accepting_requests",
    } <= actions
    listener = config["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == 32768
    ollama = next(c for c in config["static_resources"]["clusters"] if c["name"] == "ollama")
    assert ollama["per_connection_buffer_limit_bytes"] == 32768
    hcm = _hcm(config)
    assert hcm["request_headers_timeout"] == "10s"
    # The body-receive deadline: disarmed once the request is in, so streams are not cut.
    assert hcm["request_timeout"] == "60s"
    assert hcm["stream_idle_timeout"] == "300s"
    assert hcm["http2_protocol_options"] == {
        "max_concurrent_streams": 100,
        "initial_stream_window_size": 65536,
        "initial_connection_window_size": 1048576,
    }
    options = hcm["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert options["idle_timeout"] == "60s"


def test_no_upstream_server_header_service_time_or_client_host() -> None:
    config = _shipped()
    hcm = _hcm(config)
    assert hcm["server_header_transformation"] == "OVERWRITE"
    (router,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"]
    assert router["typed_config"]["suppress_envoy_headers"] is True
    routed = [r["route"] for r in _routes(config) if "route" in r]
    assert routed and all(r["cluster"] == "ollama" and r["auto_host_rewrite"] for r in routed)


def test_envoy_admin_is_read_only_on_loopback() -> None:
    admin = _shipped()["admin"]
    assert admin["address"]["socket_address"]["address"] == "127.0.0.1"
    assert admin["allow_paths"] == [
        {"exact": "/ready"},
        {"prefix": "/stats"},
        # the drain on SIGTERM (neuronetz-gateway envoy run): no /healthcheck/ok, no /quit*
        {"exact": "/healthcheck/fail"},
        {"exact": "/drain_listeners?graceful"},
    ]
    assert admin["ignore_global_conn_limit"] is True  # probes pass a full listener


def test_compose_puts_envoy_admin_on_a_unix_socket() -> None:
    """compose.yaml's Envoy command, run against the repo's config: admin is a Unix socket in
    the Envoy container (the containers that share its network namespace cannot reach it)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    command: list[str] = compose["services"]["envoy"]["command"]
    envoy_args = command[command.index("--") + 1 :]  # after `envoy run [options] --`
    override = yaml.safe_load(envoy_args[envoy_args.index("--config-yaml") + 1])
    assert set(override) == {"admin"}
    assert set(override["admin"]["address"]) == {"pipe"}
    argv = [envoy_bin(), "--mode", "validate", *envoy_args]
    argv[argv.index("-c") + 1] = str(ROOT / "envoy" / "envoy.yaml")
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_edge_limits_can_be_rendered(tmp_path: Path) -> None:
    edge = envoyconf.EdgeLimits(
        max_heap_size_bytes=1 << 28,
        max_downstream_connections=8,
        request_headers_timeout_s=1,
        request_timeout_s=2.5,
    )
    config = envoyconf.render(
        envoyconf.ENVOY_DIR / "envoy.yaml", 18080, 19901, {"authz": [("127.0.0.1", 1)]}, edge
    )
    monitors = _monitors(config)
    assert monitors[envoyconf.FIXED_HEAP]["max_heap_size_bytes"] == 1 << 28
    assert monitors[envoyconf.DOWNSTREAM_CONNECTIONS]["max_active_downstream_connections"] == 8
    hcm = _hcm(config)
    assert (hcm["request_headers_timeout"], hcm["request_timeout"]) == ("1s", "2.5s")
    assert _monitors(_rendered()) == _monitors(_shipped())  # no limits given: the shipped ones
    _validate(config, tmp_path)


# -- refusing a request without a well-formed key before its body ---------------------------


def _unauthorized_routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in _routes(config) if r.get("direct_response", {}).get("status") == 401]


def _surface(match: dict[str, Any]) -> str:
    path = match.get("path") or match.get("prefix")
    assert isinstance(path, str)
    return "openai" if path == "/v1" or path.startswith("/v1/") else "ollama"


def test_envoys_401s_are_authz_bytes_and_read_no_body() -> None:
    routes = _unauthorized_routes(_shipped())
    assert {_surface(r["match"]) for r in routes} == {"openai", "ollama"}
    expected_headers = {"content-type": "application/json", **_UNAUTHORIZED_HEADERS}
    for route in routes:
        body = route["direct_response"]["body"]["inline_string"].encode()
        assert body == error_body(401, _surface(route["match"]))
        added = {h["header"]["key"]: h["header"]["value"] for h in route["response_headers_to_add"]}
        assert added == expected_headers
        # Nothing that reads or holds a body runs on these routes.
        disabled = {
            name for name, cfg in route["typed_per_filter_config"].items() if cfg["disabled"]
        }
        assert disabled == {
            "envoy.filters.http.ext_authz",
            *envoyconf.ACCOUNTING_FILTERS,
            "envoy.filters.http.buffer",
        }
        # Only before authz admitted the request (it then removes the key and re-routes).
        (guard,) = route["match"]["dynamic_metadata"]
        assert guard["filter"] == "envoy.filters.http.ext_authz" and guard["invert"] is True


def _key_patterns(config: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (header["name"], header["string_match"]["safe_regex"]["regex"])
        for route in _unauthorized_routes(config)
        for header in route["match"].get("headers", [])
        if "string_match" in header
    }


def _samples() -> list[str]:
    key = apikeys.generate(apikeys.hasher(time_cost=1, memory_kib=8)).full
    prefix, secret = key[3:15], key[16:]
    return [
        key,
        key[:-1],
        key + "A",
        key.upper(),
        f"nz_{prefix.upper()}_{secret}",
        f"nz_{prefix}-{secret}",
        f"nz_{prefix[:-1]}1_{secret}",  # 1 is not base32
        f"nz_{prefix}_{secret[:-1]}=",
        f"nz_{prefix}_{secret[:-1]}+",
        f" {key}",
        f"{key} ",
        "",
        "nz_short",
    ]


def test_the_well_formed_key_of_envoy_is_gateway_apikeys() -> None:
    patterns = _key_patterns(_shipped())
    assert {name for name, _ in patterns} == {"authorization", "x-api-key"}
    for name, pattern in patterns:
        for sample in _samples():
            if name == "authorization":
                for value in (f"Bearer {sample}", f"bearer {sample}", f"Basic {sample}", sample):
                    presented = apikeys.parse_bearer([value])
                    well_formed = presented is not None and apikeys.parse_prefix(presented)
                    assert bool(re.fullmatch(pattern, value)) is bool(well_formed), value
            else:
                presented = apikeys.parse_plain([sample])
                well_formed = presented is not None and apikeys.parse_prefix(presented)
                assert bool(re.fullmatch(pattern, sample)) is bool(well_formed), sample


def _lua_bodies(config: dict[str, Any]) -> dict[str, str]:
    """The upstream Lua filter's two bodies: the default (Ollama's) and the OpenAI one."""
    (router,) = [f for f in _hcm(config)["http_filters"] if f["name"].endswith(".router")]
    (lua, _credentials, codec) = router["typed_config"]["upstream_http_filters"]
    assert codec["name"] == "envoy.filters.http.upstream_codec"
    source: str = lua["typed_config"]["default_source_code"]["inline_string"]
    assignments = re.findall(r"\bbody = '([^'\\]*)'", source)
    (ollama,) = re.findall(r"\blocal body = '([^'\\]*)'", source)
    (openai,) = re.findall(r'meta\["surface"\] == "openai" then\s+body = \'([^\'\\]*)\'', source)
    assert assignments == [ollama, openai]
    return {"ollama": ollama, "openai": openai}


def test_an_upstream_5xx_gets_authz_502_body_in_each_surface() -> None:
    bodies = _lua_bodies(_shipped())
    for surface in ("ollama", "openai"):
        assert bodies[surface].encode() == error_body(502, surface)


# -- every error body Envoy answers itself is gateway/errorbodies.py's (issue 12 §1) -------------

# What each local_reply_config mapper answers, by its condition (hand-written: a mapper added,
# dropped or pointed at another body fails the test).
_UPSTREAM_FLAGS = ["UF", "UH", "UO", "URX", "UT", "UC", "UR", "UPE"]
_LOCAL_REPLIES: dict[str, int | ErrorText] = {
    "status 413": 413,  # over ext_authz's max_request_bytes
    "status 408": 408,  # request_timeout
    "flags RLSE": 503,  # the RLS could not decide
    "flags " + " ".join(_UPSTREAM_FLAGS): UPSTREAM_UNAVAILABLE,  # the model server failed
    "cel 503": 503,  # ext_proc could not reach accounting, or overload_manager refused
}


def _condition(condition: dict[str, Any]) -> str:
    if "status_code_filter" in condition:
        comparison = condition["status_code_filter"]["comparison"]
        assert comparison["op"] == "EQ"
        return f"status {comparison['value']['default_value']}"
    if "response_flag_filter" in condition:
        return "flags " + " ".join(condition["response_flag_filter"]["flags"])
    cel = condition["extension_filter"]["typed_config"]["expression"]
    (status,) = re.findall(r"response\.code == (\d+)", cel)
    return f"cel {status}"


def _mapper(mapper: dict[str, Any]) -> tuple[str, str]:
    """(condition, surface) of a local_reply_config mapper: its OpenAI twin matches /v1/."""
    condition = mapper["filter"]
    if "and_filter" not in condition:
        return _condition(condition), "ollama"
    (only, path) = condition["and_filter"]["filters"]
    assert path == {
        "header_filter": {"header": {"name": ":path", "string_match": {"prefix": "/v1/"}}}
    }
    return _condition(only), "openai"


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_every_error_body_envoy_answers_is_authz_decision_s() -> None:
    config = _shipped()
    checked = 0
    # local_reply_config: in pairs, the OpenAI shape first (the first mapper that matches wins).
    mappers = _hcm(config)["local_reply_config"]["mappers"]
    seen = [_mapper(m) for m in mappers]
    assert seen == [(c, s) for c in _LOCAL_REPLIES for s in ("openai", "ollama")]
    for mapper, (condition, surface) in zip(mappers, seen, strict=True):
        override = mapper["body_format_override"]
        assert override["content_type"] == "application/json"
        answer = _LOCAL_REPLIES[condition]
        expected = (
            body_for(answer, surface)
            if isinstance(answer, ErrorText)
            else error_body(answer, surface)
        )
        assert override["text_format_source"]["inline_string"].encode() == expected, condition
        checked += 1
    # direct responses: the 401s before a key, the 403 of every other path.
    answered = set()
    for route in _routes(config):
        if "direct_response" not in route:
            continue
        status, surface = route["direct_response"]["status"], _surface(route["match"])
        assert route["direct_response"]["body"]["inline_string"].encode() == error_body(
            status, surface
        )
        assert {"header": {"key": "content-type", "value": "application/json"}} in route[
            "response_headers_to_add"
        ]
        answered.add((status, surface))
        checked += 1
    assert answered == {(401, "openai"), (401, "ollama"), (403, "openai"), (403, "ollama")}
    # the model server's 5xx: the upstream Lua filter's 502.
    for surface, body in _lua_bodies(config).items():
        assert body.encode() == error_body(502, surface)
        checked += 1
    # ... and no other error body anywhere in the file.
    assert sum(s.count('"error"') for s in _strings(config)) == checked


def test_envoy_adds_exactly_the_credential_headers_a_backend_may_set() -> None:
    """gateway/backends.py accepts a backend header only if envoy.yaml's upstream
    header_mutation sends it from the endpoint's metadata (authz/eds.py): one list each, kept
    equal here."""
    (router,) = [f for f in _hcm(_rendered())["http_filters"] if f["name"].endswith(".router")]
    (_lua, credentials, _codec) = router["typed_config"]["upstream_http_filters"]
    assert credentials["name"] == "envoy.filters.http.header_mutation"
    added = {
        m["append"]["header"]["key"]: m["append"]["header"]["value"]
        for m in credentials["typed_config"]["mutations"]["request_mutations"]
    }
    assert added == {
        name: f"%UPSTREAM_METADATA(nz.backend:{name})%" for name in backends.CREDENTIAL_HEADERS
    }


def test_envoy_routes_by_the_model_header_authz_sets_through_authzs_eds() -> None:
    """One name each side: authz's model header (gateway/endpoints.py) and EDS cluster
    (authz/eds.py) are the ones envoy.yaml reads."""
    config = _rendered()
    (rule,) = next(
        f for f in _hcm(config)["http_filters"] if f["name"].endswith("header_to_metadata")
    )["typed_config"]["request_rules"]
    assert rule == {
        "header": endpoints.MODEL_HEADER,
        "on_header_present": {"metadata_namespace": "envoy.lb", "key": "model", "type": "STRING"},
        "remove": True,
    }
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == eds.CLUSTER]
    assert cluster["type"] == "EDS"
    (source,) = cluster["eds_cluster_config"]["eds_config"]["api_config_source"]["grpc_services"]
    assert source == {"envoy_grpc": {"cluster_name": "authz"}}
    subsets = cluster["lb_subset_config"]
    assert subsets["list_as_any"] is True
    assert subsets["subset_selectors"] == [{"keys": ["model"], "fallback_policy": "NO_FALLBACK"}]


def test_a_stacks_own_ca_replaces_the_system_cas_for_https_backends() -> None:
    edge = envoyconf.EdgeLimits(backend_ca_file="/tmp/stack-ca.pem")
    config = envoyconf.render(
        envoyconf.ENVOY_DIR / "envoy.yaml", 18080, 19901, {"authz": [("127.0.0.1", 1)]}, edge
    )
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == eds.CLUSTER]
    (tls,) = cluster["transport_socket_matches"]
    assert tls["match"] == {"tls": True}  # authz/eds.py marks an https:// backend so
    context = tls["transport_socket"]["typed_config"]
    # SNI and the name checked: the endpoint's hostname (the backend's), not the client's Host.
    assert (context["auto_host_sni"], context["auto_sni_san_validation"]) == (True, True)
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/tmp/stack-ca.pem"}
    shipped = _rendered()
    (cluster,) = [c for c in shipped["static_resources"]["clusters"] if c["name"] == eds.CLUSTER]
    shipped_validation = cluster["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    assert shipped_validation["common_tls_context"]["validation_context"]["trusted_ca"] == {
        "filename": "/etc/ssl/certs/ca-certificates.crt"
    }
