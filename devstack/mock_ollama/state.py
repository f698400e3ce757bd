"""The mock's mutable state: installed models, the request log and abandoned streams."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from devstack.mock_ollama.models import ModelInfo, default_models, normalize_model_name

REQUEST_HISTORY: Final = 200


@dataclass(frozen=True)
class Fault:
    """What ``POST /_mock/fault`` set: every later model-server request — or, with ``paths``,
    each request to one of them — waits ``delay_s`` before its answer starts and, with
    ``status``, fails with it (a backend down, broken or slow, while its port stays open; with
    ``paths``, e.g. its chat broken while ``/api/tags`` still answers discovery). ``Fault()`` is
    a healthy mock."""

    status: int | None = None
    delay_s: float = 0.0
    paths: tuple[str, ...] = ()  # () every path

    def applies(self, path: str) -> bool:
        return not self.paths or path in self.paths


@dataclass(frozen=True)
class RecordedRequest:
    """One request the mock received. ``headers`` keys are lowercase; ``body`` is the parsed JSON
    body, or None (no body, or not valid JSON); ``raw`` the body's bytes as UTF-8 text (tests
    decode it as Ollama's Go decoder would)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: str = ""


class MockOllama:
    """The mock's mutable state; tests change it directly (add models, slow frames down)."""

    def __init__(
        self,
        models: dict[str, ModelInfo] | None = None,
        frame_delay_s: float = 0.0,
        name: str = "",
    ) -> None:
        self.models: dict[str, ModelInfo] = default_models() if models is None else models
        self.frame_delay_s: float = frame_delay_s
        # Which backend this mock plays (``--name``): sent as ``x-mock-backend`` on every answer.
        self.name: str = name
        self.fault: Fault = Fault()
        self.requests: deque[RecordedRequest] = deque(maxlen=REQUEST_HISTORY)
        self.disconnects: int = 0  # streams the client abandoned before their last frame

    def resolve(self, name: str) -> ModelInfo | None:
        key = normalize_model_name(name)
        found = self.models.get(key)
        if found is None:
            lowered = key.lower()
            found = next((m for k, m in self.models.items() if k.lower() == lowered), None)
        return found

    def add_model(self, name: str) -> ModelInfo:
        """Install a model as ``/api/pull`` would (idempotent)."""
        existing = self.resolve(name)
        if existing is not None:
            return existing
        info = ModelInfo.pulled(normalize_model_name(name))
        self.models[info.name] = info
        return info

    def remove_model(self, name: str) -> bool:
        info = self.resolve(name)
        if info is None:
            return False
        del self.models[info.name]
        return True

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]
