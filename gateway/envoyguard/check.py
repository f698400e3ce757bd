"""Check Envoy configs: the typed invariants and, when Envoy is at hand, its own validation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from gateway.envoyguard import invariants
from gateway.envoyguard.load import Loaded, load
from gateway.envoyguard.validate import find_envoy, validate
from gateway.envoyguard.violations import Violation
from gateway.settings import Settings

# The config this package ships (gateway/envoy → envoy/): what `envoy check` reads by default.
SHIPPED = Path(str(files("gateway") / "envoy" / "envoy.yaml"))


def default_max_request_bytes() -> int:
    """authz's NZ_MAX_REQUEST_BYTES: the environment's, else authz's default."""
    value = os.environ.get("NZ_MAX_REQUEST_BYTES")
    if value is not None:
        return int(value)
    default = Settings.model_fields["max_request_bytes"].default
    assert isinstance(default, int)
    return default


def check_loaded(loaded: Loaded, max_request_bytes: int | None = None) -> list[Violation]:
    limit = default_max_request_bytes() if max_request_bytes is None else max_request_bytes
    return [*loaded.violations, *invariants.check(loaded.file, loaded.bootstrap, limit)]


@dataclass
class Result:
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run(
    paths: Sequence[Path],
    max_request_bytes: int | None = None,
    envoy: str | None = None,
    envoy_validate: bool = True,
) -> Result:
    """Check each file; a file that cannot be read raises LoadError."""
    result = Result()
    binary = (envoy or find_envoy()) if envoy_validate else None
    if envoy_validate and binary is None:
        result.notes.append("no Envoy binary found: envoy --mode validate skipped")
    for path in paths:
        loaded = load(path)
        result.violations += check_loaded(loaded, max_request_bytes)
        if binary is not None:
            refused = validate(binary, path)
            if refused is not None:
                result.violations.append(refused)
    return result


def check_files(
    paths: Sequence[Path | str], max_request_bytes: int | None = None
) -> list[Violation]:
    """The violations of ``paths`` (typed invariants and, when Envoy is found, its validation)."""
    return run([Path(p) for p in paths], max_request_bytes).violations
