"""Budget windows reset on calendar boundaries in the budget's time zone, DST included."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from interlock.errors import InvalidArgumentError
from interlock.services.budget.domain.model import check_thresholds, crossed_thresholds
from interlock.services.budget.domain.window import NO_WINDOW, Window, check_time_zone, window_span


def at(text: str, zone: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_day_window_is_local_midnight_to_midnight() -> None:
    span = window_span(Window.DAY, "Asia/Tokyo", at("2024-05-10 23:59:59", "Asia/Tokyo"))
    assert (span.start, span.reset_at) == (at("2024-05-10 00:00", "Asia/Tokyo"), at("2024-05-11 00:00", "Asia/Tokyo"))
    # The first instant of the next day belongs to the next window.
    later = window_span(Window.DAY, "Asia/Tokyo", span.reset_at)
    assert later.start == span.reset_at


def test_day_of_spring_forward_is_23_hours_and_fall_back_is_25() -> None:
    spring = window_span(Window.DAY, "Europe/Berlin", at("2024-03-31 12:00", "Europe/Berlin"))
    assert spring.reset_at - spring.start == 23 * 3600
    fall = window_span(Window.DAY, "Europe/Berlin", at("2024-10-27 12:00", "Europe/Berlin"))
    assert fall.reset_at - fall.start == 25 * 3600
    # 02:30 happens twice on the fall-back night; both instants are in the same day.
    first = datetime(2024, 10, 27, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=0).timestamp()
    second = datetime(2024, 10, 27, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=1).timestamp()
    assert second - first == 3600
    assert window_span(Window.DAY, "Europe/Berlin", first) == window_span(Window.DAY, "Europe/Berlin", second) == fall


def test_day_starts_after_a_dst_gap_at_midnight() -> None:
    # Santiago skipped 2022-09-11 00:00-01:00: that day starts at 01:00 local (04:00 UTC).
    span = window_span(Window.DAY, "America/Santiago", at("2022-09-11 12:00", "America/Santiago"))
    assert span.start == datetime.fromisoformat("2022-09-11 04:00+00:00").timestamp()
    assert span.reset_at - span.start == 23 * 3600


def test_week_starts_monday_and_month_on_the_first_in_the_zone() -> None:
    zone = "America/New_York"
    week = window_span(Window.WEEK, zone, at("2024-11-03 10:00", zone))  # a Sunday, DST ends that day
    assert (week.start, week.reset_at) == (at("2024-10-28 00:00", zone), at("2024-11-04 00:00", zone))
    assert week.reset_at - week.start == 7 * 86400 + 3600
    december = window_span(Window.MONTH, zone, at("2024-12-31 23:30", zone))
    assert (december.start, december.reset_at) == (at("2024-12-01 00:00", zone), at("2025-01-01 00:00", zone))
    # Still 31 December in New York while it is already January in UTC.
    assert window_span(Window.MONTH, "UTC", at("2024-12-31 23:30", zone)).start == at("2025-01-01 00:00", "UTC")


def test_no_window_and_zone_validation() -> None:
    assert window_span(Window.NONE, "UTC", 12345.0) == NO_WINDOW
    assert check_time_zone("time_zone", "") == "UTC"
    with pytest.raises(InvalidArgumentError) as info:
        check_time_zone("time_zone", "Mars/Olympus")
    assert info.value.field == "time_zone"


def test_thresholds_cross_once_with_exact_integer_arithmetic() -> None:
    assert crossed_thresholds(1000, 0, 499, (50, 80, 100)) == []
    assert crossed_thresholds(1000, 499, 500, (50, 80, 100)) == [50]
    assert crossed_thresholds(1000, 500, 1000, (50, 80, 100)) == [80, 100]
    assert crossed_thresholds(3, 0, 1, (33, 34)) == [33]  # 1/3 is 33.3%: reaches 33, not 34
    assert check_thresholds("t", [100, 50, 50]) == (50, 100)
    with pytest.raises(InvalidArgumentError):
        check_thresholds("t", [0])
