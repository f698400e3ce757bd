"""The static YAML of domains and descriptors: limits platform teams set in config, no code.

The format follows envoyproxy/ratelimit's so it reads familiar::

    domains:
      - domain: gateway
        descriptors:
          - key: model                 # matches the descriptor entry ("model", <any value>)
            value: "llama3*"           # optional; a trailing * matches a prefix
            rate_limit: {unit: MINUTE, requests_per_unit: 100}
            shadow_mode: false         # true: count and report, never reject
            quota: requests            # optional: requests | tokens (OpenAI's headers)
            descriptors: [...]         # nested entries of a longer descriptor

A node matches one descriptor entry; a descriptor gets the node that matches its last entry.
Siblings are tried exact value first, then prefix (``value: "x*"``), then key-only. A limit Envoy
sends on the descriptor itself (the override) wins over ``rate_limit``; the node still decides
``shadow_mode`` and ``quota``, and ``quota`` is inherited by nested nodes. A bad file is refused
at start-up with the path of the offending node.

While the RLS runs, :class:`Reloader` reloads the file when it changes (its mtime, size or inode,
polled every few seconds: a Kubernetes ConfigMap's symlink swap included) or on SIGHUP, as
envoyproxy/ratelimit's runtime watch does. The new rules replace the old ones whole between two
decisions (none is dropped: a decision in flight keeps the match it made); a bad new file keeps
the old rules and logs why (``ratelimit_config_reloads_total{result}``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

import yaml
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway import logs
from gateway.rls import Entry, Limit, Unit

DEFAULT_PATH: Traversable = files("ratelimit") / "limits.yaml"  # shipped as package data
Quota = Literal["requests", "tokens"]
# Distinct (domain, entries) whose match is remembered: the config never changes once loaded,
# and a key's descriptors come back with every request.
_MATCHES_CACHED = 16_384

RELOADS = Counter(
    "ratelimit_config_reloads_total",
    "Reloads of the static rate-limit YAML after a change or SIGHUP: ok (new rules in force),"
    " error (bad or unreadable file: the old rules stay)",
    ["result"],
)
for _result in ("ok", "error"):
    RELOADS.labels(_result)


class ConfigError(ValueError):
    """The static config cannot be used; the message says where and why."""


class _RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    unit: Unit | None = None
    requests_per_unit: int | None = Field(default=None, ge=0)
    unlimited: bool = False

    @model_validator(mode="after")
    def _complete(self) -> _RateLimit:
        if self.unlimited:
            if self.unit is not None or self.requests_per_unit is not None:
                raise ValueError("unlimited: true takes no unit or requests_per_unit")
        elif self.unit is None or self.requests_per_unit is None:
            raise ValueError("rate_limit needs unit and requests_per_unit (or unlimited: true)")
        return self


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = Field(min_length=1)
    value: str | None = None
    rate_limit: _RateLimit | None = None
    shadow_mode: bool = False
    quota: Quota | None = None
    descriptors: list[_Node] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_children(self) -> _Node:
        _check_unique(self.descriptors)
        return self


class _Domain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    domain: str = Field(min_length=1)
    descriptors: list[_Node] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_children(self) -> _Domain:
        _check_unique(self.descriptors)
        return self


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    domains: list[_Domain] = Field(default_factory=list)


def _check_unique(nodes: list[_Node]) -> None:
    seen: set[tuple[str, str | None]] = set()
    for node in nodes:
        ident = (node.key, node.value)
        if ident in seen:
            raise ValueError(f"duplicate descriptor key={node.key!r} value={node.value!r}")
        seen.add(ident)


@dataclass(frozen=True, slots=True)
class Match:
    """What the static config says about one descriptor."""

    limit: Limit | None = None
    unlimited: bool = False
    shadow_mode: bool = False
    quota: Quota | None = None


NO_MATCH = Match()


class StaticConfig:
    def __init__(self, domains: dict[str, list[_Node]]) -> None:
        self._domains = domains
        self._cached: Callable[[str, tuple[Entry, ...]], Match] = lru_cache(
            maxsize=_MATCHES_CACHED
        )(self._match)

    @property
    def domains(self) -> list[str]:
        return sorted(self._domains)

    def adopt(self, other: StaticConfig) -> None:
        """Take ``other``'s rules (and its match cache) in place: whoever holds this config
        (the Decider) decides by them from its next match on."""
        self._domains, self._cached = other._domains, other._cached

    def match(self, domain: str, entries: tuple[Entry, ...]) -> Match:
        """What the config says about a descriptor (worked out once per distinct one)."""
        return self._cached(domain, entries)

    def _match(self, domain: str, entries: tuple[Entry, ...]) -> Match:
        nodes = self._domains.get(domain, [])
        quota: Quota | None = None
        node: _Node | None = None
        for key, value in entries:
            node = _pick(nodes, key, value)
            if node is None:
                return Match(quota=quota)
            quota = node.quota or quota
            nodes = node.descriptors
        if node is None:
            return NO_MATCH
        rl = node.rate_limit
        limit = None
        if rl is not None and not rl.unlimited:
            assert rl.unit is not None and rl.requests_per_unit is not None
            limit = Limit(rl.requests_per_unit, rl.unit)
        return Match(
            limit=limit,
            unlimited=rl is not None and rl.unlimited,
            shadow_mode=node.shadow_mode,
            quota=quota,
        )


def _pick(nodes: list[_Node], key: str, value: str) -> _Node | None:
    prefix: _Node | None = None
    default: _Node | None = None
    for node in nodes:
        if node.key != key:
            continue
        if node.value is None:
            default = default or node
        elif node.value == value:
            return node
        elif (
            node.value.endswith("*")
            and value.startswith(node.value[:-1])
            and (prefix is None or len(node.value) > len(prefix.value or ""))
        ):
            prefix = node
    return prefix or default


def parse(text: str, source: str = "<string>") -> StaticConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc
    domains: dict[str, list[_Node]] = {}
    for domain in parsed.domains:
        if domain.domain in domains:
            raise ConfigError(f"{source}: domain {domain.domain!r} is defined twice")
        domains[domain.domain] = domain.descriptors
    return StaticConfig(domains)


def load(path: Path | str | None = None) -> StaticConfig:
    """Load and validate the static config; raises ConfigError with a readable reason."""
    file: Traversable = Path(path) if path else DEFAULT_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    return parse(text, str(file))


Stamp = tuple[int, int, int]  # (mtime_ns, size, inode): "the file changed"


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Reloader:
    """Keep ``config`` (loaded from ``path``) up to date with its file: :meth:`reload` on
    SIGHUP, :meth:`watch` to poll for changes. ``path`` None: the shipped file (reloaded on
    SIGHUP like any other, though it only changes with a new release)."""

    def __init__(self, config: StaticConfig, path: Path | str | None = None) -> None:
        self.config = config
        self._path = Path(path) if path else None
        file = self._path or DEFAULT_PATH
        self._file = file if isinstance(file, Path) else None  # a zip's data cannot be polled
        self._stamp = _stamp(self._file) if self._file is not None else None
        self._log = logs.get("ratelimit.config")

    def reload(self, why: str = "sighup") -> bool:
        """Load the file again; on success its rules replace the old ones, else the old ones
        stay and the reason is logged. True when the new rules are in force."""
        if self._file is not None:
            self._stamp = _stamp(self._file)
        try:
            fresh = load(self._path)
        except ConfigError as exc:
            RELOADS.labels("error").inc()
            self._log.error(
                "rate-limit config not reloaded: the old rules stay", why=why, error=str(exc)
            )
            return False
        self.config.adopt(fresh)
        RELOADS.labels("ok").inc()
        self._log.info("rate-limit config reloaded", why=why, domains=fresh.domains)
        return True

    def changed(self) -> bool:
        """The file's stamp differs from the last load's (a vanished file is no change: the
        old rules stay until it is back)."""
        if self._file is None:
            return False
        now = _stamp(self._file)
        return now is not None and now != self._stamp

    async def watch(self, interval_s: float) -> None:
        """Every ``interval_s``: reload when the file changed (a background task)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed():
                self.reload("changed")
