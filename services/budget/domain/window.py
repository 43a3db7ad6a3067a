"""Budget windows: which calendar period spend counts in, and when it resets. No I/O.

A window starts and resets at local midnight in the budget's IANA time zone (days; weeks
from Monday; months from the 1st), so a day is 23 or 25 hours long across a DST change.
All times are Unix seconds; the caller passes `now`, so tests pin any instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from interlock.errors import InvalidArgumentError


class Window(Enum):
    NONE = "none"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """The window `now` falls in: [start, reset_at). Both 0 for Window.NONE."""

    start: float
    reset_at: float


NO_WINDOW = WindowSpan(0.0, 0.0)
"""The span of a budget without a window."""


def check_time_zone(field: str, name: str) -> str:
    """An IANA zone name (`Europe/Berlin`); empty means UTC."""
    if not name:
        return "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(f"unknown IANA time zone {name[:64]!r}", field=field) from None
    return name


def _local_midnight(day: date, zone: ZoneInfo) -> float:
    # Where midnight itself is skipped by a DST jump, zoneinfo (fold=0) maps it to the
    # first real instant after the gap, which is where that day starts.
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def _first_day(window: Window, today: date) -> date:
    if window is Window.DAY:
        return today
    if window is Window.WEEK:
        return today - timedelta(days=today.weekday())
    return today.replace(day=1)


def _next_first_day(window: Window, first: date) -> date:
    if window is Window.DAY:
        return first + timedelta(days=1)
    if window is Window.WEEK:
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def window_span(window: Window, time_zone: str, now: float) -> WindowSpan:
    """The calendar window containing `now` in `time_zone`."""
    if window is Window.NONE:
        return NO_WINDOW
    zone = ZoneInfo(time_zone or "UTC")
    today = datetime.fromtimestamp(now, UTC).astimezone(zone).date()
    first = _first_day(window, today)
    return WindowSpan(_local_midnight(first, zone), _local_midnight(_next_first_day(window, first), zone))
