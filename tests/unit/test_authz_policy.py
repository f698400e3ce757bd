"""The policy rules in plain Python: names, effective sets, inheritance, bodies, the config."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz import models, payload
from authz.admin import models as admin_models
from authz.admin.records import TenantRecord
from authz.admission import budgets_for, slots_for
from authz.check import rate_overrides
from authz.principal import Limits, Principal
from authz.request import AuthzRequest
from gateway.endpoints import lookup
from gateway.periods import Period
from gateway.requestmeta import RequestMeta
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NO_LIMITS = Limits(None, None, None, None, None, None)


def principal(**changes: Any) -> Principal:
    base = Principal(
        key_id="k1",
        prefix="abcdefghijkl",
        key_hash="$argon2id$x",
        active=True,
        expires_at=None,
        scopes=frozenset({"chat", "embeddings", "models"}),
        tenant_id="t1",
        tenant="acme",
        allow_all=False,
        allowed_models=frozenset(),
        allow_cloud=False,
        prompt_log=False,
        key_limits=NO_LIMITS,
        tenant_limits=NO_LIMITS,
        default_max_tokens=1024,
        keep_alive_min_s=60,
        keep_alive_max_s=1800,
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("llama3", "llama3:latest"),
        ("llama3:latest", "llama3:latest"),
        ("LLaMA3:Latest", "llama3:latest"),
        ("registry.ollama.ai/library/llama3", "llama3:latest"),
        ("library/llama3:8b", "llama3:8b"),
        ("user/model", "user/model:latest"),
        ("registry.ollama.ai/user/model:q4", "user/model:q4"),
        ("myhost:5000/team/model", "myhost:5000/team/model:latest"),
        ("  qwen2.5:0.5b ", "qwen2.5:0.5b"),
        ("", ""),
    ],
)
def test_canonical_names_follow_ollama(name: str, canonical: str) -> None:
    assert models.canonical(name) == canonical


@pytest.mark.parametrize(
    ("name", "cloud"),
    [
        ("gpt-oss:120b-cloud", True),
        ("kimi-k2:cloud", True),
        ("deepseek-v3.1:671b-cloud", True),
        ("llama3", False),
        ("cloudy:latest", False),
        ("cloud", False),
    ],
)
def test_cloud_tags(name: str, cloud: bool) -> None:
    assert models.is_cloud(name) is cloud


def test_effective_set_and_permits_agree() -> None:
    discovered = frozenset({"llama3:latest", "qwen:0.5b", "big:cloud"})
    listed = principal(allowed_models=frozenset({"llama3", "big:cloud", "ghost"}))
    assert models.effective(listed, discovered) == {"llama3:latest"}
    assert models.permits(listed, discovered, "LLAMA3") == "llama3:latest"
    assert models.permits(listed, discovered, "ghost") is None
    assert models.permits(listed, discovered, "big:cloud") is None
    everything = principal(allow_all=True, allow_cloud=True)
    assert models.effective(everything, discovered) == discovered
    assert models.permits(everything, frozenset(), "llama3") is None  # nothing discovered


def tenant_record(**changes: Any) -> TenantRecord:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    base = TenantRecord(
        id="t1",
        name="acme",
        status="active",
        allow_all=True,
        allowed_models=(),
        allow_cloud=False,
        limits={},
        ceilings={},
        created_at=when,
        updated_at=when,
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("allow_all", "allowed"),
    [(True, ()), (False, ("LLAMA3", "big:cloud", "gpt-oss:20b-cloud", "ghost"))],
    ids=["all", "listed"],
)
def test_cloud_models_need_the_opt_in_at_check_and_in_the_admin_view(
    allow_all: bool, allowed: tuple[str, ...]
) -> None:
    discovered = frozenset({"llama3:latest", "big:cloud", "gpt-oss:20b-cloud"})
    backends = {"http://ollama:11434": discovered}
    local = ("llama3:latest",)
    everything = ("big:cloud", "gpt-oss:20b-cloud", "llama3:latest")
    for allow_cloud, want in ((False, local), (True, everything)):
        tenant = tenant_record(allow_all=allow_all, allowed_models=allowed, allow_cloud=allow_cloud)
        assert admin_models.policy(tenant, None, backends).models == want
        who = principal(
            allow_all=allow_all, allowed_models=frozenset(allowed), allow_cloud=allow_cloud
        )
        assert models.effective(who, discovered) == frozenset(want)
        for name in everything:
            assert models.permits(who, discovered, name) == (name if name in want else None)


def test_limits_inherit_from_the_tenant_when_the_key_leaves_them_null() -> None:
    who = principal(
        key_limits=replace(NO_LIMITS, requests_per_minute=5, budget_daily=100),
        tenant_limits=replace(
            NO_LIMITS, requests_per_minute=50, tokens_per_minute=1000, budget_daily=500
        ),
    )
    assert who.limit("requests_per_minute") == 5
    assert who.limit("tokens_per_minute") == 1000
    assert who.limit("max_concurrent") is None
    assert RequestMeta(rl=rate_overrides(who)).to_metadata()["rl"] == {
        "key_rpm": {"requests_per_unit": 5, "unit": "MINUTE"},
        "tenant_rpm": {"requests_per_unit": 50, "unit": "MINUTE"},
        "key_tpm": {"requests_per_unit": 1000, "unit": "MINUTE"},
        "tenant_tpm": {"requests_per_unit": 1000, "unit": "MINUTE"},
    }
    budgets = budgets_for(who)
    assert [(b.key_id, b.period, b.limit) for b in budgets] == [
        ("k1", Period.DAILY, 100),
        (None, Period.DAILY, 500),
    ]
    assert slots_for(who) == []
    assert slots_for(principal(tenant_limits=replace(NO_LIMITS, max_concurrent=3))) == [
        ("nz:{t1}:cs:t", 3)
    ]


def test_principal_survives_the_shared_cache() -> None:
    who = principal(
        expires_at=datetime(2030, 1, 2, tzinfo=UTC),
        allowed_models=frozenset({"a", "b"}),
        key_limits=replace(NO_LIMITS, budget_total=7),
    )
    back = Principal.from_json(who.to_json())
    assert back == replace(who, key_hash="")
    assert "argon2" not in who.to_json()


def _req(body: bytes, path: str = "/api/chat", ctype: str = "application/json") -> AuthzRequest:
    return AuthzRequest("POST", path, {"content-type": [ctype]}, body)


def test_payload_reads_model_stream_and_caps() -> None:
    native = payload.parse(
        _req(json.dumps({"model": "m", "messages": [{"content": "x" * 30}]}).encode()),
        embeddings=False,
    )
    assert (native.model, native.stream, native.output_cap) == ("m", True, None)
    assert native.prompt_estimate >= 10
    capped = payload.parse(
        _req(b'{"model": "m", "options": {"num_predict": 7}, "stream": false}'), embeddings=False
    )
    assert (capped.stream, capped.output_cap) == (False, 7)
    oai = payload.parse(
        _req(b'{"model": "m", "max_completion_tokens": 9}', "/v1/chat/completions"),
        embeddings=False,
    )
    assert (oai.stream, oai.output_cap) == (False, 9)
    endless = payload.parse(
        _req(b'{"model": "m", "options": {"num_predict": -1}}'), embeddings=False
    )
    assert endless.output_cap is None
    embed = payload.parse(_req(b'{"model": "m", "input": "x"}', "/api/embed"), embeddings=True)
    assert (embed.stream, embed.output_cap) == (False, 0)


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"nope", "application/json", 400),
        (b"[]", "application/json", 400),
        (b'{"model": null}', "application/json", 400),
        (b'{"model": "m", "stream": 1}', "application/json", 400),
        (b'{"model": "m"}', "text/plain", 415),
        (b'{"model": "m"}', "application/vnd.api+json", None),
        (b'{"model": "m"}', "application/x-www-form-urlencoded", None),
    ],
)
def test_payload_refusals(body: bytes, ctype: str, status: int | None) -> None:
    if status is None:
        assert payload.parse(_req(body, ctype=ctype), embeddings=False).model == "m"
        return
    with pytest.raises(payload.BadRequest) as raised:
        payload.parse(_req(body, ctype=ctype), embeddings=False)
    assert raised.value.status == status


def test_endpoint_allowlist() -> None:
    assert lookup("POST", "/api/chat") is not None
    assert lookup("GET", "/v1/models/user/model:tag") is not None
    for method, path in [
        ("POST", "/api/pull"),
        ("GET", "/api/chat"),
        ("HEAD", "/api/blobs/sha256:x"),
        ("GET", "/v1/models/"),
        ("GET", "/api/experimental/x"),
    ]:
        assert lookup(method, path) is None


def test_envoy_and_authz_agree_on_the_maximum_body() -> None:
    config = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    found = []
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                for http in flt["typed_config"].get("http_filters", []):
                    if http["name"] == "envoy.filters.http.ext_authz":
                        found.append(http["typed_config"]["with_request_body"])
    assert found
    for body in found:
        assert body["max_request_bytes"] == Settings().max_request_bytes
        assert body["allow_partial_message"] is False


def test_images_count_as_a_bounded_number_of_tokens_not_their_base64_size() -> None:
    picture = "iVBORw0KGgo" * 100_000  # ~1 MB of base64
    native = payload.parse(
        _req(
            json.dumps(
                {"model": "m", "messages": [{"content": "hi", "images": [picture]}]}
            ).encode()
        ),
        embeddings=False,
    )
    oai = payload.parse(
        _req(
            json.dumps(
                {
                    "model": "m",
                    "messages": [
                        {
                            "content": [
                                {
                                    "type": "image_url",
                                    "image_url": {"url": "data:image/png;base64," + picture},
                                }
                            ]
                        }
                    ],
                }
            ).encode(),
            "/v1/chat/completions",
        ),
        embeddings=False,
    )
    for parsed in (native, oai):
        assert 1_000 <= parsed.prompt_estimate <= 1_200
    tools = payload.parse(
        _req(json.dumps({"model": "m", "tools": [{"description": "x" * 300}]}).encode()),
        embeddings=False,
    )
    assert tools.prompt_estimate >= 100  # tool definitions reach the prompt
