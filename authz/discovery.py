"""Live model discovery: poll every backend's ``/api/tags``, cache in process and in Redis.

Each backend's list lives ``discovery_ttl_s`` after its last successful fetch (by this replica
or, through Redis key ``nz:discovery:<url>``, by another one). A backend whose list expired
contributes nothing; when every list is empty or expired no model resolves (fail closed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import Gauge

from authz.models import canonical
from gateway import logs
from gateway.backends import Backend
from gateway.storage import Store
from gateway.storeerrors import REDIS_ERRORS

# Another replica's list could not be read: Redis failed, or the list does not parse.
_SHARED_LIST_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, ValueError)

MODELS_DISCOVERED = Gauge(
    "authz_models_discovered", "distinct models on live backends", multiprocess_mode="max"
)
BACKEND_LIVE = Gauge(
    "authz_backend_live",
    "1 while the backend's model list is fresh (it gets requests), else 0",
    ["backend"],
    multiprocess_mode="max",
)
_FETCH_TIMEOUT_S = 2.0
_log = logs.get("authz.discovery")


def redis_key(url: str) -> str:
    return f"nz:discovery:{url}"


@dataclass(frozen=True, slots=True)
class BackendModels:
    url: str
    entries: dict[str, dict[str, Any]]  # canonical name → the backend's /api/tags entry
    until: float  # monotonic expiry
    running: tuple[dict[str, Any], ...] | None = None  # its /api/ps models; None: not read


def _parse_tags(payload: Any) -> dict[str, dict[str, Any]]:
    models = payload.get("models") if isinstance(payload, dict) else None
    if not isinstance(models, list):
        raise ValueError("no models list")
    entries: dict[str, dict[str, Any]] = {}
    for entry in models:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or entry.get("name")
        if isinstance(name, str) and canonical(name):
            entries.setdefault(canonical(name), entry)
    return entries


@dataclass
class Discovery:
    backends: tuple[Backend, ...]
    redis: Store
    interval_s: float
    ttl_s: float
    _backends: dict[str, BackendModels] = field(default_factory=dict, init=False)
    # models() is on every Check's path: (valid until, value), dropped whenever a list changes
    _models: tuple[float, frozenset[str]] = field(default=(0.0, frozenset()), init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)
    # Backend name → its IP addresses (Envoy's endpoints are addresses: authz resolves names)
    addresses: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False)
    # Bumped whenever what Envoy routes by changes (a backend's models, liveness or addresses)
    generation: int = field(default=0, init=False)
    _published: object = field(default=None, init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @property
    def urls(self) -> list[str]:
        return [b.url for b in self.backends]

    async def changed_since(self, generation: int) -> int:
        """Wait until the routing state is newer than ``generation``; the new generation."""
        while self.generation == generation:
            await self._changed.wait()
        return self.generation

    # -- the API the rest of authz (and the admin API) reads -----------------------------

    def snapshot(self) -> dict[str, frozenset[str]]:
        """Backend URL → canonical model names, live lists only."""
        now = time.monotonic()
        return {
            url: frozenset(b.entries)
            for url, b in self._backends.items()
            if b.until > now and url in self.urls
        }

    def models(self) -> frozenset[str]:
        """Every canonical model name on a live backend (empty: nothing resolves)."""
        now = time.monotonic()
        until, found = self._models
        if until > now:
            return found
        live = [b for url, b in self._backends.items() if b.until > now and url in self.urls]
        found = frozenset().union(*(b.entries for b in live))
        self._models = (min((b.until for b in live), default=now + 1.0), found)
        return found

    def _store(self, backend: BackendModels) -> None:
        self._backends[backend.url] = backend
        self._models = (0.0, frozenset())

    def entries(self) -> dict[str, dict[str, Any]]:
        """Canonical name → the upstream's ``/api/tags`` entry (first backend that has it)."""
        now = time.monotonic()
        found: dict[str, dict[str, Any]] = {}
        for url in self.urls:
            backend = self._backends.get(url)
            if backend is not None and backend.until > now:
                for name, entry in backend.entries.items():
                    found.setdefault(name, entry)
        return found

    def backends_for(self, model: str) -> list[str]:
        return [url for url, names in self.snapshot().items() if model in names]

    def running(self) -> list[dict[str, Any]] | None:
        """The models running on live backends (``/api/ps`` of each, read with its model
        list), one entry per model name in priority order; None when no backend's was read."""
        now = time.monotonic()
        lists = [
            b.running
            for backend in sorted(self.backends, key=lambda b: b.priority)
            if (b := self._backends.get(backend.url)) is not None and b.until > now
        ]
        read = [entries for entries in lists if entries is not None]
        if not read:
            return None
        found: dict[str, dict[str, Any]] = {}
        for entries in read:
            for entry in entries:
                name = entry.get("model") or entry.get("name")
                if isinstance(name, str):
                    found.setdefault(canonical(name), entry)
        return list(found.values())

    # -- polling -------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_FETCH_TIMEOUT_S)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def refresh(self) -> None:
        await asyncio.gather(
            *(self._refresh_one(b) for b in self.backends),
            *(self._resolve(b) for b in self.backends),
        )
        MODELS_DISCOVERED.set(len(self.models()))
        live = self.snapshot()
        for backend in self.backends:
            BACKEND_LIVE.labels(backend.name).set(1 if backend.url in live else 0)
        self._publish()

    def _publish(self) -> None:
        state = (sorted(self.snapshot().items()), sorted(self.addresses.items()))
        if state != self._published:
            self._published = state
            self.generation += 1
            self._changed.set()
            self._changed = asyncio.Event()

    async def _resolve(self, backend: Backend) -> None:
        """The backend's addresses (an IP is its own); a failed lookup keeps the last ones."""
        try:
            ipaddress.ip_address(backend.host)
            self.addresses[backend.name] = (backend.host,)
            return
        except ValueError:
            pass
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                backend.host, backend.port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            _log.warning("backend address not resolved", backend=backend.name, error=str(exc))
            return
        ips = tuple(sorted({str(info[4][0]) for info in found}))
        if ips:
            self.addresses[backend.name] = ips

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # never let the poller die
                _log.warning("discovery round failed", error=str(exc))

    async def _get(self, backend: Backend, path: str) -> Any:
        """The backend's JSON at ``path``, asked with its credentials; raises on any failure."""
        async with self.session().get(
            f"{backend.url}{path}", headers=backend.upstream_headers()
        ) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def _refresh_one(self, backend: Backend) -> None:
        url = backend.url
        try:
            entries = _parse_tags(await self._get(backend, "/api/tags"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            _log.warning("backend model list not refreshed", backend=backend.name, error=str(exc))
            await self._adopt_shared(url)
            return
        running = await self._running(backend)
        self._store(BackendModels(url, entries, time.monotonic() + self.ttl_s, running))
        try:
            await self.redis.set(
                redis_key(url),
                json.dumps({"models": list(entries.values())}),
                px=max(1, int(self.ttl_s * 1000)),
            )
        except REDIS_ERRORS as exc:
            _log.warning("model list not shared", error=str(exc))

    async def _running(self, backend: Backend) -> tuple[dict[str, Any], ...] | None:
        try:
            payload = await self._get(backend, "/api/ps")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            _log.warning("backend /api/ps not read", backend=backend.name, error=str(exc))
            return None
        models = payload.get("models") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            return None
        return tuple(m for m in models if isinstance(m, dict))

    async def _adopt_shared(self, url: str) -> None:
        """Another replica may still reach the backend: take its list while it is fresh."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(redis_key(url))
                pipe.pttl(redis_key(url))
                text, pttl = await pipe.execute()
            if text is None or pttl is None or pttl <= 0:
                return
            entries = _parse_tags(json.loads(text))
        except _SHARED_LIST_ERRORS:
            return
        current = self._backends.get(url)
        until = time.monotonic() + pttl / 1000
        if current is None or current.until < until:
            self._store(BackendModels(url, entries, until))
