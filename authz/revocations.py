"""Revocation within a second: LISTEN on ``key_revoked`` and evict the key from both caches.

The ``gateway.revocations`` trigger (migrations/0001) marks the key revoked and NOTIFYs with
the key's prefix; the admin API NOTIFYs ``key_changed`` (same payload) when a key's or its
tenant's settings change, and the cached copies are dropped so the next Check reads them.

A dedicated connection listens; when it drops (Postgres restarted, network)
the listener reconnects and then flushes both caches, because a revocation sent during the
gap was never heard. Liveness is checked with a cheap query every ``PING_S``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from authz.keys import KeyStore
from gateway import logs
from gateway.signals import KEY_CHANGED_CHANNEL, KEY_REVOKED_CHANNEL

APPLICATION_NAME = "nz-authz-revocations"  # how operators (and tests) spot the connection
PING_S = 1.0
RETRY_S = 0.25
_log = logs.get("authz.revocations")


class RevocationListener:
    def __init__(self, database_url: str, keys: KeyStore) -> None:
        self._url = database_url
        self._keys = keys
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        prefix = str(payload).strip()
        if not prefix:
            return
        task = asyncio.ensure_future(
            self._keys.evict(prefix, revoked=channel == KEY_REVOKED_CHANNEL)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Listen forever; reconnect (and flush the caches) whenever the connection drops."""
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._url, timeout=2, server_settings={"application_name": APPLICATION_NAME}
                )
                await conn.add_listener(KEY_REVOKED_CHANNEL, self._on_notify)
                await conn.add_listener(KEY_CHANGED_CHANNEL, self._on_notify)
                if not first:
                    await self._keys.flush()
                    _log.info("revocation listener reconnected; key caches flushed")
                first = False
                self.connected.set()
                while True:
                    await asyncio.sleep(PING_S)
                    await conn.fetchval("SELECT 1", timeout=2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: reconnect
                if self.connected.is_set():
                    _log.warning("revocation listener lost its connection", error=str(exc))
                self.connected.clear()
                await asyncio.sleep(RETRY_S)
            finally:
                if conn is not None:
                    conn.terminate()
