"""The typed request the RLS decides on, built from Envoy's ``RateLimitRequest`` at the edge."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Unit(StrEnum):
    SECOND = "SECOND"
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"

    @property
    def seconds(self) -> int:
        return _UNIT_SECONDS[self]


# A month and a year are fixed lengths here: the window slides, it has no calendar.
_UNIT_SECONDS = {
    Unit.SECOND: 1,
    Unit.MINUTE: 60,
    Unit.HOUR: 3600,
    Unit.DAY: 86_400,
    Unit.WEEK: 7 * 86_400,
    Unit.MONTH: 30 * 86_400,
    Unit.YEAR: 365 * 86_400,
}


@dataclass(frozen=True, slots=True)
class Limit:
    requests_per_unit: int
    unit: Unit

    @property
    def period_ms(self) -> int:
        return self.unit.seconds * 1000


Entry = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Descriptor:
    entries: tuple[Entry, ...]
    # The per-descriptor override (Envoy copies it from authz's dynamic metadata).
    limit: Limit | None = None
    # The per-descriptor ``hits_addend`` when Envoy set one (an explicit 0 included), else None.
    hits_addend: int | None = None

    def value(self, key: str) -> str | None:
        for k, v in self.entries:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class RateLimitRequest:
    domain: str
    descriptors: tuple[Descriptor, ...]
    hits_addend: int = 0  # request level; 0 (unset) counts as 1
