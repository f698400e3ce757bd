"""The playground page as Envoy serves it: its file and the endpoint catalogue it carries (its
Content-Security-Policy: gateway/pagecsp.py).

The catalogue is a JSON block in the page (descriptions and samples are prose, written there);
which endpoints it lists, with their method, auth and streaming, must equal the endpoint table
(gateway/endpoints.py), which :func:`catalogue_mismatch` checks (tests/unit/test_playground.py,
and :func:`gateway.playground.envoyroute.enable` before it serves the page).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gateway import endpoints

PAGE = Path(__file__).with_name("index.html")
_CATALOGUE = re.compile(
    r"""<script\s+type="application/json"\s+id="catalogue">(?P<body>.*?)</script>""", re.S
)


def read(path: Path = PAGE) -> str:
    return path.read_text(encoding="utf-8")


def catalogue(html: str) -> list[dict[str, Any]]:
    """The page's endpoint catalogue (its JSON block)."""
    found = _CATALOGUE.search(html)
    if found is None:
        raise ValueError("the playground page has no catalogue block")
    entries: list[dict[str, Any]] = json.loads(found["body"])
    return entries


def expected_catalogue() -> list[tuple[str, str, str, str, str | None]]:
    """What the catalogue must list, from the endpoint table: (method, path, scope, auth,
    streaming), in the table's order, the model detail last."""
    rows = []
    for e in [*endpoints.ENDPOINTS.values(), endpoints.MODEL_DETAIL]:
        auth = "bearer" if e.key_header is None else f"bearer or {e.key_header}"
        framing = None if e.framing is None else str(e.framing)
        rows.append((e.method, e.path, str(e.scope), auth, framing))
    return rows


def catalogue_mismatch(html: str) -> list[str]:
    """How the page's catalogue differs from the endpoint table ([]: it does not); every entry
    must also have a description, a sample response, and a sample request body exactly when
    its method sends one."""
    entries = catalogue(html)
    listed = [(e["method"], e["path"], e["scope"], e["auth"], e["streaming"]) for e in entries]
    expected = expected_catalogue()
    problems = [f"missing: {row}" for row in expected if row not in listed]
    problems += [
        f"not an endpoint of gateway/endpoints.py: {row}" for row in listed if row not in expected
    ]
    for e in entries:
        if not str(e.get("description", "")).strip() or not str(e.get("response", "")).strip():
            problems.append(f"{e['path']}: no description or sample response")
        if (e["method"] != "GET") != isinstance(e.get("request"), dict):
            problems.append(f"{e['path']}: a sample body exactly when {e['method']} sends one")
    return problems
