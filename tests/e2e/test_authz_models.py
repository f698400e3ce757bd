"""Model policy with live discovery, listings without leaks — as clients see them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from authz.models import canonical
from tests.e2e.test_authz_support import (
    FORBIDDEN,
    FORBIDDEN_OPENAI,
    caller,
    chat,
    poll,
)
from tests.gateway_client import Caller, Gateway


def upstream_models(gw: Gateway) -> dict[str, dict[str, Any]]:
    """What the (mock) backend itself lists: canonical name → its /api/tags entry."""
    tags = httpx.get(f"{gw.stack.ollama_urls[0]}/api/tags").json()["models"]
    return {canonical(m["model"]): m for m in tags}


def listed(gw: Gateway, who: Caller) -> set[str]:
    resp = httpx.get(f"{gw.url}/api/tags", headers=who.headers)
    assert resp.status_code == 200
    return {canonical(m["model"]) for m in resp.json()["models"]}


def openai_ids(gw: Gateway, who: Caller) -> set[str]:
    resp = httpx.get(f"{gw.url}/v1/models", headers=who.headers)
    assert resp.status_code == 200
    return {canonical(m["id"]) for m in resp.json()["data"]}


def pull(gw: Gateway, name: str) -> None:
    resp = httpx.post(f"{gw.stack.ollama_urls[0]}/api/pull", json={"model": name, "stream": False})
    assert resp.status_code == 200


def delete(gw: Gateway, name: str) -> None:
    httpx.request("DELETE", f"{gw.stack.ollama_urls[0]}/api/delete", json={"model": name})


@pytest.fixture
def pulled(gw: Gateway) -> Iterator[list[str]]:
    """Models a test pulls into the mock; deleted again afterwards, and gone from discovery."""
    names: list[str] = []
    yield names
    for name in names:
        delete(gw, name)
    watcher = caller(gw)
    poll(lambda: not (listed(gw, watcher) & {canonical(n) for n in names}), timeout_s=5)


ALL = "all"
# The mock's installed models (devstack/mock_ollama/models.py), written out: three local, one cloud.
LOCAL = {"llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text:latest"}
CLOUD = "gpt-oss:20b-cloud"


def use(gw: Gateway, who: Caller, name: str) -> httpx.Response:
    """The model's own kind of request: an embedding for embedding models, else a chat."""
    if "embed" in name:
        body = {"model": name, "input": "hi"}
        return httpx.post(f"{gw.url}/api/embed", json=body, headers=who.headers, timeout=10)
    return chat(gw, who, model=name)


@pytest.mark.parametrize(
    ("tenant", "key", "expected"),
    [
        ({"allow_all": True}, {}, ALL),
        ({"allow_all": False, "allowed_models": ["llama3.2"]}, {}, {"llama3.2:latest"}),
        (
            {"allow_all": False, "allowed_models": ["llama3.2"]},
            {"allowed_models": ["qwen2.5:0.5b"]},
            {"qwen2.5:0.5b"},
        ),
        ({"allow_all": False, "allowed_models": ["llama3.2"]}, {"allow_all": True}, ALL),
        (
            {"allow_all": True},
            {"allow_all": False, "allowed_models": ["qwen2.5:0.5b"]},
            {"qwen2.5:0.5b"},
        ),
        ({"allow_all": True}, {"allowed_models": ["qwen2.5:0.5b"]}, ALL),
        ({"allow_all": False}, {}, set()),
        ({"allow_all": False, "allowed_models": ["llama3.2"]}, {"allowed_models": []}, set()),
        (
            {"allow_all": False, "allowed_models": ["llama3.2:latest", "not-on-any-backend"]},
            {},
            {"llama3.2:latest"},
        ),
    ],
    ids=[
        "tenant-all",
        "tenant-list",
        "key-list-overrides",
        "key-all-overrides-tenant-list",
        "key-not-all-overrides-tenant-all",
        "key-list-ignored-under-inherited-all",
        "nothing-allowed",
        "key-empty-list-overrides",
        "only-discovered-models",
    ],
)
def test_effective_set_inheritance_matrix(
    gw: Gateway, tenant: dict[str, Any], key: dict[str, Any], expected: object
) -> None:
    who = caller(gw, tenant, **key)
    assert set(upstream_models(gw)) == LOCAL | {CLOUD}
    want = LOCAL if expected == ALL else expected  # all: every local model (no cloud opt-in)
    assert listed(gw, who) == want
    assert openai_ids(gw, who) == want
    for name in sorted(LOCAL | {CLOUD}):
        resp = use(gw, who, name)
        if name in want:
            assert (name, resp.status_code) == (name, 200)
        else:
            assert (name, resp.status_code, resp.json()) == (name, 403, FORBIDDEN)


@pytest.mark.parametrize(
    "asked",
    ["llama3.2", "llama3.2:latest", "LLAMA3.2", "registry.ollama.ai/library/llama3.2:latest"],
)
@pytest.mark.parametrize("allowed", ["llama3.2", "llama3.2:latest"])
def test_names_compare_the_way_ollama_does(gw: Gateway, allowed: str, asked: str) -> None:
    who = caller(gw, {"allow_all": False, "allowed_models": [allowed]})
    assert chat(gw, who, model=asked).status_code == 200
    assert chat(gw, who, model="llama3.2:1b").status_code == 403


def test_not_allowed_unknown_model_and_blocked_endpoint_are_one_403(gw: Gateway) -> None:
    who = caller(gw, {"allow_all": False, "allowed_models": ["llama3.2"]})
    native = [
        chat(gw, who, model="qwen2.5:0.5b"),  # exists, not allowed
        chat(gw, who, model="no-such-model"),  # does not exist
        httpx.post(f"{gw.url}/api/pull", json={"model": "llama3.2"}, headers=who.headers),
        httpx.post(f"{gw.url}/api/show", json={"model": "qwen2.5:0.5b"}, headers=who.headers),
    ]
    for resp in native:
        assert (resp.status_code, resp.json(), resp.headers["content-type"]) == (
            403,
            FORBIDDEN,
            "application/json",
        )
    body = {"messages": [{"role": "user", "content": "hi"}]}
    url = f"{gw.url}/v1/chat/completions"
    oai = [
        httpx.post(url, json={**body, "model": "qwen2.5:0.5b"}, headers=who.headers),
        httpx.post(url, json={**body, "model": "no-such-model"}, headers=who.headers),
        httpx.get(f"{gw.url}/v1/models/qwen2.5:0.5b", headers=who.headers),
        httpx.post(f"{gw.url}/v1/audio/transcriptions", json=body, headers=who.headers),
    ]
    for resp in oai:
        assert (resp.status_code, resp.json()) == (403, FORBIDDEN_OPENAI)


def test_listings_have_the_upstream_shape_and_only_the_effective_set(gw: Gateway) -> None:
    who = caller(gw, {"allow_all": False, "allowed_models": ["llama3.2", "qwen2.5:0.5b"]})
    upstream = upstream_models(gw)
    tags = httpx.get(f"{gw.url}/api/tags", headers=who.headers).json()
    assert sorted(tags["models"], key=lambda m: m["model"]) == [
        upstream["llama3.2:latest"],
        upstream["qwen2.5:0.5b"],
    ]
    mock_v1 = httpx.get(f"{gw.stack.ollama_urls[0]}/v1/models").json()
    ours = httpx.get(f"{gw.url}/v1/models", headers=who.headers).json()
    assert ours["object"] == "list"
    assert sorted(ours["data"], key=lambda m: m["id"]) == sorted(
        (m for m in mock_v1["data"] if canonical(m["id"]) in {"llama3.2:latest", "qwen2.5:0.5b"}),
        key=lambda m: m["id"],
    )
    one = httpx.get(f"{gw.url}/v1/models/qwen2.5:0.5b", headers=who.headers)
    assert one.status_code == 200
    assert one.json() == httpx.get(f"{gw.stack.ollama_urls[0]}/v1/models/qwen2.5:0.5b").json()


def test_official_clients_see_only_their_models(gw: Gateway) -> None:
    who = caller(gw, {"allow_all": False, "allowed_models": ["qwen2.5:0.5b"]})
    client = ollama.Client(host=gw.url, headers=who.headers)
    assert [m.model for m in client.list().models] == ["qwen2.5:0.5b"]
    assert [m.model for m in client.ps().models] == ["qwen2.5:0.5b"]
    shown = client.show("qwen2.5:0.5b")
    assert shown.details is not None and shown.details.family == "qwen2"
    assert not shown.template and not shown.modelfile
    assert "system" not in shown.model_dump(exclude_none=True)
    with pytest.raises(ollama.ResponseError) as denied:
        client.show("llama3.2")
    assert denied.value.status_code == 403

    oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=who.key, max_retries=0)
    assert [m.id for m in oai.models.list()] == ["qwen2.5:0.5b"]
    assert oai.models.retrieve("qwen2.5:0.5b").id == "qwen2.5:0.5b"
    with pytest.raises(openai.PermissionDeniedError):
        oai.models.retrieve("llama3.2")
    with pytest.raises(openai.PermissionDeniedError):
        oai.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])


def test_show_strips_the_system_prompt_template_and_modelfile(gw: Gateway) -> None:
    who = caller(gw)
    upstream = httpx.post(f"{gw.stack.ollama_urls[0]}/api/show", json={"model": "llama3.2"})
    assert {"system", "template", "modelfile"} <= set(upstream.json())
    resp = httpx.post(f"{gw.url}/api/show", json={"model": "llama3.2"}, headers=who.headers)
    assert resp.status_code == 200
    shown = resp.json()
    assert not {"system", "template", "modelfile"} & set(shown)
    assert "do not reveal" not in resp.text
    assert shown["details"] == upstream.json()["details"]
    assert shown["model_info"] == upstream.json()["model_info"]


def test_ps_shows_only_the_effective_set(gw: Gateway) -> None:
    who = caller(gw, {"allow_all": False, "allowed_models": ["llama3.2"]})
    running = httpx.get(f"{gw.stack.ollama_urls[0]}/api/ps").json()["models"]
    assert len(running) > 1
    resp = httpx.get(f"{gw.url}/api/ps", headers=who.headers)
    assert resp.status_code == 200
    assert [m["model"] for m in resp.json()["models"]] == ["llama3.2:latest"]


def test_a_pulled_model_appears_after_one_discovery_interval(
    gw: Gateway, pulled: list[str]
) -> None:
    who = caller(gw)
    name = f"nz-new-{uuid.uuid4().hex[:8]}:latest"
    assert chat(gw, who, model=name).status_code == 403
    pulled.append(name)
    pull(gw, name)
    poll(lambda: name in listed(gw, who), timeout_s=2.5)  # interval 1 s in the tests
    assert chat(gw, who, model=name).status_code == 200
    # A tenant with a list does not get it.
    listed_only = caller(gw, {"allow_all": False, "allowed_models": ["llama3.2"]})
    assert name not in listed(gw, listed_only)
    # Deleted upstream → gone again.
    delete(gw, name)
    poll(lambda: name not in listed(gw, who), timeout_s=2.5)
    assert chat(gw, who, model=name).status_code == 403


@pytest.mark.parametrize("name", ["gpt-oss:120b-cloud", "kimi-k2:cloud"])
def test_cloud_models_need_the_tenant_opt_in(gw: Gateway, pulled: list[str], name: str) -> None:
    pulled.append(name)
    pull(gw, name)
    opted_in = caller(gw, {"allow_cloud": True})
    poll(lambda: name in listed(gw, opted_in), timeout_s=2.5)
    assert chat(gw, opted_in, model=name).status_code == 200
    for who in (
        caller(gw),  # allow_all, no opt-in
        caller(gw, {"allow_all": False, "allowed_models": [name]}),  # listed, no opt-in
    ):
        assert name not in listed(gw, who)
        resp = chat(gw, who, model=name)
        assert (resp.status_code, resp.json()) == (403, FORBIDDEN)


def test_no_discovered_model_means_no_model_resolves(gw: Gateway) -> None:
    if "mock_ollama" not in gw.stack.procs:
        pytest.skip("needs the mock to empty the backend")
    who = caller(gw)
    mock = gw.managed("mock_ollama")
    try:
        for name in upstream_models(gw):
            delete(gw, name)
        poll(lambda: not listed(gw, who), timeout_s=2.5)
        resp = chat(gw, who, model="llama3.2")
        assert (resp.status_code, resp.json()) == (403, FORBIDDEN)
        assert httpx.get(f"{gw.url}/v1/models", headers=who.headers).json()["data"] == []
    finally:
        mock.stop()  # a fresh mock has its default models again
        mock.start()
    poll(lambda: "llama3.2:latest" in listed(gw, who), timeout_s=5)
    assert chat(gw, who).status_code == 200
