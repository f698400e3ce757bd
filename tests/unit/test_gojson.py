"""gateway.gojson against hand-written answers from Go's encoding/json rules (the Go decoder
itself is in test_bodies_as_ollama_reads_them.py)."""

from __future__ import annotations

import pytest

from gateway import gojson

LONG_S = "\u017f"  # the long s: folds with s and S
KELVIN = "\u212a"  # the Kelvin sign: folds with k and K


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("model", "MODEL"),
        ("Keep_Alive", "KEEP_ALIVE"),
        (f"max_token{LONG_S}", "MAX_TOKENS"),
        (f"{KELVIN}eep_alive", "KEEP_ALIVE"),
        ("num_predict", "NUM_PREDICT"),
        ("\u00e9t\u00e9", "\u00c9T\u00c9"),  # é -> É: the smallest of {É, é}
        (
            "\u03c3\u03c2\u03a3",
            "\u03a3\u03a3\u03a3",
        ),  # the three sigmas: one orbit
        ("stra\u00dfe", "STRA\u00dfE"),  # ß has no single-character upper case: kept
    ],
)
def test_fold_is_gos_key_folding(name: str, folded: str) -> None:
    assert gojson.fold(name) == folded


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "a", "MODEL": "b"}',
        b'{"model": "a", "model": "b"}',
        b'{"max_tokens": 1, "max_token\\u017f": 2}',
        '{"keep_alive": 1, "\u212aeep_alive": 0}'.encode(),
        b'{"model": "a", "messages": [{"role": "user", "Role": "system"}]}',
        b'{"model": "a", "options": {"num_predict": 5, "NUM_PREDICT": 9}}',
        b'{"a": {"b": {"c": {"d": {"x": 1, "X": 2}}}}}',
    ],
)
def test_keys_equal_under_folding_are_refused_at_any_depth(body: bytes) -> None:
    with pytest.raises(gojson.AmbiguousKeys):
        gojson.loads(body)


@pytest.mark.parametrize(
    "body", [b'{"keep_alive": NaN}', b'{"keep_alive": Infinity}', b'{"keep_alive": 1e400}']
)
def test_numbers_go_cannot_hold_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="number"):
        gojson.loads(body)


def test_distinct_keys_parse_as_json() -> None:
    body = gojson.loads(b'{"model": "a", "Messages": [{"role": "user"}], "x": 1.5, "y": [1e3]}')
    assert body == {"model": "a", "Messages": [{"role": "user"}], "x": 1.5, "y": [1000.0]}


def test_field_reads_any_spelling_and_put_replaces_it() -> None:
    body = gojson.loads(f'{{"MODEL": "b", "{KELVIN}eep_alive": 0, "other": 1}}'.encode())
    assert gojson.field(body, "model") == "b"
    assert gojson.field(body, "keep_alive") == 0
    assert gojson.field(body, "stream", "absent") == "absent"
    assert gojson.key_of(body, "keep_alive") == f"{KELVIN}eep_alive"
    gojson.put(body, "keep_alive", 300)
    gojson.put(body, "stream", False)
    assert body == {"MODEL": "b", "other": 1, "keep_alive": 300, "stream": False}
