"""A new, empty database for a test that must start from nothing (migrations, an installed
wheel), on the stack's PostgreSQL server."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg


def fresh_database(beside: str, prefix: str = "t") -> str:
    """Create an empty database on the server of the database URL ``beside``; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    base = beside.rsplit("/", 1)[0]

    async def create() -> None:
        conn = await asyncpg.connect(f"{base}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"{base}/{name}"
