"""The authz → Envoy/accounting metadata contract (gateway/requestmeta.py): the keys Envoy's
config reads are fields of the one definition, what authz writes is what accounting reads."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from accounting import inflight
from accounting.server import struct_dict
from authz import throttle
from authz.decision import Allow
from authz.server import to_response
from gateway.requestmeta import NAMESPACE, RateOverride, RequestMeta

ENVOY_YAML = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"

ADMITTED = RequestMeta(
    request_id="rid-1",
    tenant="acme",
    tenant_id="00000000-0000-0000-0000-000000000001",
    key_id="00000000-0000-0000-0000-000000000002",
    key_prefix="nz_abc",
    model="llama3.2:latest",
    endpoint="/v1/chat/completions",
    stream=True,
    reserved=1150,
    max_tokens=1000,
    keep_alive_min_s=None,
    keep_alive_max_s=600,
    slot=True,
    prompt_log=False,
    strip_usage=True,
    prompt_estimate=150,
    rl=(RateOverride("key_rpm", 5, "MINUTE"), RateOverride("tenant_tpm", 9000, "MINUTE")),
    surface="openai",
    rewrite=True,
)
# Written out by hand: what Envoy, the audit row and accounting read for ADMITTED.
ADMITTED_METADATA: dict[str, Any] = {
    "request_id": "rid-1",
    "tenant": "acme",
    "tenant_id": "00000000-0000-0000-0000-000000000001",
    "key_id": "00000000-0000-0000-0000-000000000002",
    "key_prefix": "nz_abc",
    "surface": "openai",
    "endpoint": "/v1/chat/completions",
    "model": "llama3.2:latest",
    "stream": True,
    "rl": {
        "key_rpm": {"requests_per_unit": 5, "unit": "MINUTE"},
        "tenant_tpm": {"requests_per_unit": 9000, "unit": "MINUTE"},
    },
    "reserved": 1150,
    "prompt_estimate": 150,
    "max_tokens": 1000,
    "keep_alive_min_s": None,
    "keep_alive_max_s": 600,
    "slot": True,
    "prompt_log": False,
    "rewrite": True,
    "strip_usage": True,
}


def _envoy_paths(node: Any) -> list[list[str]]:
    """Every metadata path in envoy.yaml that reads authz's namespace: ``metadata_key``
    (rate-limit descriptors and overrides), ``DynamicMetadataInput`` (the ext_proc filters'
    matchers) and route ``dynamic_metadata`` matches."""
    found: list[list[str]] = []
    if isinstance(node, dict):
        if NAMESPACE in (node.get("filter"), node.get("key")) and isinstance(
            node.get("path"), list
        ):
            found.append([str(step["key"]) for step in node["path"]])
        for value in node.values():
            found += _envoy_paths(value)
    elif isinstance(node, list):
        for value in node:
            found += _envoy_paths(value)
    return found


def test_every_key_envoy_reads_is_a_field_of_the_contract() -> None:
    paths = _envoy_paths(yaml.safe_load(ENVOY_YAML.read_text()))
    names = {f.name for f in fields(RequestMeta)}
    first = {path[0] for path in paths}
    # The walk sees what the config is known to read (a walk that finds nothing proves nothing).
    assert {"tenant_id", "key_id", "request_id", "rewrite", "strip_usage", "rl"} <= first
    assert first <= names, f"envoy.yaml reads keys authz never writes: {first - names}"
    for path in paths:
        if path[0] == "rl":
            assert len(path) == 2 and path[1] in throttle.WINDOWS, path
        else:
            assert len(path) == 1, path


def test_an_admitted_inference_request_writes_every_key() -> None:
    assert ADMITTED.to_metadata() == ADMITTED_METADATA
    assert set(ADMITTED_METADATA) == {f.name for f in fields(RequestMeta)}


def test_a_denial_writes_the_identity_and_nothing_of_an_admission() -> None:
    identity = RequestMeta(
        tenant="acme", tenant_id="t1", key_id="k1", key_prefix="nz_abc", surface="ollama"
    )
    assert identity.to_metadata() == {
        "tenant": "acme",
        "tenant_id": "t1",
        "key_id": "k1",
        "key_prefix": "nz_abc",
        "surface": "ollama",
    }
    # /api/version: proxied with its requests/min limits, never observed by accounting (no
    # request_id), no rewrite, no strip (Envoy tests those keys' presence, not their value).
    version = RequestMeta(
        tenant_id="t1", endpoint="/api/version", rl=(RateOverride("key_rpm", 5, "MINUTE"),)
    )
    assert version.to_metadata() == {
        "tenant_id": "t1",
        "endpoint": "/api/version",
        "rl": {"key_rpm": {"requests_per_unit": 5, "unit": "MINUTE"}},
    }


def test_what_authz_writes_accounting_reads_back_through_envoys_struct() -> None:
    struct = to_response(Allow(metadata=ADMITTED.to_metadata())).dynamic_metadata
    read = struct_dict(struct)  # as accounting's ext_proc edge reads Envoy's copy
    assert struct.fields["reserved"].WhichOneof("kind") == "number_value"
    assert RequestMeta.from_metadata("rid-1", read) == ADMITTED


def test_missing_or_mistyped_values_read_as_their_defaults() -> None:
    meta = RequestMeta.from_metadata(
        "rid",
        {
            "tenant": 3,
            "tenant_id": None,
            "stream": 1,  # not a bool
            "slot": "true",
            "reserved": True,  # a bool is no number
            "max_tokens": "100",
            "keep_alive_min_s": 30.7,
            "rewrite": 1,
            "rl": {
                "key_tpm": {"requests_per_unit": -1, "unit": "MINUTE"},
                "tenant_tpm": {"requests_per_unit": 10, "unit": ""},
                "key_rpm": "5",
                "tenant_rpm": {"requests_per_unit": 7.0, "unit": "MINUTE"},
            },
        },
    )
    assert meta == RequestMeta(
        request_id="rid", keep_alive_min_s=30, rl=(RateOverride("tenant_rpm", 7, "MINUTE"),)
    )
    assert RequestMeta.from_metadata("", {"rl": [1, 2]}) == RequestMeta()


def test_without_a_prompt_estimate_the_reservation_beyond_the_cap_is_the_prompt() -> None:
    read = RequestMeta.from_metadata
    assert read("r", {"reserved": 150, "max_tokens": 100}).prompt_estimate == 50
    assert (
        read("r", {"reserved": 150, "max_tokens": 100, "prompt_estimate": 7}).prompt_estimate == 7
    )
    assert read("r", {"reserved": 0, "max_tokens": 100}).prompt_estimate == 0
    assert read("r", {"prompt_estimate": -4}).prompt_estimate == 0


def test_an_open_request_survives_the_inflight_snapshot() -> None:
    entry = inflight.Open(ADMITTED, started=1_796_000_000.25)
    assert inflight.decode(inflight.encode(entry)) == entry
    assert inflight.decode("[1]") is None
    assert inflight.decode('{"request_id": "r", "nonsense": 1}') is None
