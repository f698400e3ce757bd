"""The playground page and its Envoy routes (gateway/playground; docs/PLAYGROUND.md): the
page's catalogue is the endpoint table, its CSP hashes are its own inline script and style,
it loads nothing from anywhere and stores nothing; the rendered routes are what the guard
accepts — and only they: the same route forwarding upstream is refused."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import envoyconf
from gateway import endpoints, pagecsp
from gateway.envoyguard.check import check_files, run
from gateway.envoyguard.validate import find_envoy
from gateway.playground import envoyroute, page
from neuronetz_gateway.envoyrun import SetupError, with_playground

ROOT = Path(__file__).resolve().parents[2]
HTML = page.read()


def _rendered() -> dict[str, Any]:
    config = envoyconf.render(envoyconf.ENVOY_DIR / "envoy.yaml", 18080, 19901, {})
    return envoyroute.enable(config)


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (hcm,) = envoyconf.http_connection_managers(config)
    routes: list[dict[str, Any]] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _script() -> str:
    (script,) = pagecsp.inline_scripts(HTML)
    return script


# -- the page ----------------------------------------------------------------------------------


def test_the_catalogue_is_the_endpoint_table() -> None:
    assert page.catalogue_mismatch(HTML) == []
    listed = [(e["method"], e["path"]) for e in page.catalogue(HTML)]
    assert listed == [*endpoints.ENDPOINTS, ("GET", endpoints.MODEL_DETAIL.path)]
    anthropic = next(e for e in page.catalogue(HTML) if e["path"] == "/v1/messages")
    assert (anthropic["auth"], anthropic["streaming"]) == ("bearer or x-api-key", "sse")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda c: c.pop(0), "missing: ('POST', '/api/chat', 'chat', 'bearer', 'ndjson')"),
        (
            lambda c: c.append({**c[0], "path": "/api/pull"}),
            "not an endpoint of gateway/endpoints.py: ('POST', '/api/pull', 'chat', 'bearer', "
            "'ndjson')",
        ),
        (lambda c: c[0].update(streaming=None), "missing: ('POST', '/api/chat'"),
        (lambda c: c[0].update(description=" "), "/api/chat: no description or sample response"),
        (lambda c: c[4].update(request={}), "/api/tags: a sample body exactly when GET sends one"),
    ],
)
def test_a_catalogue_that_drifts_from_the_table_is_reported(
    edit: Any, problem: str, tmp_path: Path
) -> None:
    entries = page.catalogue(HTML)
    edit(entries)
    block = json.dumps(entries)
    drifted = re.sub(
        r'(<script type="application/json" id="catalogue">).*?(</script>)',
        lambda m: m[1] + block + m[2],
        HTML,
        flags=re.S,
    )
    assert any(p.startswith(problem) for p in page.catalogue_mismatch(drifted))
    path = tmp_path / "index.html"
    path.write_text(drifted, encoding="utf-8")
    with pytest.raises(ValueError, match="catalogue is not the endpoint table"):
        envoyroute.routes(path)  # the config is never rendered with a drifted page


def test_the_csp_allows_exactly_its_own_inline_script_and_style() -> None:
    (style,) = pagecsp.inline_styles(HTML)
    digest = {
        name: base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        for name, text in (("script", _script()), ("style", style))
    }
    assert pagecsp.csp(HTML) == (
        "default-src 'none'; "
        f"script-src 'sha256-{digest['script']}'; "
        f"style-src 'sha256-{digest['style']}'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    assert "unsafe" not in pagecsp.csp(HTML)


def test_the_page_loads_nothing_from_anywhere_and_has_no_inline_handlers() -> None:
    assert re.findall(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", HTML) == []
    assert re.findall(r"""\s(src|href)\s*=\s*["'](?!data:)""", HTML) == []
    assert re.findall(r"""<[^>]*\son[a-z]+\s*=""", HTML) == []  # CSP would block them
    assert re.findall(r"""<[^>]*\sstyle\s*=""", HTML) == []  # idem


def test_the_key_is_kept_in_memory_only() -> None:
    script = _script()
    for storage in (
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "indexedDB",
        "history.",
        "location.hash",
        "location.search",
        "innerHTML",
    ):
        assert storage not in script
    assert 'credentials: "omit"' in script
    assert "const BASE = window.location.origin;" in script


# -- the Envoy routes --------------------------------------------------------------------------


def test_the_shipped_config_does_not_serve_it() -> None:
    assert "playground" not in (ROOT / "envoy" / "envoy.yaml").read_text("utf-8")


def test_the_routes_answer_locally_before_the_key_check() -> None:
    config = _rendered()
    first, second, third = _routes(config)[:3]
    assert (first["match"]["path"], second["match"]["path"]) == envoyroute.PATHS
    assert "direct_response" in third  # the shipped routes follow unchanged
    for route in (first, second):
        assert route["direct_response"] == {
            "status": 200,
            "body": {"filename": str(page.PAGE.resolve())},
        }
        assert "route" not in route
        headers = {
            h["header"]["key"]: h["header"]["value"] for h in route["response_headers_to_add"]
        }
        assert headers == {
            "content-type": "text/html; charset=utf-8",
            "content-security-policy": pagecsp.csp(HTML),
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "cache-control": "no-store",
            "x-frame-options": "DENY",
        }
        assert set(route["typed_per_filter_config"]) == {
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.ratelimit",
            "nz.strip",
            "nz.rewrite",
            "nz.accounting",
            "envoy.filters.http.buffer",
        }
    (hcm,) = envoyconf.http_connection_managers(config)
    limit = hcm["route_config"]["max_direct_response_body_size_bytes"]
    assert limit == envoyroute.BODY_LIMIT_BYTES > page.PAGE.stat().st_size


def test_the_guard_and_envoy_accept_the_rendered_config(tmp_path: Path) -> None:
    path = envoyconf.write_checked(_rendered(), tmp_path / "envoy.yaml")  # the guard
    if find_envoy() is not None:
        result = run([path])  # and envoy --mode validate
        assert (result.notes, result.violations) == ([], [])


def test_the_guard_refuses_the_same_route_forwarding_upstream(tmp_path: Path) -> None:
    """Only a local answer may switch ext_authz off: the playground's route turned into one
    that forwards to the model server is refused, for its path and for every filter it
    disables."""
    config = _rendered()
    route = _routes(config)[0]
    del route["direct_response"]
    route["route"] = {"cluster": "ollama", "timeout": "30s"}
    found = check_files([envoyconf.write(config, tmp_path / "forwarding.yaml")])
    kinds = sorted({v.invariant for v in found})
    assert kinds == ["A-per-route", "C-route-path"]
    disabled = [v.path for v in found if v.invariant == "A-per-route"]
    assert any(p.endswith("[envoy.filters.http.ext_authz]") for p in disabled), disabled
    assert any(p.endswith("[envoy.filters.http.ratelimit]") for p in disabled), disabled


def test_the_guard_refuses_any_other_route_without_ext_authz(tmp_path: Path) -> None:
    config = _rendered()
    routes = _routes(config)
    chat = next(r for r in routes if r["match"] == {"path": "/api/chat"})
    chat["typed_per_filter_config"] = copy.deepcopy(envoyroute.FILTERS_OFF)
    found = check_files([envoyconf.write(config, tmp_path / "chat-open.yaml")])
    assert any(
        v.invariant == "A-per-route" and v.path.endswith("[envoy.filters.http.ext_authz]")
        for v in found
    )


# -- the switch: neuronetz-gateway envoy run --playground ------------------------------------


def test_envoy_run_playground_runs_a_rendered_copy_of_the_config(tmp_path: Path) -> None:
    shipped = str(ROOT / "envoy" / "envoy.yaml")
    args = with_playground(["-c", shipped, "--drain-time-s", "5"], tmp_path)
    assert args == ["-c", str(tmp_path / "envoy-playground.yaml"), "--drain-time-s", "5"]
    written = yaml.safe_load((tmp_path / "envoy-playground.yaml").read_text("utf-8"))
    original = yaml.safe_load(Path(shipped).read_text("utf-8"))
    assert written == envoyroute.enable(original)
    assert with_playground([f"--config-path={shipped}"], tmp_path) == [
        f"--config-path={tmp_path / 'envoy-playground.yaml'}"
    ]
    with pytest.raises(SetupError, match="needs Envoy's config as a file"):
        with_playground(["--config-yaml", "{}"], tmp_path)
    with pytest.raises(SetupError, match="cannot serve the playground"):
        with_playground(["-c", str(tmp_path / "absent.yaml")], tmp_path)
