"""The shipped alert rules and dashboard (deploy/observability/) are usable as shipped: every
rule's expression parses as PromQL (``promql-parser``, the Prometheus parser's Rust port), and
every metric a rule or a dashboard panel names is one the running stack exposes — a service's
``/metrics`` or Envoy's ``/stats/prometheus`` — after a little traffic, so that a renamed
metric breaks this test instead of silently never firing. The scrapes also show what an SRE
reads first: the RPC, Redis-script and PostgreSQL-write histograms, the build info, and no
``*_created`` series."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_accounting_helpers import CHAT, audit_rows, caller
from tests.gateway_client import Gateway

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "observability" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "observability" / "dashboard.json"
SERVICES = ("authz", "ratelimit", "accounting")


def _rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def _names(node: Any) -> Iterator[str]:
    """Every metric name a parsed expression selects."""
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            yield node.name
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__":
                yield matcher.value
        return
    if isinstance(node, promql_parser.MatrixSelector):
        yield from _names(node.vector_selector)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _names(node.lhs)
        yield from _names(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _names(arg)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from _names(node.expr)
        if node.param is not None:
            yield from _names(node.param)
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        yield from _names(node.expr)


def _referenced() -> dict[str, set[str]]:
    """metric name -> where it is used (alert or panel)."""
    found: dict[str, set[str]] = {}
    uses = [(f"alert {r['alert']}", r["expr"]) for r in _rules()]
    uses += [(f"panel {title!r}", expr) for title, expr in _dashboard_exprs()]
    for where, expr in uses:
        for name in _names(promql_parser.parse(expr)):
            found.setdefault(name, set()).add(where)
    return found


def _samples(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_every_rule_and_panel_parses_and_every_alert_has_a_runbook() -> None:
    rules = _rules()
    assert rules, "no rules"
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        assert rule["labels"]["severity"] in {"page", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["runbook"].startswith("docs/OPERATIONS.md#"), rule["alert"]
    for title, expr in _dashboard_exprs():
        assert promql_parser.parse(expr) is not None, title
    named = {rule["alert"] for rule in rules}
    # what issue 15 asks the rules to watch
    assert {
        "NeuronetzFailClosed",
        "NeuronetzDenyMode",
        "NeuronetzAuditRowsBuffered",
        "NeuronetzAuditRowsDropped",
        "NeuronetzTenantRefused429",
        "NeuronetzBackendEjected",
        "NeuronetzCheckSlow",
        "NeuronetzRpcErrors",
    } <= named


@pytest.fixture(scope="module")
def scrapes(gw: Gateway) -> dict[str, str]:
    """Each scrape target's text, after requests served, refused and audited."""
    who = caller(gw)
    for _ in range(3):
        resp = httpx.post(f"{gw.url}/api/chat", json={**CHAT, "stream": False}, headers=who.headers)
        assert resp.status_code == 200, resp.text
    refused = httpx.post(f"{gw.url}/api/chat", json=CHAT, headers={"authorization": "Bearer no"})
    assert refused.status_code == 401
    assert audit_rows(gw, who)  # the audit batch reached PostgreSQL: a timed write
    scrapes = {s: httpx.get(gw.stack.metrics_url(s), timeout=5).text for s in SERVICES}
    scrapes["envoy"] = httpx.get(f"{gw.stack.envoy_admin}/stats/prometheus", timeout=5).text
    return scrapes


@pytest.fixture(scope="module")
def exposed(scrapes: dict[str, str]) -> dict[str, set[str]]:
    """Sample names each scrape target exposes."""
    return {target: _samples(text) for target, text in scrapes.items()}


def test_every_metric_the_rules_and_the_dashboard_name_is_exposed(
    exposed: dict[str, set[str]],
) -> None:
    everywhere = set().union(*exposed.values())
    missing = {
        name: sorted(where) for name, where in _referenced().items() if name not in everywhere
    }
    assert missing == {}


def test_each_service_exposes_its_histograms_and_build_and_no_created_series(
    scrapes: dict[str, str], exposed: dict[str, set[str]]
) -> None:
    for service in SERVICES:
        names = exposed[service]
        build = [
            sample
            for family in text_string_to_metric_families(scrapes[service])
            for sample in family.samples
            if sample.name == "neuronetz_build_info"
        ]
        assert [(b.labels["service"], b.value) for b in build] == [(service, 1.0)]
        assert "neuronetz_rpc_seconds_bucket" in names, service
        assert "neuronetz_redis_script_seconds_bucket" in names, service
        assert not [n for n in names if n.endswith("_created")], service
    assert "accounting_pg_write_seconds_bucket" in exposed["accounting"]
