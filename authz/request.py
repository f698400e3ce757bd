"""The typed request authz decides on, built from Envoy's CheckRequest at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from gateway import endpoints, gojson

BODIES_PARSED = Counter("authz_bodies_parsed_total", "request bodies authz parsed as JSON")


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    method: str
    path: str  # normalised by Envoy, without the query string
    headers: dict[str, list[str]]  # lower-case names, every occurrence kept
    body: bytes = b""
    request_id: str = ""
    client_ip: str = ""
    _json: list[Any] = field(default_factory=list, compare=False, repr=False)

    def header(self, name: str) -> list[str]:
        return self.headers.get(name, [])

    @property
    def surface(self) -> str:
        """``openai`` for ``/v1/*``, ``ollama`` otherwise (:func:`gateway.endpoints.surface`):
        picks the error body's shape."""
        return endpoints.surface(self.path).value

    def json_body(self) -> Any:
        """The body parsed as Ollama reads it (memoised, :mod:`gateway.gojson`); raises
        ValueError when it is not JSON or Ollama could read it differently."""
        if not self._json:
            if self.body:
                BODIES_PARSED.inc()
            self._json.append(gojson.loads(self.body) if self.body else None)
        return self._json[0]
