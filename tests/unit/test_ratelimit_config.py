"""The static YAML of domains: matching rules and start-up errors for a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.rls import Limit, Unit
from ratelimit import config

YAML = """
domains:
  - domain: gateway
    descriptors:
      - key: limit
        value: key_rpm
        quota: requests
        descriptors:
          - key: tenant_id
            descriptors:
              - key: key_id
      - key: model
        rate_limit: {unit: MINUTE, requests_per_unit: 100}
      - key: model
        value: "llama3*"
        rate_limit: {unit: MINUTE, requests_per_unit: 10}
      - key: model
        value: "llama3.1:70b"
        rate_limit: {unit: HOUR, requests_per_unit: 5}
        shadow_mode: true
      - key: model
        value: "tiny"
        rate_limit: {unlimited: true}
  - domain: other
    descriptors:
      - key: path
        value: /api/embed
        rate_limit: {unit: SECOND, requests_per_unit: 2}
"""


@pytest.fixture(scope="module")
def static() -> config.StaticConfig:
    return config.parse(YAML)


def test_exact_value_beats_prefix_beats_key_only(static: config.StaticConfig) -> None:
    assert static.match("gateway", (("model", "llama3.1:70b"),)).limit == Limit(5, Unit.HOUR)
    assert static.match("gateway", (("model", "llama3.2:latest"),)).limit == Limit(10, Unit.MINUTE)
    assert static.match("gateway", (("model", "qwen2.5:0.5b"),)).limit == Limit(100, Unit.MINUTE)


def test_shadow_and_unlimited(static: config.StaticConfig) -> None:
    assert static.match("gateway", (("model", "llama3.1:70b"),)).shadow_mode is True
    tiny = static.match("gateway", (("model", "tiny"),))
    assert tiny.unlimited is True
    assert tiny.limit is None


def test_nested_descriptor_and_inherited_quota(static: config.StaticConfig) -> None:
    entries = (("limit", "key_rpm"), ("tenant_id", "t"), ("key_id", "k"))
    match = static.match("gateway", entries)
    assert match.limit is None  # the override brings it
    assert match.quota == "requests"
    # A descriptor longer than the tree matches nothing (but keeps the quota it passed).
    assert static.match("gateway", (*entries, ("x", "y"))).limit is None


def test_domains_are_separate(static: config.StaticConfig) -> None:
    assert static.match("other", (("path", "/api/embed"),)).limit == Limit(2, Unit.SECOND)
    assert static.match("gateway", (("path", "/api/embed"),)) == config.NO_MATCH
    assert static.match("nope", (("model", "x"),)) == config.NO_MATCH
    assert static.domains == ["gateway", "other"]


def test_the_shipped_file_loads() -> None:
    shipped = config.load()
    assert "gateway" in shipped.domains
    match = shipped.match("gateway", (("limit", "tenant_tpm"), ("tenant_id", "t")))
    assert match.quota == "tokens"
    assert match.limit is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("domains: [{domain: d, descriptors: [{key: a, ratelimit: {}}]}]", "ratelimit"),
        ("domains: [{domain: d, descriptors: [{key: a, rate_limit: {unit: MINUTE}}]}]", "needs"),
        (
            "domains: [{domain: d, descriptors: [{key: a, rate_limit: {unit: FORTNIGHT,"
            " requests_per_unit: 1}}]}]",
            "unit",
        ),
        (
            "domains: [{domain: d, descriptors: [{key: a, rate_limit: {unit: MINUTE,"
            " requests_per_unit: -1}}]}]",
            "requests_per_unit",
        ),
        (
            "domains: [{domain: d, descriptors: [{key: a, rate_limit: {unlimited: true,"
            " unit: MINUTE}}]}]",
            "unlimited",
        ),
        ("domains: [{domain: d, descriptors: [{key: a}, {key: a}]}]", "duplicate"),
        ("domains: [{domain: d}, {domain: d}]", "twice"),
        ("domains: [{domain: d, descriptors: [{key: a, quota: bananas}]}]", "quota"),
        ("domains: [{descriptors: []}]", "domain"),
        ("domains: [unclosed", "not valid YAML"),
        ("- just a list", "(top)"),
    ],
)
def test_a_bad_file_is_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse(text, "limits.yaml")
    assert "limits.yaml" in str(err.value)
    assert reason in str(err.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.yaml")


def test_every_yaml_example_in_the_docs_loads() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "RATE_LIMITS.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```yaml\n")[1:]]
    assert blocks
    for block in blocks:
        static = config.parse(block, "RATE_LIMITS.md")
        assert static.match("gateway", (("model", "llama3.1:70b"),)).limit == Limit(
            120, Unit.MINUTE
        )
        assert static.match("gateway", (("model", "deepseek-r1:8b"),)).shadow_mode
        assert static.match("gateway", (("model", "tiny:latest"),)).unlimited
