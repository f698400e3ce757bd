"""Which models run on Ollama's cloud (authz/models.py ``is_cloud``): the tag after the last
colon is ``cloud`` or ends in ``-cloud``, whatever the host, its port or the namespace say.
A cloud model leaves the building, so a tenant that did not opt in must never reach one.
Every expected value is written out by hand."""

from __future__ import annotations

import pytest

from authz import models
from authz.models import ModelGrant

DISCOVERED = frozenset(
    {
        "myhost:5000/team/model:cloud",
        "myhost:5000/team/gpt-oss:120b-cloud",
        "myhost:5000/team/model:latest",
        "llama3:latest",
    }
)
LOCAL = frozenset({"myhost:5000/team/model:latest", "llama3:latest"})


@pytest.mark.parametrize(
    ("name", "cloud"),
    [
        ("myhost:5000/team/model:cloud", True),  # a colon in the host is not the tag's
        ("MyHost:5000/Team/Model:CLOUD", True),
        ("myhost:5000/team/gpt-oss:120b-cloud", True),
        ("myhost:5000/team/model", False),  # :latest
        ("myhost:5000-cloud/team/model", False),
        ("registry.ollama.ai/library/kimi-k2:cloud", True),
        ("cloud:7b", False),
        ("model:cloudy", False),
        ("model:cloud-7b", False),
        ("", False),  # no name names no model
    ],
)
def test_a_cloud_model_is_known_by_its_tag(name: str, cloud: bool) -> None:
    assert models.is_cloud(name) is cloud


def test_cloud_models_behind_a_host_with_a_port_need_the_opt_in() -> None:
    listed = ModelGrant(allow_all=True, allowed_models=frozenset(), allow_cloud=False)
    assert models.effective(listed, DISCOVERED) == LOCAL
    assert models.permits(listed, DISCOVERED, "myhost:5000/team/model:cloud") is None
    opted_in = ModelGrant(allow_all=True, allowed_models=frozenset(), allow_cloud=True)
    assert models.effective(opted_in, DISCOVERED) == DISCOVERED
    assert models.permits(opted_in, DISCOVERED, "MyHost:5000/Team/Model:Cloud") == (
        "myhost:5000/team/model:cloud"
    )
