"""The Envoy config guard (issue 18, gateway/envoyguard): the shipped config and the dev
stack's rendering of it pass; each edit of tests/envoy_guard/ — one YAML file per edit, a
minimal change of the shipped config that Envoy itself accepts — is refused with exactly
its own violation(s); the command's JSON output and exit codes."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import envoyconf
from gateway.envoyguard.check import check_files, run
from gateway.envoyguard.command import main
from gateway.envoyguard.validate import find_envoy
from gateway.envoyguard.violations import INVARIANTS, Violation

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "envoy" / "envoy.yaml"
FIXTURES = ROOT / "tests" / "envoy_guard"
HAS_ENVOY = find_envoy() is not None

# Shorthands of the fixtures' edit paths (tests/envoy_guard/README.md).
_HCM = (
    "static_resources.listeners[name=gateway].filter_chains[0]"
    ".filters[name=envoy.filters.network.http_connection_manager].typed_config"
)
_SHORTHANDS = {
    "$hcm": _HCM,
    "$filters": f"{_HCM}.http_filters",
    "$authz": f"{_HCM}.http_filters[name=envoy.filters.http.ext_authz].typed_config",
    "$ratelimit": f"{_HCM}.http_filters[name=envoy.filters.http.ratelimit].typed_config",
    "$accounting": f"{_HCM}.http_filters[name=nz.accounting]"
    ".typed_config.extension_config.typed_config",
    "$vhost": f"{_HCM}.route_config.virtual_hosts[0]",
    "$routes": f"{_HCM}.route_config.virtual_hosts[0].routes",
}
_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[([^\]]+)\]")


@cache
def _shipped_json() -> str:
    return json.dumps(yaml.safe_load(SHIPPED.read_text("utf-8")))


def _shipped() -> dict[str, Any]:
    """A fresh copy of the shipped config, through JSON: YAML aliases unshared, so an edit
    changes one place only."""
    loaded: dict[str, Any] = json.loads(_shipped_json())
    return loaded


def _tokens(path: str) -> list[str | int | tuple[str, str]]:
    for short, full in sorted(_SHORTHANDS.items(), key=lambda kv: -len(kv[0])):
        if path.startswith(short):
            path = full + path[len(short) :]
    tokens: list[str | int | tuple[str, str]] = []
    for key, bracket in _TOKEN.findall(path):
        if key:
            tokens.append(key)
        elif bracket.isdigit():
            tokens.append(int(bracket))
        elif "=" in bracket:
            field, _, value = bracket.partition("=")
            tokens.append((field, value))
        else:
            tokens.append(bracket)
    return tokens


def _dig(item: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        item = item.get(part) if isinstance(item, dict) else None
    return item


def _step(node: Any, token: str | int | tuple[str, str]) -> Any:
    if isinstance(token, tuple):
        field, value = token
        return next(i for i, item in enumerate(node) if str(_dig(item, field)) == value)
    return token


def _walk(config: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The container of the path's last element and that element's key/index."""
    tokens = _tokens(path)
    node: Any = config
    for token in tokens[:-1]:
        node = node[_step(node, token)]
    return node, _step(node, tokens[-1])


def apply_edits(config: dict[str, Any], edits: list[dict[str, Any]]) -> dict[str, Any]:
    for edit in edits:
        (op, spec), *_ = edit.items()
        if op == "set":
            parent, key = _walk(config, spec["path"])
            parent[key] = spec["value"]
        elif op == "remove":
            parent, key = _walk(config, spec["path"])
            del parent[key]
        elif op == "insert":
            parent, key = _walk(config, spec["path"])
            target = parent[key]
            target.insert(spec.get("index", len(target)), spec["value"])
        else:
            raise AssertionError(f"unknown edit {op}")
    return config


def _fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.yaml"))


def _write(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def test_the_shipped_config_passes() -> None:
    assert check_files([SHIPPED]) == []
    assert main([str(SHIPPED)]) == 0


@pytest.mark.skipif(not HAS_ENVOY, reason="no Envoy binary")
def test_the_shipped_config_is_validated_by_envoy() -> None:
    result = run([SHIPPED])
    assert result.notes == []  # Envoy was found and ran
    assert result.violations == []


@pytest.mark.parametrize(
    "edge", [None, envoyconf.EdgeLimits(request_headers_timeout_s=0.5, request_timeout_s=1.0)]
)
def test_the_dev_stacks_rendered_config_passes(
    tmp_path: Path, edge: envoyconf.EdgeLimits | None
) -> None:
    rendered = envoyconf.render(
        envoyconf.ENVOY_DIR / "envoy.yaml",
        18080,
        19901,
        {"authz": [("127.0.0.1", 1)]},
        edge,
    )
    assert check_files([envoyconf.write(rendered, tmp_path / "envoy.yaml")]) == []


def test_the_dev_stack_refuses_to_start_envoy_on_a_config_the_guard_refuses(
    tmp_path: Path,
) -> None:
    rendered = envoyconf.render(envoyconf.ENVOY_DIR / "envoy.yaml", 18080, 19901, {})
    envoyconf.write_checked(rendered, tmp_path / "ok.yaml")  # the shipped config starts
    hcm = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (authz,) = [
        f
        for f in hcm["typed_config"]["http_filters"]
        if f["name"] == "envoy.filters.http.ext_authz"
    ]
    authz["typed_config"]["failure_mode_allow"] = True
    with pytest.raises(envoyconf.GuardRefused, match="failure_mode_allow"):
        envoyconf.write_checked(rendered, tmp_path / "open.yaml")


def test_every_fixture_is_a_real_edit_of_the_shipped_config() -> None:
    fixtures = _fixtures()
    assert len(fixtures) >= 25
    for fixture in fixtures:
        spec = yaml.safe_load(fixture.read_text("utf-8"))
        assert apply_edits(_shipped(), spec["edits"]) != _shipped(), fixture.name
        for expected in spec["expect"]:
            assert expected["invariant"] in INVARIANTS, fixture.name


@pytest.mark.parametrize("fixture", _fixtures(), ids=lambda p: p.stem)
def test_each_edit_is_refused_with_its_own_violation(fixture: Path, tmp_path: Path) -> None:
    spec = yaml.safe_load(fixture.read_text("utf-8"))
    edited = _write(apply_edits(_shipped(), spec["edits"]), tmp_path / fixture.name)
    expected = [e for e in spec["expect"] if HAS_ENVOY or e["invariant"] != "V-envoy-validate"]

    found = check_files([edited])

    assert sorted(v.invariant for v in found) == sorted(e["invariant"] for e in expected), [
        v.line() for v in found
    ]
    for wanted in expected:
        assert any(
            v.invariant == wanted["invariant"] and wanted["message"] in v.message for v in found
        ), (wanted, [v.line() for v in found])
    for violation in found:
        assert violation.file == str(edited)
        assert violation.fix
    assert main([str(edited), "--no-validate"]) == 1


def test_a_violation_names_its_place_in_the_yaml(tmp_path: Path) -> None:
    edited = _write(
        apply_edits(_shipped(), [{"set": {"path": "$authz.failure_mode_allow", "value": True}}]),
        tmp_path / "envoy.yaml",
    )
    [violation] = check_files([edited])
    assert violation.path == (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
        ".http_filters[0].typed_config.failure_mode_allow"
    )
    assert violation.line().startswith(
        f"{edited}: static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
        ".http_filters[0].typed_config.failure_mode_allow: [B-failure-mode] ext_authz has "
        "failure_mode_allow: true"
    )


def test_the_body_limit_follows_NZ_MAX_REQUEST_BYTES(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    two_mib = [{"set": {"path": "$authz.with_request_body.max_request_bytes", "value": 2097152}}]
    edited = _write(apply_edits(_shipped(), two_mib), tmp_path / "envoy.yaml")
    assert main([str(edited), "--max-request-bytes", "2097152"]) == 0
    assert main([str(SHIPPED), "--max-request-bytes", "2097152"]) == 1
    monkeypatch.setenv("NZ_MAX_REQUEST_BYTES", "2097152")
    assert main([str(edited)]) == 0
    assert main([str(SHIPPED)]) == 1
    out = capsys.readouterr().out
    assert "ext_authz body limit 1048576 differs from authz's NZ_MAX_REQUEST_BYTES 2097152" in out


def test_json_output_for_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edits: list[dict[str, Any]] = [
        {"set": {"path": "admin.address.socket_address.address", "value": "0.0.0.0"}},
        {"set": {"path": "$hcm.merge_slashes", "value": False}},
    ]
    edited = _write(apply_edits(_shipped(), edits), tmp_path / "envoy.yaml")

    assert main([str(edited), "--json"]) == 1

    report = json.loads(capsys.readouterr().out)
    assert sorted(report, key=lambda v: v["invariant"]) == [
        {
            "file": str(edited),
            "path": "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
            ".merge_slashes",
            "invariant": "D-path-normalization",
            "message": "merge_slashes is off: /api//pull is not /api/pull to the routes, yet "
            "is to Ollama",
            "fix": "set merge_slashes: true",
        },
        {
            "file": str(edited),
            "path": "admin.address.socket_address.address",
            "invariant": "G-admin-loopback",
            "message": "Envoy's admin interface listens on 0.0.0.0: anyone who reaches it can "
            "stop Envoy, change its runtime or dump its config",
            "fix": "bind admin to 127.0.0.1 (or a Unix socket)",
        },
    ]
    assert main([str(SHIPPED), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_exit_codes_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(SHIPPED)]) == 0
    capsys.readouterr()

    missing = tmp_path / "absent.yaml"
    assert main([str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {missing}: cannot read:")

    broken = tmp_path / "broken.yaml"
    broken.write_text("admin: [unclosed\n", encoding="utf-8")
    assert main([str(broken)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {broken}: not YAML:")

    misspelt = _shipped()
    misspelt["static_resources"]["listeners"][0]["per_connection_bufer_limit_bytes"] = 1
    typo = _write(misspelt, tmp_path / "typo.yaml")
    assert main([str(typo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {typo}: not a valid Envoy config:")
    assert "per_connection_bufer_limit_bytes" in err
    assert err.count("\n") == 1  # one line

    # One unreadable file among several: exit 2, nothing half-reported as clean.
    assert main([str(SHIPPED), str(broken)]) == 2


@pytest.mark.skipif(not HAS_ENVOY, reason="no Envoy binary")
def test_envoys_own_refusal_is_a_violation_with_its_first_error_line(tmp_path: Path) -> None:
    config = _shipped()
    config["static_resources"]["clusters"][0]["connect_timeout"] = "-1s"
    edited = _write(config, tmp_path / "envoy.yaml")

    found = check_files([edited])

    assert [v.invariant for v in found] == ["V-envoy-validate"]
    assert found[0].message.startswith("envoy --mode validate refuses it: ")
    assert "\n" not in found[0].message


def test_violation_lines_are_one_line_each() -> None:
    violation = Violation("f.yaml", "admin", "G-admin-loopback", "what", "how")
    assert violation.line() == "f.yaml: admin: [G-admin-loopback] what; fix: how"


@pytest.mark.parametrize(
    ("match", "unlisted"),
    [
        ({"path": "/api/chat"}, []),
        ({"prefix": "/v1/models/"}, []),  # the template /v1/models/{model}: every path below
        ({"prefix": "/v1/models"}, ["/v1/modelsx"]),  # /v1/modelsx is no endpoint
        ({"prefix": "/api/chat"}, ["/api/chat/x", "/api/chatx"]),
        ({"path_separated_prefix": "/v1/models"}, []),
        ({"safe_regex": {"regex": "/api/(chat|generate)"}}, []),
        ({"safe_regex": {"regex": "/api/[a-z]+"}}, ["/api/pull", "/api/create", "/api/delete"]),
        ({"path": "/API/PULL", "case_sensitive": False}, ["/API/PULL"]),
        ({"prefix": "/", "case_sensitive": False}, ["/api/pull", "/api/create", "/api/delete"]),
    ],
)
def test_which_paths_a_route_match_can_take(match: dict[str, Any], unlisted: list[str]) -> None:
    from envoy.config.route.v3 import route_components_pb2
    from google.protobuf import json_format

    from gateway.envoyguard.paths import path_match

    parsed = json_format.ParseDict(match, route_components_pb2.RouteMatch())
    assert path_match(parsed).unlisted()[: len(unlisted)] == unlisted
    assert bool(path_match(parsed).unlisted()) == bool(unlisted)
