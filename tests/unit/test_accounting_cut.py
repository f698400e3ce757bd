"""Cut streams (issue 11 §6) without a stack: what they are charged, and the RLS request
accounting sends in Envoy's place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from accounting import rlsdebit
from accounting.stream import RequestInfo, StreamAccount
from gateway.settings import reach

ENVOY_YAML = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"
RL = {
    "key_tpm": {"requests_per_unit": 3000, "unit": "MINUTE"},
    "tenant_tpm": {"requests_per_unit": 9000, "unit": "MINUTE"},
    "key_rpm": {"requests_per_unit": 5, "unit": "MINUTE"},
}
META = {
    "tenant_id": "t1",
    "key_id": "k1",
    "endpoint": "/api/chat",
    "stream": True,
    "reserved": 150,
    "max_tokens": 100,
    "prompt_estimate": 50,
    "rl": RL,
}


def account(endpoint: str = "/api/chat", **meta: Any) -> StreamAccount:
    acc = StreamAccount(RequestInfo.from_metadata("rid", {**META, "endpoint": endpoint, **meta}))
    acc.request_body(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    return acc


def ndjson(*frames: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(f).encode() + b"\n" for f in frames)


def test_cut_stream_is_charged_the_prompt_estimate_and_one_token_per_frame() -> None:
    acc = account()
    acc.response_start(200, b"{")
    content = {"message": {"role": "assistant", "content": "x"}, "done": False}
    thinking = {"message": {"role": "assistant", "content": "", "thinking": "hm"}, "done": False}
    acc.response_chunk(ndjson(content, content, thinking), end=False)
    outcome = acc.outcome(cut=True)
    counts = outcome.counts
    assert (counts.tokens_in, counts.tokens_out, counts.estimated) == (50, 3, True)
    assert outcome.cut


def test_a_larger_count_from_the_backend_wins_over_the_estimate() -> None:
    acc = account("/v1/messages")
    acc.response_start(200, b"event")
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 80}}}
    delta = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}}
    acc.response_chunk(
        f"event: message_start\ndata: {json.dumps(start)}\n\n"
        f"event: content_block_delta\ndata: {json.dumps(delta)}\n\n".encode(),
        end=False,
    )
    counts = acc.outcome(cut=True).counts
    assert (counts.tokens_in, counts.tokens_out) == (80, 1)


def test_without_a_prompt_estimate_the_reservation_beyond_the_cap_is_the_floor() -> None:
    info = RequestInfo.from_metadata("rid", {**META, "prompt_estimate": None})
    assert info.prompt_estimate == 50  # reserved 150 - max_tokens 100


def _tokens_checked_descriptor_keys() -> list[list[str]]:
    """The tokens/min descriptors Envoy checks at request time (envoy.yaml, hits_addend 0):
    for each, the entry keys in order, the generic_key's value in place of its key."""
    config = yaml.safe_load(ENVOY_YAML.read_text(encoding="utf-8"))
    found: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("hits_addend") == {"number": 0} and "actions" in node:
                keys = []
                for action in node["actions"]:
                    if "generic_key" in action:
                        keys.append(f"limit={action['generic_key']['descriptor_value']}")
                    else:
                        keys.append(action["metadata"]["descriptor_key"])
                found.append(keys)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def test_accounting_debits_the_windows_envoy_checks() -> None:
    found = rlsdebit.windows(RequestInfo.from_metadata("rid", META))
    ours = [[f"limit={v}" if k == "limit" else k for k, v in entries] for entries, _, _ in found]
    assert sorted(ours) == sorted(_tokens_checked_descriptor_keys())
    assert len(ours) == 2
    limits = {entries[0][1]: per_unit for entries, per_unit, _ in found}
    assert limits == {"key_tpm": 3000, "tenant_tpm": 9000}


def test_nothing_to_debit_without_tokens_or_limits() -> None:
    debits = rlsdebit.TokenDebits("127.0.0.1:1")
    debits.add(RequestInfo.from_metadata("rid", META), 0)
    debits.add(RequestInfo.from_metadata("rid", {**META, "rl": {}}), 10)
    assert debits.pending == {}


def test_a_sidecar_is_reached_at_its_listen_address_on_loopback() -> None:
    assert reach("", "0.0.0.0:9002") == "127.0.0.1:9002"
    assert reach("", "127.0.0.1:7000") == "127.0.0.1:7000"
    assert reach("rls:9002", "0.0.0.0:9002") == "rls:9002"


def test_debits_of_one_window_are_summed_until_they_are_sent() -> None:
    debits = rlsdebit.TokenDebits("127.0.0.1:1")
    debits.add(RequestInfo.from_metadata("r1", META), 10)
    debits.add(RequestInfo.from_metadata("r2", META), 5)
    other_key = RequestInfo.from_metadata("r3", {**META, "key_id": "k2"})
    debits.add(other_key, 1)
    debits.add(RequestInfo.from_metadata("r4", {**META, "rl": {}}), 7)  # no tokens/min limit
    tenant = f"tenant_id={META['tenant_id']}"
    assert debits.pending == {
        f"limit=key_tpm|{tenant}|key_id={META['key_id']}": 15,
        f"limit=key_tpm|{tenant}|key_id=k2": 1,
        f"limit=tenant_tpm|{tenant}": 16,
    }
