"""Budget periods (gateway/periods.py) against hand-written UTC dates: a daily budget starts
again at 00:00 UTC, a monthly one at 00:00 UTC on the first of the next month, the total never.
Every expected value below is written out by hand, not computed."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import periods
from gateway.periods import Period

DAY = 86_400


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "start", "reset"),
    [
        (utc(2026, 3, 15, 13, 45, 12, 500_000), utc(2026, 3, 15), utc(2026, 3, 16)),
        (utc(2026, 3, 15), utc(2026, 3, 15), utc(2026, 3, 16)),  # the period's first instant
        (utc(2026, 3, 15, 23, 59, 59, 999_999), utc(2026, 3, 15), utc(2026, 3, 16)),
        (utc(2024, 2, 28, 12), utc(2024, 2, 28), utc(2024, 2, 29)),  # leap year
        (utc(2024, 2, 29, 23, 59, 59), utc(2024, 2, 29), utc(2024, 3, 1)),
        (utc(2023, 2, 28, 23, 59, 59), utc(2023, 2, 28), utc(2023, 3, 1)),  # not a leap year
        (utc(2026, 4, 30, 8), utc(2026, 4, 30), utc(2026, 5, 1)),
        (utc(2025, 12, 31, 23, 59, 59), utc(2025, 12, 31), utc(2026, 1, 1)),  # new year
    ],
)
def test_a_day_runs_from_midnight_to_midnight_utc(
    now: datetime, start: datetime, reset: datetime
) -> None:
    assert periods.start(Period.DAILY, now) == start
    assert periods.reset_at(Period.DAILY, now) == reset


@pytest.mark.parametrize(
    ("now", "start", "reset"),
    [
        (utc(2026, 1, 1), utc(2026, 1, 1), utc(2026, 2, 1)),  # the period's first instant
        (utc(2026, 1, 15, 9, 30), utc(2026, 1, 1), utc(2026, 2, 1)),
        (utc(2026, 1, 31, 23, 59, 59), utc(2026, 1, 1), utc(2026, 2, 1)),  # a 31-day month
        (utc(2024, 2, 1), utc(2024, 2, 1), utc(2024, 3, 1)),  # February of a leap year
        (utc(2024, 2, 29, 23, 59, 59), utc(2024, 2, 1), utc(2024, 3, 1)),
        (utc(2023, 2, 28, 23, 59, 59), utc(2023, 2, 1), utc(2023, 3, 1)),  # not a leap year
        (utc(2100, 2, 28, 12), utc(2100, 2, 1), utc(2100, 3, 1)),  # 2100: no February 29
        (utc(2026, 4, 30, 23, 59, 59), utc(2026, 4, 1), utc(2026, 5, 1)),  # a 30-day month
        (utc(2026, 11, 30, 12), utc(2026, 11, 1), utc(2026, 12, 1)),
        (utc(2025, 12, 1), utc(2025, 12, 1), utc(2026, 1, 1)),  # December → January
        (utc(2025, 12, 31, 23, 59, 59, 999_999), utc(2025, 12, 1), utc(2026, 1, 1)),
    ],
)
def test_a_month_runs_from_the_first_to_the_first_of_the_next_utc(
    now: datetime, start: datetime, reset: datetime
) -> None:
    assert periods.start(Period.MONTHLY, now) == start
    assert periods.reset_at(Period.MONTHLY, now) == reset


@pytest.mark.parametrize(
    ("period", "now", "seconds"),
    [
        (Period.DAILY, utc(2026, 3, 15), DAY),  # at midnight: a whole day to go
        (Period.DAILY, utc(2026, 3, 15, 12), 43_200),
        (Period.DAILY, utc(2026, 3, 15, 12, 0, 0, 250_000), 43_200),  # rounded up
        (Period.DAILY, utc(2026, 3, 15, 23, 59, 59), 1),  # one second before the reset
        (Period.DAILY, utc(2026, 3, 15, 23, 59, 59, 999_999), 1),  # never 0
        (Period.MONTHLY, utc(2026, 1, 1), 31 * DAY),
        (Period.MONTHLY, utc(2024, 2, 1), 29 * DAY),
        (Period.MONTHLY, utc(2023, 2, 1), 28 * DAY),
        (Period.MONTHLY, utc(2026, 4, 1), 30 * DAY),
        (Period.MONTHLY, utc(2025, 12, 1), 31 * DAY),
        (Period.MONTHLY, utc(2024, 2, 28, 12), DAY + 43_200),  # Feb 29 still to come
        (Period.MONTHLY, utc(2023, 2, 28, 12), 43_200),
        (Period.MONTHLY, utc(2026, 1, 31, 23, 59, 59), 1),  # one second before the reset
        (Period.MONTHLY, utc(2025, 12, 31, 23, 59, 59), 1),
        (Period.MONTHLY, utc(2025, 12, 31, 23, 59, 59, 1), 1),
    ],
)
def test_seconds_until_the_reset(period: Period, now: datetime, seconds: int) -> None:
    assert periods.seconds_until_reset(period, now) == seconds


@pytest.mark.parametrize(
    ("period", "now", "label"),
    [
        (Period.DAILY, utc(2024, 2, 29, 23, 59, 59), "2024-02-29"),
        (Period.DAILY, utc(2024, 3, 1), "2024-03-01"),
        (Period.DAILY, utc(2025, 12, 31, 23, 59, 59), "2025-12-31"),
        (Period.DAILY, utc(2026, 1, 1), "2026-01-01"),
        (Period.MONTHLY, utc(2025, 12, 31, 23, 59, 59), "2025-12"),
        (Period.MONTHLY, utc(2026, 1, 1), "2026-01"),
        (Period.MONTHLY, utc(2023, 2, 28, 23, 59, 59), "2023-02"),
        (Period.MONTHLY, utc(2023, 3, 1), "2023-03"),
        (Period.TOTAL, utc(2026, 1, 1), "total"),
    ],
)
def test_each_period_has_its_own_bucket_label(period: Period, now: datetime, label: str) -> None:
    assert periods.bucket(period, now) == label


def test_the_total_budget_never_resets() -> None:
    now = utc(2026, 6, 15, 10, 30)
    assert periods.start(Period.TOTAL, now) == utc(1970, 1, 1)
    assert periods.reset_at(Period.TOTAL, now) is None
    assert periods.seconds_until_reset(Period.TOTAL, now) is None


def test_periods_are_utc_whatever_the_offset_of_now() -> None:
    # 00:30 on New Year's Day in UTC+1 is still 23:30 on December 31 in UTC.
    now = datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert periods.start(Period.DAILY, now) == utc(2025, 12, 31)
    assert periods.start(Period.MONTHLY, now) == utc(2025, 12, 1)
    assert periods.reset_at(Period.MONTHLY, now) == utc(2026, 1, 1)
    assert periods.seconds_until_reset(Period.MONTHLY, now) == 1_800
    assert periods.bucket(Period.MONTHLY, now) == "2025-12"
    # 23:30 on January 31 in UTC-5 is already February 1 in UTC.
    now = datetime(2026, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert periods.start(Period.MONTHLY, now) == utc(2026, 2, 1)
    assert periods.reset_at(Period.MONTHLY, now) == utc(2026, 3, 1)
    assert periods.bucket(Period.DAILY, now) == "2026-02-01"


@pytest.fixture(params=["JST-9", "EST+5"])
def server_time_zone(request: pytest.FixtureRequest) -> Iterator[None]:
    """The process's local time zone set to UTC+9 or UTC-5 (POSIX TZ strings), then put back."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.usefixtures("server_time_zone")
def test_periods_are_utc_whatever_the_time_zone_of_the_server() -> None:
    # 20:00 UTC on March 15 is already March 16 in Tokyo; 02:00 UTC still March 14 in New York.
    for now in (utc(2026, 3, 15, 20), utc(2026, 3, 15, 2)):
        assert periods.start(Period.DAILY, now) == utc(2026, 3, 15)
        assert periods.reset_at(Period.DAILY, now) == utc(2026, 3, 16)
        assert periods.bucket(Period.DAILY, now) == "2026-03-15"
    assert periods.seconds_until_reset(Period.DAILY, utc(2026, 3, 15, 20)) == 4 * 3_600
    for now in (utc(2026, 1, 31, 20), utc(2026, 1, 1, 2)):
        assert periods.start(Period.MONTHLY, now) == utc(2026, 1, 1)
        assert periods.reset_at(Period.MONTHLY, now) == utc(2026, 2, 1)
        assert periods.bucket(Period.MONTHLY, now) == "2026-01"


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 12, 31)),
)
def test_a_month_ends_at_00_00_utc_on_the_first_of_the_next(naive: datetime) -> None:
    now = naive.replace(tzinfo=UTC)
    start = periods.start(Period.MONTHLY, now)
    reset = periods.reset_at(Period.MONTHLY, now)
    assert reset is not None
    assert start <= now < reset
    assert (start.day, start.hour, start.minute, start.second, start.microsecond) == (1, 0, 0, 0, 0)
    assert (reset.day, reset.hour, reset.minute, reset.second, reset.microsecond) == (1, 0, 0, 0, 0)
    # The next month: one later, or January of the next year after December.
    assert (reset.year * 12 + reset.month) - (start.year * 12 + start.month) == 1
    assert periods.bucket(Period.MONTHLY, reset) != periods.bucket(Period.MONTHLY, now)
    assert periods.bucket(Period.MONTHLY, reset - timedelta(microseconds=1)) == (
        periods.bucket(Period.MONTHLY, now)
    )
