"""The RLS's request and answer, typed: descriptors with their limits, and what the RLS says
about each (Envoy's ``RateLimitRequest`` and ``DescriptorStatus`` without protobuf). Shared by
the RLS, which decides, and authz, which answers the RLS's refusals on its behalf
(authz/throttle.py)."""

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


@dataclass(frozen=True, slots=True)
class Status:
    over: bool
    limit: Limit | None = None
    remaining: int = 0
    reset_ms: int = 0  # until the window is empty
    retry_ms: int = 0  # over only: until the same hit would fit
    shadow_over: bool = False
    near: bool = False
    quota: str | None = None  # "requests" | "tokens": which OpenAI headers report it
