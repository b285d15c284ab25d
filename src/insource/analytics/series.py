"""Daily series in the reporting timezone: the typed input of every money report.

Days are cut in one timezone (`[report] timezone`, default UTC), the same for the CLI, JSON and pages.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from insource.errors import ConfigError


def zone(name: str) -> ZoneInfo:
    """An IANA timezone ("UTC", "Europe/Paris"); a clear error for an unknown name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown timezone {name!r}: use an IANA name such as UTC or Europe/Paris") from None


def local_date(ts: float, tz: ZoneInfo) -> dt.date:
    return dt.datetime.fromtimestamp(ts, tz).date()


def day_start(day: dt.date, tz: ZoneInfo) -> float:
    """The unix time at which `day` begins in `tz`."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def days_in_month(day: dt.date) -> int:
    return (next_month(day) - month_start(day)).days


@dataclass(frozen=True, slots=True)
class Daily:
    """One value per day from `start`, every day present (days without records are 0)."""

    start: dt.date
    values: tuple[float, ...]

    @property
    def end(self) -> dt.date:
        """The day after the last one."""
        return self.start + dt.timedelta(days=len(self.values))

    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(len(self.values))]

    def value(self, day: dt.date) -> float:
        i = (day - self.start).days
        return self.values[i] if 0 <= i < len(self.values) else 0.0

    def between(self, first: dt.date, end: dt.date) -> Daily:
        """The days in [first, end), zero-filled where this series has none."""
        n = max(0, (end - first).days)
        return Daily(first, tuple(self.value(first + dt.timedelta(days=i)) for i in range(n)))


def fill_days(amounts: Mapping[dt.date, float], first: dt.date, end: dt.date) -> Daily:
    """The days [first, end), each with its amount (0 when absent); days outside are ignored."""
    n = max(0, (end - first).days)
    return Daily(first, tuple(float(amounts.get(first + dt.timedelta(days=i), 0.0)) for i in range(n)))
