"""The local stack's and the benchmarks' Envoy configs: derived from the shipped one, valid."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from devstack import envoyconf
from devstack.processes import envoy_bin

EXT_PROC = "envoy.filters.http.ext_proc"
RATELIMIT = "envoy.filters.http.ratelimit"


def _rendered() -> dict[str, Any]:
    return envoyconf.render(
        envoyconf.ENVOY_DIR / "envoy.yaml", 18080, 19901, {"ollama": [("127.0.0.1", 1)]}
    )


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][
        0
    ]["typed_config"]
    return hcm


def _validate(config: dict[str, Any], tmp_path: Path) -> None:
    path = envoyconf.write(config, tmp_path / "envoy.yaml")
    result = subprocess.run(
        [envoy_bin(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_repoints_listener_admin_and_clusters(tmp_path: Path) -> None:
    config = _rendered()
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("127.0.0.1", 18080)
    assert config["admin"]["address"]["socket_address"]["port_value"] == 19901
    ollama = next(c for c in config["static_resources"]["clusters"] if c["name"] == "ollama")
    endpoint = ollama["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 1
    _validate(config, tmp_path)


@pytest.mark.parametrize(
    ("drop", "access_log"),
    [([EXT_PROC], False), ([RATELIMIT], True), ([EXT_PROC, RATELIMIT], False)],
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
