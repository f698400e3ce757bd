"""YAML paths as the guard prints them: ``static_resources.listeners[0].filter_chains[0]``; a
map key with dots in it (a filter name) in brackets: ``typed_per_filter_config[nz.strip]``."""

from __future__ import annotations


def join(base: str, *parts: str | int) -> str:
    path = base
    for part in parts:
        if isinstance(part, int) or "." in part or "/" in part:
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path
