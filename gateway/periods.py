"""Budget periods in UTC: where each one starts and when it resets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Period(StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"
    TOTAL = "total"


def start(period: Period, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    if period is Period.DAILY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.MONTHLY:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return datetime(1970, 1, 1, tzinfo=UTC)


def reset_at(period: Period, now: datetime) -> datetime | None:
    """When the period's counter starts again from zero; None for the total budget."""
    begin = start(period, now)
    if period is Period.DAILY:
        return begin + timedelta(days=1)
    if period is Period.MONTHLY:
        return (
            begin.replace(year=begin.year + 1, month=1)
            if begin.month == 12
            else (begin.replace(month=begin.month + 1))
        )
    return None


def seconds_until_reset(period: Period, now: datetime) -> int | None:
    end = reset_at(period, now)
    if end is None:
        return None
    return max(1, int((end - now.astimezone(UTC)).total_seconds() + 0.999))


def bucket(period: Period, now: datetime) -> str:
    """A stable label for the period that contains ``now`` (used in counter keys and rows)."""
    begin = start(period, now)
    if period is Period.DAILY:
        return begin.strftime("%Y-%m-%d")
    if period is Period.MONTHLY:
        return begin.strftime("%Y-%m")
    return "total"
