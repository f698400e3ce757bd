"""Rows still buffered at shutdown (Postgres unreachable) go to a local file and come back at
the next start, so a restart of accounting during a Postgres outage loses nothing.

One JSON-lines file per table in ``NZ_ACCOUNTING_SPOOL_DIR`` (off when empty; in Kubernetes an
``emptyDir`` survives container restarts). Rows are idempotent on their request id, so a row
that was written after all and comes back from the spool is skipped by Postgres.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def save(directory: Path, table: str, rows: list[Any]) -> Path | None:
    """Write ``rows`` (dataclasses) for ``table``; atomically, next to earlier spools."""
    if not rows:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{table}.jsonl"
    tmp = directory / f".{table}.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as out:
        if path.exists():
            out.write(path.read_text(encoding="utf-8"))
        for row in rows:
            values = {k: _encode(v) for k, v in dataclasses.asdict(row).items()}
            out.write(json.dumps(values, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    return path


def load(directory: Path, table: str, cls: type[T]) -> list[T]:
    """The spooled rows of ``table`` (the file is removed: the caller now holds them)."""
    path = directory / f"{table}.jsonl"
    if not path.exists():
        return []
    assert dataclasses.is_dataclass(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    stamps = {name for name, f in fields.items() if "datetime" in str(f.type)}
    rows: list[T] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        values = {
            k: datetime.fromisoformat(v) if k in stamps and isinstance(v, str) else v
            for k, v in raw.items()
            if k in fields
        }
        rows.append(cls(**values))
    path.unlink()
    return rows
