"""``/api/show`` as a client may see it: the backend's answer without the system prompt, the
template, the whole Modelfile or the preset messages (envoy.yaml's ``nz.show`` sends the
buffered answer here; anything but a 200 JSON object passes unchanged)."""

from __future__ import annotations

import json

from gateway import gojson

# What /api/show must never reveal.
SECRETS = ("system", "template", "modelfile", "messages")
_FOLDED = frozenset(gojson.fold(name) for name in SECRETS)


def strip(status: int, body: bytes) -> bytes | None:
    """The body to send instead, or None to pass it unchanged."""
    if status != 200:
        return None
    try:
        shown = gojson.loads(body)
    except ValueError:
        return None
    if not isinstance(shown, dict):
        return None
    # Any case of the names: a Go client decodes "System" into the same field.
    kept = {name: value for name, value in shown.items() if gojson.fold(name) not in _FOLDED}
    if len(kept) == len(shown):
        return None
    return json.dumps(kept).encode()
