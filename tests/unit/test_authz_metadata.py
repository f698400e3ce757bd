"""The dynamic metadata authz hands Envoy (the audit row, the RLS overrides, accounting's
settings), value by value, as Envoy receives it: a protobuf Struct."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from authz.decision import Allow, deny
from authz.server import to_response

META: dict[str, Any] = {
    "tenant": "acme",
    "reserved": 1100,
    "ratio": 0.25,
    "big": 10**15,
    "negative": -3,
    "stream": False,
    "slot": True,
    "none": None,
    "empty": {},
    "rl": {"key_rpm": {"requests_per_unit": 60, "unit": "MINUTE"}, "off": {}},
    "list": [1, "x", {"y": True}],
    "tuple": ("a", 2),
}
# As Envoy reads it (numbers are doubles in a Struct).
EXPECTED: dict[str, Any] = {
    "tenant": "acme",
    "reserved": 1100.0,
    "ratio": 0.25,
    "big": 1e15,
    "negative": -3.0,
    "stream": False,
    "slot": True,
    "none": None,
    "empty": {},
    "rl": {"key_rpm": {"requests_per_unit": 60.0, "unit": "MINUTE"}, "off": {}},
    "list": [1.0, "x", {"y": True}],
    "tuple": ["a", 2.0],
}


def test_an_allow_carries_every_metadata_value_as_envoy_reads_it() -> None:
    response = to_response(Allow(metadata=META))
    assert json_format.MessageToDict(response.dynamic_metadata) == EXPECTED
    assert response.dynamic_metadata.fields["stream"].WhichOneof("kind") == "bool_value"
    assert response.dynamic_metadata.fields["reserved"].WhichOneof("kind") == "number_value"
    assert response.dynamic_metadata.fields["empty"].WhichOneof("kind") == "struct_value"


def test_a_denial_carries_the_metadata_and_its_status() -> None:
    response = to_response(deny(429, "openai", {"retry-after": "3"}, META))
    assert json_format.MessageToDict(response.dynamic_metadata) == {**EXPECTED, "status": 429.0}
    assert response.denied_response.status.code == 429


def test_no_metadata_is_an_empty_struct() -> None:
    assert json_format.MessageToDict(to_response(Allow()).dynamic_metadata) == {}
