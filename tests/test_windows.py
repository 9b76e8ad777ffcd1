"""Reset windows: parsing, rolling and calendar windows, DST, and the ledger key.

Every expected datetime is a literal worked out by hand (UTC unless a zone is named), not
recomputed with the arithmetic under test, except where a test states the arithmetic itself.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone

import pytest

from governance.ledger import iso
from governance.windows import Reset, parse_reset, retry_after_seconds, window_at, window_key

US = timedelta(microseconds=1)
FORMS = "30s, 5m, 1h, 1d, 1w, 1M, 1Y"


def u(*args: int) -> datetime:
    """A UTC datetime."""
    return datetime(*args, tzinfo=UTC)


def r(text: str) -> Reset | None:
    return parse_reset(text)


def test_tz_database_is_available():
    assert zoneinfo.available_timezones()


# --- parse_reset -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "unit", "seconds"),
    [
        ("30s", 30, "s", 30),
        ("90s", 90, "s", 90),
        ("1s", 1, "s", 1),
        ("5m", 5, "m", 300),
        ("1h", 1, "h", 3600),
        ("24h", 24, "h", 86400),
        ("1d", 1, "d", 86400),
        ("1w", 1, "w", 604800),
        ("2w", 2, "w", 1209600),
        ("1M", 1, "M", None),
        ("3M", 3, "M", None),
        ("1200M", 1200, "M", None),
        ("1Y", 1, "Y", None),
        ("100Y", 100, "Y", None),
        ("5228w", 5228, "w", 5228 * 604800),
    ],
)
def test_parse_reset_accepts(text: str, count: int, unit: str, seconds: int | None):
    reset = parse_reset(text)
    assert reset == Reset(count, unit)
    assert str(reset) == text
    assert reset.seconds() == seconds


def test_parse_reset_never():
    assert parse_reset("never") is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "(it is empty)"),
        ("   ", "(it is empty)"),
        ("5 minutes", "did you mean '5m'?"),
        ("1mo", "did you mean '1M'?"),
        ("2 months", "did you mean '2M'?"),
        ("1D", "did you mean '1d'?"),
        ("1H", "did you mean '1h'?"),
        ("1S", "did you mean '1s'?"),
        ("1W", "did you mean '1w'?"),
        ("1y", "did you mean '1Y'?"),
        ("3 Hours", "did you mean '3h'?"),
        ("05m", "did you mean '5m'?"),
        ("+5m", "did you mean '5m'?"),
        (" 5m", "did you mean '5m'?"),
        ("5m ", "did you mean '5m'?"),
        ("Never", "did you mean 'never'?"),
        ("NEVER", "did you mean 'never'?"),
        ("0m", "the count must be 1 or more"),
        ("0.0h", "the count must be 1 or more"),
        ("-1h", "the count must be 1 or more"),
        ("1.5h", "the count must be a whole number"),
        ("5", "the unit is missing"),
        ("1ms", "unknown unit 'ms'"),
        ("1fortnight", "unknown unit 'fortnight'"),
        ("m", "it is not a count followed by a unit"),
        ("daily", "it is not a count followed by a unit"),
        ("1h30m", "it is not a count followed by a unit"),
    ],
)
def test_parse_reset_rejects_with_the_accepted_forms(text: str, fragment: str):
    with pytest.raises(ValueError) as e:
        parse_reset(text)
    message = str(e.value)
    assert message.startswith(f"invalid reset {text!r}")
    assert fragment in message
    assert "'never'" in message and FORMS in message and "M calendar months" in message


@pytest.mark.parametrize("text", ["101Y", "1201M", "5229w", "36601d", "878401h", "3162240001s"])
def test_parse_reset_rejects_resets_over_a_century(text: str):
    with pytest.raises(ValueError, match="longer than 100 years; use 'never'"):
        parse_reset(text)


def test_parse_reset_rejects_non_text():
    with pytest.raises(ValueError, match="it must be text, not int"):
        parse_reset(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("count", "unit", "match"),
    [
        (0, "m", "positive whole number"),
        (-1, "h", "positive whole number"),
        (True, "h", "positive whole number"),
        (1.5, "h", "positive whole number"),
        (1, "x", "unknown reset unit 'x'"),
        (1, "D", "unknown reset unit 'D'"),
    ],
)
def test_reset_validates_when_built_directly(count: object, unit: str, match: str):
    with pytest.raises(ValueError, match=match):
        Reset(count, unit)  # type: ignore[arg-type]


# --- never -------------------------------------------------------------------------------------


@pytest.mark.parametrize("calendar", [False, True])
@pytest.mark.parametrize(
    ("anchor", "start"),
    [
        (None, None),
        (u(2026, 11, 1, 8, 30), u(2026, 11, 1, 8, 30)),
        # An anchor in another offset comes back in UTC.
        (datetime(2026, 11, 1, 10, 30, tzinfo=timezone(timedelta(hours=2))), u(2026, 11, 1, 8, 30)),
        # A reset after `now` (skew) is still the start: it is the last reset.
        (u(2026, 11, 23), u(2026, 11, 23)),
    ],
)
def test_never(anchor: datetime | None, start: datetime | None, calendar: bool):
    window = window_at(None, u(2026, 11, 22, 12), anchor=anchor, calendar=calendar, tz="Europe/Berlin")
    assert window == (start, None)
    assert window[0] is None or window[0].tzinfo is UTC


# --- rolling, fixed lengths --------------------------------------------------------------------

A = u(2026, 1, 1, 0, 0, 7, 500000)  # an anchor off every round boundary


@pytest.mark.parametrize(
    ("reset", "now", "start", "end"),
    [
        # now == anchor: the first window.
        ("30s", A, A, u(2026, 1, 1, 0, 0, 37, 500000)),
        # Exactly on a boundary: the new window starts there.
        (
            "30s",
            u(2026, 1, 1, 0, 1, 7, 500000),
            u(2026, 1, 1, 0, 1, 7, 500000),
            u(2026, 1, 1, 0, 1, 37, 500000),
        ),
        # One microsecond before it: still the previous window.
        (
            "30s",
            u(2026, 1, 1, 0, 1, 7, 499999),
            u(2026, 1, 1, 0, 0, 37, 500000),
            u(2026, 1, 1, 0, 1, 7, 500000),
        ),
        (
            "90s",
            u(2026, 1, 1, 0, 3, 7, 500000),
            u(2026, 1, 1, 0, 3, 7, 500000),
            u(2026, 1, 1, 0, 4, 37, 500000),
        ),
        (
            "5m",
            u(2026, 1, 1, 0, 10, 7, 500000),
            u(2026, 1, 1, 0, 10, 7, 500000),
            u(2026, 1, 1, 0, 15, 7, 500000),
        ),
        (
            "5m",
            u(2026, 1, 1, 0, 10, 7, 499999),
            u(2026, 1, 1, 0, 5, 7, 500000),
            u(2026, 1, 1, 0, 10, 7, 500000),
        ),
        (
            "1h",
            u(2026, 1, 1, 5, 0, 7, 500000),
            u(2026, 1, 1, 5, 0, 7, 500000),
            u(2026, 1, 1, 6, 0, 7, 500000),
        ),
        (
            "1h",
            u(2026, 1, 1, 5, 0, 7, 499999),
            u(2026, 1, 1, 4, 0, 7, 500000),
            u(2026, 1, 1, 5, 0, 7, 500000),
        ),
        (
            "1d",
            u(2026, 3, 1, 0, 0, 7, 500000),
            u(2026, 3, 1, 0, 0, 7, 500000),
            u(2026, 3, 2, 0, 0, 7, 500000),
        ),
        (
            "1d",
            u(2026, 3, 1, 0, 0, 7, 499999),
            u(2026, 2, 28, 0, 0, 7, 500000),
            u(2026, 3, 1, 0, 0, 7, 500000),
        ),
        # 2026-01-01 is a Thursday; weekly windows roll from the anchor, not from Monday.
        (
            "1w",
            u(2026, 1, 15, 0, 0, 7, 500000),
            u(2026, 1, 15, 0, 0, 7, 500000),
            u(2026, 1, 22, 0, 0, 7, 500000),
        ),
        (
            "1w",
            u(2026, 1, 15, 0, 0, 7, 499999),
            u(2026, 1, 8, 0, 0, 7, 500000),
            u(2026, 1, 15, 0, 0, 7, 500000),
        ),
        ("2w", u(2026, 1, 28), u(2026, 1, 15, 0, 0, 7, 500000), u(2026, 1, 29, 0, 0, 7, 500000)),
        # now before the anchor (clock skew): the anchor's first window.
        ("1h", u(2025, 12, 31, 23, 59), A, u(2026, 1, 1, 1, 0, 7, 500000)),
        ("1d", u(2025, 6, 1), A, u(2026, 1, 2, 0, 0, 7, 500000)),
    ],
)
def test_rolling_fixed(reset: str, now: datetime, start: datetime, end: datetime):
    assert window_at(r(reset), now, anchor=A) == (start, end)


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        # 2016-03-01 to 2026-03-01 is 3652 days, a whole number of 30 s windows.
        (u(2026, 3, 1, 12, 0, 0, 123456), u(2026, 3, 1, 12, 0, 0, 123456), u(2026, 3, 1, 12, 0, 30, 123456)),
        (u(2026, 3, 1, 12, 0, 0, 123455), u(2026, 3, 1, 11, 59, 30, 123456), u(2026, 3, 1, 12, 0, 0, 123456)),
        (u(2026, 3, 1, 12, 0, 17), u(2026, 3, 1, 12, 0, 0, 123456), u(2026, 3, 1, 12, 0, 30, 123456)),
        (
            u(2036, 2, 29, 23, 59, 59, 999999),
            u(2036, 2, 29, 23, 59, 30, 123456),
            u(2036, 3, 1, 0, 0, 0, 123456),
        ),
    ],
)
def test_rolling_anchor_ten_years_back(now: datetime, start: datetime, end: datetime):
    anchor = u(2016, 3, 1, 12, 0, 0, 123456)
    assert window_at(r("30s"), now, anchor=anchor) == (start, end)


@pytest.mark.parametrize(
    ("reset", "seconds"), [("30s", 30), ("7m", 420), ("1h", 3600), ("1d", 86400), ("1w", 604800)]
)
def test_rolling_does_not_drift(reset: str, seconds: int):
    # The k-th window starts exactly at anchor + k*d, for k across a century of windows (~10^8
    # of 30 s): the arithmetic is in integer microseconds, with no float and no accumulated steps.
    anchor = u(2019, 7, 3, 4, 5, 6, 789012)
    length = timedelta(seconds=seconds)
    last = timedelta(days=36500) // length
    for k in [*range(0, last, last // 997), last]:
        boundary = anchor + k * length
        assert window_at(r(reset), boundary + US, anchor=anchor) == (boundary, boundary + length)
        assert window_at(r(reset), boundary, anchor=anchor) == (boundary, boundary + length)
        if k:
            assert window_at(r(reset), boundary - US, anchor=anchor) == (boundary - length, boundary)


def test_rolling_day_is_86400_seconds_across_dst():
    # Anchored at 12:00 EST the day before New York springs forward: the next window starts
    # 86400 s later, at 13:00 EDT, not at 12:00 local. The zone plays no part.
    anchor = u(2026, 3, 7, 17)
    assert window_at(r("1d"), u(2026, 3, 8, 17, 30), anchor=anchor, tz="America/New_York") == (
        u(2026, 3, 8, 17),
        u(2026, 3, 9, 17),
    )


# --- rolling, months and years -----------------------------------------------------------------

JAN31_2027 = [
    u(2027, 1, 31, 9, 30),
    u(2027, 2, 28, 9, 30),
    u(2027, 3, 31, 9, 30),
    u(2027, 4, 30, 9, 30),
    u(2027, 5, 31, 9, 30),
    u(2027, 6, 30, 9, 30),
    u(2027, 7, 31, 9, 30),
    u(2027, 8, 31, 9, 30),
    u(2027, 9, 30, 9, 30),
    u(2027, 10, 31, 9, 30),
    u(2027, 11, 30, 9, 30),
    u(2027, 12, 31, 9, 30),
    u(2028, 1, 31, 9, 30),
    u(2028, 2, 29, 9, 30),
    u(2028, 3, 31, 9, 30),
]
JAN31_2028 = [
    u(2028, 1, 31, 9, 30),
    u(2028, 2, 29, 9, 30),
    u(2028, 3, 31, 9, 30),
    u(2028, 4, 30, 9, 30),
    u(2028, 5, 31, 9, 30),
]
FEB29_2028_YEARLY = [
    u(2028, 2, 29, 9, 30),
    u(2029, 2, 28, 9, 30),
    u(2030, 2, 28, 9, 30),
    u(2031, 2, 28, 9, 30),
    u(2032, 2, 29, 9, 30),
    u(2033, 2, 28, 9, 30),
]
NOV30_2026_QUARTERLY = [
    u(2026, 11, 30, 9, 30),
    u(2027, 2, 28, 9, 30),
    u(2027, 5, 30, 9, 30),
    u(2027, 8, 30, 9, 30),
    u(2027, 11, 30, 9, 30),
    u(2028, 2, 29, 9, 30),
]
# 11:00 CET in winter; later boundaries keep 11:00 Berlin wall time, so 09:00 UTC in summer.
JAN31_2027_BERLIN = [
    u(2027, 1, 31, 10),
    u(2027, 2, 28, 10),
    u(2027, 3, 31, 9),
    u(2027, 4, 30, 9),
]


def _pairs(reset: str, tz: str, boundaries: list[datetime]) -> list[tuple[str, str, list[datetime], int]]:
    return [(reset, tz, boundaries, k) for k in range(len(boundaries) - 1)]


@pytest.mark.parametrize(
    ("reset", "tz", "boundaries", "k"),
    _pairs("1M", "UTC", JAN31_2027)
    + _pairs("1M", "UTC", JAN31_2028)
    + _pairs("1Y", "UTC", FEB29_2028_YEARLY)
    + _pairs("3M", "UTC", NOV30_2026_QUARTERLY)
    + _pairs("1M", "Europe/Berlin", JAN31_2027_BERLIN),
)
def test_rolling_calendar_units_clamp_from_the_anchor(
    reset: str, tz: str, boundaries: list[datetime], k: int
):
    anchor, start, end = boundaries[0], boundaries[k], boundaries[k + 1]
    for now in (start, start + US, end - US):
        assert window_at(r(reset), now, anchor=anchor, tz=tz) == (start, end)


@pytest.mark.parametrize(
    ("reset", "anchor", "now", "tz", "start", "end"),
    [
        # now before the anchor: the anchor's first window.
        ("1M", u(2028, 1, 31, 9, 30), u(2028, 1, 30), "UTC", u(2028, 1, 31, 9, 30), u(2028, 2, 29, 9, 30)),
        ("1Y", u(2028, 2, 29, 9, 30), u(2020, 1, 1), "UTC", u(2028, 2, 29, 9, 30), u(2029, 2, 28, 9, 30)),
        # Ten years of months on, still the 31st where the month has one, the 28th in February.
        ("1M", u(2016, 1, 31, 9, 30), u(2026, 3, 15), "UTC", u(2026, 2, 28, 9, 30), u(2026, 3, 31, 9, 30)),
        (
            "1M",
            u(2016, 1, 31, 9, 30),
            u(2026, 3, 31, 9, 30),
            "UTC",
            u(2026, 3, 31, 9, 30),
            u(2026, 4, 30, 9, 30),
        ),
        (
            "1M",
            u(2016, 1, 31, 9, 30),
            u(2026, 3, 31, 9, 29),
            "UTC",
            u(2026, 2, 28, 9, 30),
            u(2026, 3, 31, 9, 30),
        ),
        # Within a month the day-of-month decides: the 15th is before the 31st's boundary.
        ("2M", u(2026, 1, 31), u(2026, 3, 15), "UTC", u(2026, 1, 31), u(2026, 3, 31)),
        ("2Y", u(2024, 2, 29), u(2028, 2, 28), "UTC", u(2026, 2, 28), u(2028, 2, 29)),
        # Across the Berlin summer: 11:00 local, the summer boundaries an hour earlier in UTC.
        (
            "1M",
            u(2027, 1, 31, 10),
            u(2027, 10, 31, 9, 59),
            "Europe/Berlin",
            u(2027, 9, 30, 9),
            u(2027, 10, 31, 10),
        ),
        # A boundary in New York's spring-forward gap (02:30 on 2026-03-08 does not exist)
        # becomes the first instant after it, 03:00 EDT; the next month is 02:30 EDT again.
        (
            "1M",
            u(2026, 2, 8, 7, 30),
            u(2026, 3, 8, 7, 0),
            "America/New_York",
            u(2026, 3, 8, 7),
            u(2026, 4, 8, 6, 30),
        ),
        (
            "1M",
            u(2026, 2, 8, 7, 30),
            u(2026, 3, 8, 6, 59),
            "America/New_York",
            u(2026, 2, 8, 7, 30),
            u(2026, 3, 8, 7),
        ),
        # 01:30 EDT on the fall-back day is ambiguous: its first occurrence (05:30 UTC).
        (
            "1M",
            u(2026, 10, 1, 5, 30),
            u(2026, 11, 1, 6),
            "America/New_York",
            u(2026, 11, 1, 5, 30),
            u(2026, 12, 1, 6, 30),
        ),
    ],
)
def test_rolling_calendar_units(
    reset: str, anchor: datetime, now: datetime, tz: str, start: datetime, end: datetime
):
    assert window_at(r(reset), now, anchor=anchor, tz=tz) == (start, end)


def test_rolling_needs_an_anchor():
    with pytest.raises(ValueError, match="rolling 5m window needs an anchor"):
        window_at(r("5m"), u(2026, 1, 1))
    with pytest.raises(ValueError, match="rolling 1M window needs an anchor"):
        window_at(r("1M"), u(2026, 1, 1))


# --- calendar ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reset", "tz", "now", "start", "end"),
    [
        # Month ends.
        ("1M", "UTC", u(2027, 1, 31, 23, 59, 59, 999999), u(2027, 1, 1), u(2027, 2, 1)),
        ("1M", "UTC", u(2027, 2, 1), u(2027, 2, 1), u(2027, 3, 1)),
        ("1M", "UTC", u(2027, 2, 28, 12), u(2027, 2, 1), u(2027, 3, 1)),
        ("1M", "UTC", u(2028, 2, 29, 12), u(2028, 2, 1), u(2028, 3, 1)),
        ("1M", "UTC", u(2028, 2, 29, 23, 59, 59, 999999), u(2028, 2, 1), u(2028, 3, 1)),
        ("1M", "UTC", u(2028, 12, 31, 23, 59, 59, 999999), u(2028, 12, 1), u(2029, 1, 1)),
        ("1Y", "UTC", u(2028, 12, 31, 23, 59, 59, 999999), u(2028, 1, 1), u(2029, 1, 1)),
        ("1Y", "UTC", u(2029, 1, 1), u(2029, 1, 1), u(2030, 1, 1)),
        # 2026-11-22 is a Sunday: its week began on Monday the 16th.
        ("1w", "UTC", u(2026, 11, 22, 23, 59, 59, 999999), u(2026, 11, 16), u(2026, 11, 23)),
        ("1w", "UTC", u(2026, 11, 23), u(2026, 11, 23), u(2026, 11, 30)),
        ("1d", "UTC", u(2026, 11, 22, 12), u(2026, 11, 22), u(2026, 11, 23)),
        ("1d", "UTC", u(2026, 11, 22), u(2026, 11, 22), u(2026, 11, 23)),
        ("1h", "UTC", u(2026, 11, 22, 12, 59, 59, 999999), u(2026, 11, 22, 12), u(2026, 11, 22, 13)),
        ("5m", "UTC", u(2026, 11, 22, 12, 7, 30), u(2026, 11, 22, 12, 5), u(2026, 11, 22, 12, 10)),
        ("5m", "UTC", u(2026, 11, 22, 12, 10), u(2026, 11, 22, 12, 10), u(2026, 11, 22, 12, 15)),
        (
            "30s",
            "UTC",
            u(2026, 11, 22, 12, 7, 45, 500000),
            u(2026, 11, 22, 12, 7, 30),
            u(2026, 11, 22, 12, 8),
        ),
        ("90s", "UTC", u(2026, 11, 22, 0, 2), u(2026, 11, 22, 0, 1, 30), u(2026, 11, 22, 0, 3)),
        # 7 minutes do not divide a day: floored from midnight, the last window (23:55) is cut
        # short at the next midnight, and the next day starts afresh at 00:00.
        ("7m", "UTC", u(2026, 11, 22, 0, 15), u(2026, 11, 22, 0, 14), u(2026, 11, 22, 0, 21)),
        ("7m", "UTC", u(2026, 11, 22, 23, 58), u(2026, 11, 22, 23, 55), u(2026, 11, 23)),
        ("7m", "UTC", u(2026, 11, 23, 0, 3), u(2026, 11, 23), u(2026, 11, 23, 0, 7)),
        ("5h", "UTC", u(2026, 11, 22, 22), u(2026, 11, 22, 20), u(2026, 11, 23)),
        # Multi-counts from the 1970 epochs: 2026-11-22 is day 20779 (odd) since 1970-01-01,
        # week 2967 (odd) since Monday 1970-01-05, month 682 (= 1 mod 3) since January 1970,
        # and 2027 is year 57 (odd) since 1970.
        ("2d", "UTC", u(2026, 11, 22, 12), u(2026, 11, 21), u(2026, 11, 23)),
        ("2d", "UTC", u(2026, 11, 23), u(2026, 11, 23), u(2026, 11, 25)),
        ("2w", "UTC", u(2026, 11, 22, 12), u(2026, 11, 9), u(2026, 11, 23)),
        ("3M", "UTC", u(2026, 11, 22, 12), u(2026, 10, 1), u(2027, 1, 1)),
        ("3M", "UTC", u(2027, 1, 1), u(2027, 1, 1), u(2027, 4, 1)),
        ("2Y", "UTC", u(2027, 6, 1), u(2026, 1, 1), u(2028, 1, 1)),
        # An s/m/h length over a day is floored from 1970-01-01 local like days are:
        # 25 h windows, one of which starts at 2026-11-22 04:00.
        ("25h", "UTC", u(2026, 11, 22, 12), u(2026, 11, 22, 4), u(2026, 11, 23, 5)),
        ("48h", "UTC", u(2026, 11, 22, 12), u(2026, 11, 21), u(2026, 11, 23)),
        # Europe/Berlin: a day is local midnight to midnight; 2026-03-29 springs forward (23 h)
        # and 2026-10-25 falls back (25 h).
        ("1d", "Europe/Berlin", u(2026, 3, 28, 12), u(2026, 3, 27, 23), u(2026, 3, 28, 23)),
        ("1d", "Europe/Berlin", u(2026, 3, 29, 12), u(2026, 3, 28, 23), u(2026, 3, 29, 22)),
        ("1d", "Europe/Berlin", u(2026, 3, 28, 23), u(2026, 3, 28, 23), u(2026, 3, 29, 22)),
        ("1d", "Europe/Berlin", u(2026, 3, 29, 21, 59, 59, 999999), u(2026, 3, 28, 23), u(2026, 3, 29, 22)),
        ("1d", "Europe/Berlin", u(2026, 10, 25, 12), u(2026, 10, 24, 22), u(2026, 10, 25, 23)),
        (
            "1d",
            "Europe/Berlin",
            u(2026, 10, 25, 22, 59, 59, 999999),
            u(2026, 10, 24, 22),
            u(2026, 10, 25, 23),
        ),
        ("1w", "Europe/Berlin", u(2026, 3, 29, 12), u(2026, 3, 22, 23), u(2026, 3, 29, 22)),
        ("1M", "Europe/Berlin", u(2026, 3, 15), u(2026, 2, 28, 23), u(2026, 3, 31, 22)),
        ("1M", "Europe/Berlin", u(2026, 3, 31, 22), u(2026, 3, 31, 22), u(2026, 4, 30, 22)),
        ("1Y", "Europe/Berlin", u(2026, 12, 31, 23), u(2026, 12, 31, 23), u(2027, 12, 31, 23)),
        # America/New_York: 2026-03-08 springs forward at 02:00 (23 h), 2026-11-01 falls back (25 h).
        ("1d", "America/New_York", u(2026, 3, 8, 12), u(2026, 3, 8, 5), u(2026, 3, 9, 4)),
        ("1d", "America/New_York", u(2026, 11, 1, 12), u(2026, 11, 1, 4), u(2026, 11, 2, 5)),
        ("1d", "America/New_York", u(2026, 11, 2, 4, 59), u(2026, 11, 1, 4), u(2026, 11, 2, 5)),
        # 1h over the spring-forward: 01:00 EST, then (02:00 does not exist) 03:00 EDT.
        ("1h", "America/New_York", u(2026, 3, 8, 6, 59), u(2026, 3, 8, 6), u(2026, 3, 8, 7)),
        ("1h", "America/New_York", u(2026, 3, 8, 7), u(2026, 3, 8, 7), u(2026, 3, 8, 8)),
        # 1h over the fall-back: 01:00 is ambiguous, so its window runs from the first 01:00 (EDT)
        # to 02:00 EST and holds both passes through the repeated hour: two hours long.
        ("1h", "America/New_York", u(2026, 11, 1, 4, 59), u(2026, 11, 1, 4), u(2026, 11, 1, 5)),
        ("1h", "America/New_York", u(2026, 11, 1, 5, 30), u(2026, 11, 1, 5), u(2026, 11, 1, 7)),
        ("1h", "America/New_York", u(2026, 11, 1, 6, 30), u(2026, 11, 1, 5), u(2026, 11, 1, 7)),
        ("1h", "America/New_York", u(2026, 11, 1, 7), u(2026, 11, 1, 7), u(2026, 11, 1, 8)),
        # 30m over the fall-back: the second pass (EST) belongs to the window that was current
        # when the clocks went back, 01:30 EDT to 02:00 EST.
        ("30m", "America/New_York", u(2026, 11, 1, 5, 15), u(2026, 11, 1, 5), u(2026, 11, 1, 5, 30)),
        ("30m", "America/New_York", u(2026, 11, 1, 5, 45), u(2026, 11, 1, 5, 30), u(2026, 11, 1, 7)),
        ("30m", "America/New_York", u(2026, 11, 1, 6, 15), u(2026, 11, 1, 5, 30), u(2026, 11, 1, 7)),
        (
            "30m",
            "America/New_York",
            u(2026, 11, 1, 6, 59, 59, 999999),
            u(2026, 11, 1, 5, 30),
            u(2026, 11, 1, 7),
        ),
        ("30m", "America/New_York", u(2026, 11, 1, 7), u(2026, 11, 1, 7), u(2026, 11, 1, 7, 30)),
        # America/Santiago sprang forward at local midnight on 2022-09-11 (00:00 -04 became
        # 01:00 -03): that day starts at the first instant after the gap, 04:00 UTC, and lasts 23 h.
        ("1d", "America/Santiago", u(2022, 9, 11, 12), u(2022, 9, 11, 4), u(2022, 9, 12, 3)),
        ("1d", "America/Santiago", u(2022, 9, 11, 4), u(2022, 9, 11, 4), u(2022, 9, 12, 3)),
        ("1d", "America/Santiago", u(2022, 9, 11, 3, 59, 59, 999999), u(2022, 9, 10, 4), u(2022, 9, 11, 4)),
        ("1h", "America/Santiago", u(2022, 9, 11, 4, 30), u(2022, 9, 11, 4), u(2022, 9, 11, 5)),
        ("1M", "America/Santiago", u(2022, 9, 11, 12), u(2022, 9, 1, 4), u(2022, 10, 1, 3)),
        # ... and fell back at midnight on 2022-04-03 (00:00 -03 became 23:00 -04 on the 2nd):
        # 2022-04-02 lasts 25 h, its 23:00 hour twice, and the 23:00 window holds both passes.
        ("1d", "America/Santiago", u(2022, 4, 3, 3, 30), u(2022, 4, 2, 3), u(2022, 4, 3, 4)),
        ("1d", "America/Santiago", u(2022, 4, 3, 4), u(2022, 4, 3, 4), u(2022, 4, 4, 4)),
        ("1h", "America/Santiago", u(2022, 4, 3, 2, 30), u(2022, 4, 3, 2), u(2022, 4, 3, 4)),
        ("1h", "America/Santiago", u(2022, 4, 3, 3, 30), u(2022, 4, 3, 2), u(2022, 4, 3, 4)),
        # A fixed-offset zone far from UTC: a Kolkata day starts at 18:30 UTC.
        ("1d", "Asia/Kolkata", u(2026, 11, 22, 20), u(2026, 11, 22, 18, 30), u(2026, 11, 23, 18, 30)),
        ("1h", "Asia/Kolkata", u(2026, 11, 22, 20), u(2026, 11, 22, 19, 30), u(2026, 11, 22, 20, 30)),
    ],
)
def test_calendar(reset: str, tz: str, now: datetime, start: datetime, end: datetime):
    window = window_at(r(reset), now, calendar=True, tz=tz)
    assert window == (start, end)
    assert window[0].tzinfo is UTC and window[1].tzinfo is UTC


def test_calendar_accepts_now_in_any_offset():
    now = datetime(2026, 11, 22, 1, 0, tzinfo=timezone(timedelta(hours=9)))  # 2026-11-21 16:00 UTC
    assert window_at(r("1d"), now, calendar=True) == (u(2026, 11, 21), u(2026, 11, 22))


@pytest.mark.parametrize(
    ("tz", "reset", "begin"),
    [
        ("America/New_York", "30m", u(2026, 10, 31)),
        ("America/New_York", "1h", u(2026, 3, 7)),
        ("America/New_York", "7m", u(2026, 10, 31)),
        ("Europe/Berlin", "1d", u(2026, 3, 27)),
        ("America/Santiago", "1h", u(2022, 9, 10)),
        ("America/Santiago", "45m", u(2022, 4, 2)),
        ("Australia/Lord_Howe", "30m", u(2026, 4, 4)),  # a half-hour DST shift
        ("Australia/Lord_Howe", "1h", u(2026, 10, 3)),
    ],
)
def test_calendar_windows_tile_time_across_dst(tz: str, reset: str, begin: datetime):
    # Two days every 61 s: every window contains its `now`, and the windows met along the way
    # follow each other with no gap or overlap.
    previous: tuple[datetime, datetime] | None = None
    for step in range(0, 2 * 86400, 61):
        now = begin + timedelta(seconds=step)
        start, end = window_at(r(reset), now, calendar=True, tz=tz)
        assert start <= now < end
        if previous is not None and previous != (start, end):
            assert start == previous[1]
        previous = (start, end)


@pytest.mark.parametrize(
    ("reset", "anchor", "now", "start", "end"),
    [
        # An operator reset inside the current window starts it there.
        (
            "1d",
            u(2026, 11, 22, 9, 13, 14, 500000),
            u(2026, 11, 22, 15),
            u(2026, 11, 22, 9, 13, 14, 500000),
            u(2026, 11, 23),
        ),
        ("1d", u(2026, 11, 22), u(2026, 11, 22, 15), u(2026, 11, 22), u(2026, 11, 23)),
        ("1M", u(2026, 11, 2), u(2026, 11, 22), u(2026, 11, 2), u(2026, 12, 1)),
        # One before the window's start is history.
        ("1d", u(2026, 11, 21, 23, 59, 59, 999999), u(2026, 11, 22, 15), u(2026, 11, 22), u(2026, 11, 23)),
        ("1M", u(2025, 11, 22), u(2026, 11, 22), u(2026, 11, 1), u(2026, 12, 1)),
        # One after `now` (clock skew between processes) still starts the window.
        ("1d", u(2026, 11, 22, 15, 0, 1), u(2026, 11, 22, 15), u(2026, 11, 22, 15, 0, 1), u(2026, 11, 23)),
        (
            "1d",
            u(2026, 11, 23, 0, 0, 1),
            u(2026, 11, 22, 23, 59, 59),
            u(2026, 11, 23, 0, 0, 1),
            u(2026, 11, 24),
        ),
        # In another offset: converted to UTC.
        (
            "1h",
            datetime(2026, 11, 22, 17, 40, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            u(2026, 11, 22, 12, 30),
            u(2026, 11, 22, 12, 10),
            u(2026, 11, 22, 13),
        ),
    ],
)
def test_calendar_with_an_operator_reset(
    reset: str, anchor: datetime, now: datetime, start: datetime, end: datetime
):
    window = window_at(r(reset), now, anchor=anchor, calendar=True)
    assert window == (start, end)
    assert window[0].tzinfo is UTC


def test_calendar_reset_in_a_zone():
    # Reset at 20:00 Berlin (19:00 UTC) on the fall-back day: ends at the Berlin midnight.
    assert window_at(
        r("1d"), u(2026, 10, 25, 20), anchor=u(2026, 10, 25, 19), calendar=True, tz="Europe/Berlin"
    ) == (
        u(2026, 10, 25, 19),
        u(2026, 10, 25, 23),
    )


def _oracle_boundaries(walls: list[datetime], table: list[tuple[datetime, datetime]]) -> list[datetime]:
    """Window boundaries by brute force, from a definition independent of `window_at`: a
    boundary's instant is the earliest minute whose local wall time has reached the boundary's
    wall time (the first occurrence of an ambiguous time, the end of a gap)."""
    return sorted({next(t for t, wall in table if wall >= w) for w in walls})


@pytest.mark.parametrize(
    ("tz", "day"),
    [
        ("America/New_York", datetime(2026, 3, 8)),
        ("America/New_York", datetime(2026, 11, 1)),
        ("America/Santiago", datetime(2022, 9, 11)),
        ("America/Santiago", datetime(2022, 4, 2)),
        ("Australia/Lord_Howe", datetime(2026, 4, 5)),
        ("Australia/Lord_Howe", datetime(2026, 10, 4)),
        ("Europe/Berlin", datetime(2026, 10, 25)),
    ],
)
@pytest.mark.parametrize(("reset", "minutes"), [("1h", 60), ("30m", 30), ("7m", 7), ("1d", 1440)])
def test_calendar_matches_a_brute_force_oracle(tz: str, day: datetime, reset: str, minutes: int):
    # Every minute of the two local days around a DST change, against the oracle's boundaries.
    zone = zoneinfo.ZoneInfo(tz)
    first = day.replace(tzinfo=zone).astimezone(UTC) - timedelta(days=1)
    minutes_utc = [first + timedelta(minutes=i) for i in range(5 * 1440)]
    table = [(t, t.astimezone(zone).replace(tzinfo=None)) for t in minutes_utc]
    walls = [
        min(midnight + timedelta(minutes=i), midnight + timedelta(days=1))
        for midnight in (day + timedelta(days=d) for d in (-1, 0, 1, 2))
        for i in range(0, 1440 + minutes, minutes)
    ]
    boundaries = _oracle_boundaries(walls, table)
    b = 0
    for now, _ in table[1440 : 3 * 1440]:
        while boundaries[b + 1] <= now:
            b += 1
        assert window_at(r(reset), now, calendar=True, tz=tz) == (boundaries[b], boundaries[b + 1]), now


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tz", ["Mars/Olympus_Mons", "utc", "America", "America/", "", "/etc/localtime", "../UTC"]
)
@pytest.mark.parametrize(("reset", "calendar"), [("1d", True), ("1M", False), ("5m", False), ("never", True)])
def test_unknown_time_zone(tz: str, reset: str, calendar: bool):
    with pytest.raises(ValueError, match=re.escape(f"unknown time zone {tz!r}: use an IANA name")):
        window_at(r(reset), u(2026, 1, 1), anchor=u(2025, 1, 1), calendar=calendar, tz=tz)


@pytest.mark.parametrize(
    ("now", "anchor", "match"),
    [
        (datetime(2026, 1, 1), None, "now must be timezone-aware"),
        (u(2026, 1, 1), datetime(2025, 1, 1), "anchor must be timezone-aware"),
    ],
)
@pytest.mark.parametrize(
    ("reset", "calendar"), [("never", False), ("1d", True), ("1h", False), ("1M", False)]
)
def test_naive_datetimes(now: datetime, anchor: datetime | None, match: str, reset: str, calendar: bool):
    if anchor is None and not calendar and reset != "never":
        anchor = u(2025, 1, 1)  # so the error is the naive `now`, not a missing anchor
    with pytest.raises(ValueError, match=match):
        window_at(r(reset), now, anchor=anchor, calendar=calendar)


# --- retry_after_seconds and window_key --------------------------------------------------------

NOW = u(2026, 11, 22, 12)


@pytest.mark.parametrize(
    ("end", "seconds"),
    [
        (None, None),
        (NOW + timedelta(hours=1), 3600),
        (NOW + timedelta(seconds=1), 1),
        (NOW + timedelta(seconds=1, microseconds=1), 2),
        (NOW + US, 1),
        (NOW + timedelta(seconds=59, microseconds=999999), 60),
        (NOW, 1),  # at least 1: a Retry-After of 0 invites an immediate retry
        (NOW - timedelta(seconds=5), 1),
        (datetime(2026, 11, 22, 14, 0, 30, tzinfo=timezone(timedelta(hours=2))), 30),
    ],
)
def test_retry_after_seconds(end: datetime | None, seconds: int | None):
    assert retry_after_seconds(end, NOW) == seconds


def test_retry_after_seconds_needs_aware_datetimes():
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        retry_after_seconds(NOW, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="end must be timezone-aware"):
        retry_after_seconds(datetime(2027, 1, 1), NOW)


@pytest.mark.parametrize(
    ("start", "key"),
    [
        (None, ""),
        (u(2026, 11, 22), "2026-11-22T00:00:00.000000Z"),
        (u(2026, 11, 22, 9, 13, 14, 500000), "2026-11-22T09:13:14.500000Z"),
        (
            datetime(2026, 11, 22, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2026-11-22T00:00:00.000000Z",
        ),
        (u(1970, 1, 1), "1970-01-01T00:00:00.000000Z"),
    ],
)
def test_window_key(start: datetime | None, key: str):
    assert window_key(start) == key
    if start is not None:
        assert window_key(start) == iso(start)  # the ledger's own format, byte for byte


def test_window_key_text_order_is_time_order():
    starts = [
        u(2026, 11, 22, 9, 13, 14, 500000),
        u(2026, 11, 22),
        u(2026, 11, 22, 9, 13, 14),
        u(2027, 1, 1),
        u(999, 1, 1),
    ]
    assert sorted(starts, key=window_key) == sorted(starts)


def test_window_key_needs_an_aware_datetime():
    with pytest.raises(ValueError, match="start must be timezone-aware"):
        window_key(datetime(2026, 1, 1))
