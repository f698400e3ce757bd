"""The guard's output: one line per violation, or a JSON list for CI."""

from __future__ import annotations

import json
from collections.abc import Sequence

from gateway.envoyguard.violations import Violation


def as_text(violations: Sequence[Violation], notes: Sequence[str]) -> str:
    lines = [f"note: {note}" for note in notes]
    lines += [v.line() for v in violations]
    return "\n".join(lines)


def as_json(violations: Sequence[Violation]) -> str:
    return json.dumps([v.as_dict() for v in violations], indent=2)
