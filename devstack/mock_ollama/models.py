"""The mock's model catalogue: what one installed model looks like, the models a fresh mock has, and
how Ollama spells a model name."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from devstack.mock_ollama.wire import JSONObj, rfc3339

_MODIFIED_AT: Final = "2025-10-16T09:30:00Z"


@dataclass
class ModelInfo:
    """One installed model, as ``/api/tags``, ``/api/ps`` and ``/api/show`` describe it."""

    name: str
    size: int
    digest: str
    family: str
    parameter_size: str
    quantization_level: str
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools"])
    context_length: int = 4096
    format: str = "gguf"
    modified_at: str = _MODIFIED_AT
    # A cloud model (``<name>:cloud`` / ``<name>:<tag>-cloud``) is a stub that forwards to Ollama's
    # cloud: Ollama lists it with these two fields, and a size of a few hundred bytes.
    remote_model: str = ""
    remote_host: str = ""

    def details(self) -> JSONObj:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    @classmethod
    def pulled(cls, name: str) -> ModelInfo:
        """A plausible model for a name pulled into the mock."""
        embed = "embed" in name.lower()
        return cls(
            name=name,
            size=274_302_450 if embed else 1_321_098_329,
            digest=hashlib.sha256(name.encode()).hexdigest(),
            family="bert" if embed else "llama",
            parameter_size="137M" if embed else "1.2B",
            quantization_level="F16" if embed else "Q4_K_M",
            capabilities=["embedding"] if embed else ["completion", "tools"],
            context_length=2048 if embed else 8192,
            modified_at=rfc3339(),
        )


def default_models() -> dict[str, ModelInfo]:
    """The models a fresh mock has installed, keyed by their full ``name:tag``."""
    models = [
        ModelInfo(
            name="llama3.2:latest",
            size=2_019_393_189,
            digest="a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            family="llama",
            parameter_size="3.2B",
            quantization_level="Q4_K_M",
            context_length=131_072,
        ),
        ModelInfo(
            name="qwen2.5:0.5b",
            size=397_821_319,
            digest="a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67",
            family="qwen2",
            parameter_size="494.03M",
            quantization_level="Q4_K_M",
            context_length=32_768,
        ),
        ModelInfo(
            name="nomic-embed-text:latest",
            size=274_302_450,
            digest="0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f",
            family="nomic-bert",
            parameter_size="137M",
            quantization_level="F16",
            capabilities=["embedding"],
            context_length=2048,
        ),
        ModelInfo(
            name="gpt-oss:20b-cloud",
            size=384,
            digest="875c3d0ee3b2ba9a7d3e4e5e2b8b0c6e2a4ad8f1a36f3b54d5b6b6e9b7d5c2a1",
            family="gptoss",
            parameter_size="20.9B",
            quantization_level="MXFP4",
            capabilities=["completion", "tools", "thinking"],
            context_length=131_072,
            format="",
            remote_model="gpt-oss:20b",
            remote_host="https://ollama.com:443",
        ),
    ]
    return {m.name: m for m in models}


def normalize_model_name(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest``; drops the default registry/namespace prefix."""
    n = name.strip()
    for prefix in ("registry.ollama.ai/library/", "library/"):
        if n.lower().startswith(prefix):
            n = n[len(prefix) :]
            break
    if ":" not in n.rsplit("/", 1)[-1]:
        n += ":latest"
    return n


def hosted_models(names: list[str]) -> dict[str, ModelInfo]:
    """Exactly these models (``--models``): a default model keeps its catalogue entry, any other
    name is a plausibly pulled one. Several mocks with disjoint or overlapping sets stand in for
    several Ollama backends, each with its own models."""
    defaults = default_models()
    hosted: dict[str, ModelInfo] = {}
    for raw in names:
        name = normalize_model_name(raw)
        hosted[name] = defaults.get(name) or ModelInfo.pulled(name)
    return hosted
