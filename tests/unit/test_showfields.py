"""What accounting's nz.show leaves of /api/show's answer (envoy.yaml routes it there)."""

from __future__ import annotations

import json

from accounting import showfields

SHOWN = {
    "license": "MIT",
    "modelfile": "FROM llama3.2\nSYSTEM secret",
    "parameters": "stop <|eot_id|>",
    "template": "{{ .Prompt }}",
    "system": "You are the secret persona.",
    "messages": [{"role": "user", "content": "preset"}],
    "details": {"family": "llama"},
    "model_info": {"general.architecture": "llama"},
    "capabilities": ["completion"],
    "modified_at": "2026-12-01T10:00:00Z",
}


def test_the_secrets_go_and_everything_else_stays() -> None:
    out = showfields.strip(200, json.dumps(SHOWN).encode())
    assert out is not None
    assert json.loads(out) == {
        "license": "MIT",
        "parameters": "stop <|eot_id|>",
        "details": {"family": "llama"},
        "model_info": {"general.architecture": "llama"},
        "capabilities": ["completion"],
        "modified_at": "2026-12-01T10:00:00Z",
    }
    assert b"secret" not in out


def test_a_name_in_another_case_goes_too() -> None:
    # A Go client (Ollama's own) decodes "System" and "TEMPLATE" into the same fields.
    out = showfields.strip(200, b'{"System": "s", "TEMPLATE": "t", "details": {}}')
    assert out is not None and json.loads(out) == {"details": {}}


def test_errors_and_answers_without_secrets_pass_unchanged() -> None:
    assert showfields.strip(404, json.dumps(SHOWN).encode()) is None
    assert showfields.strip(502, b'{"error": "upstream error"}') is None
    assert showfields.strip(200, b"not json") is None
    assert showfields.strip(200, b"[1, 2]") is None
    assert showfields.strip(200, b'{"details": {}}') is None
