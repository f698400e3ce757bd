"""Deterministic pseudo-embeddings and the embedding input rules the native and OpenAI endpoints
share."""

from __future__ import annotations

import hashlib
import math
from typing import Any, Final

from devstack.mock_ollama.generation import as_count
from devstack.mock_ollama.surface import ApiError
from devstack.mock_ollama.wire import JSONObj

EMBEDDING_DIM: Final = 8


def pseudo_embedding(text: str, dim: int, normalize: bool) -> list[float]:
    """A deterministic pseudo-embedding of ``text``."""
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        for i in range(0, 32, 4):
            values.append(int.from_bytes(digest[i : i + 4], "little") / 2**31 - 1.0)
        counter += 1
    values = values[:dim]
    if normalize:
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        values = [v / norm for v in values]
    return [round(v, 7) for v in values]


def embedding_inputs(value: Any) -> list[str]:
    """The texts of an embedding ``input``: a string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ApiError(400, "invalid input type")


def embedding_dims(body: JSONObj) -> int:
    """The vector length asked for (``dimensions``), else the mock's default."""
    dims = as_count(body.get("dimensions"))
    return dims if dims else EMBEDDING_DIM
