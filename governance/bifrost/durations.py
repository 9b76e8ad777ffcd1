"""Bifrost reset durations -> spendfuse resets. `_parse_duration` reads a Bifrost duration (Go
durations, `Nd` `Nw` `NM` `NY`, daily/weekly/monthly/yearly) into a `_Duration`, or says why it is
not one; `_reset` gives the spendfuse reset (and calendar flag) for exactly the same window,
rolling or calendar-aligned, or says why there is none. Pure functions on values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from governance import windows

# Bifrost's whole-unit aliases (ParseDuration lower-cases them).
_ALIASES = {"daily": "1d", "weekly": "1w", "monthly": "1M", "yearly": "1Y"}
_DAY = Decimal(86400)
# Bifrost's own lengths of its long units in rolling windows: M is 30 days, Y 365.
_LONG_UNITS = {"d": _DAY, "w": 7 * _DAY, "M": 30 * _DAY, "Y": 365 * _DAY}
_GO_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "μs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NAMES = {"d": "day", "w": "week", "M": "month", "Y": "year"}
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
# spendfuse units for a rolling window, longest first; M and Y are calendar lengths there.
_OUT_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def _go_seconds(text: str) -> Decimal | None:
    """Seconds in a Go duration string (`1h30m`, `90s`, `1.5h`), as time.ParseDuration reads it;
    None if it is not one. A bare `0` is zero."""
    if text == "0":
        return Decimal(0)
    body = text[1:] if text[:1] in "+-" else text
    pos, total = 0, Decimal(0)
    while pos < len(body):
        m = _GO_PART.match(body, pos)
        if m is None:
            return None
        total += Decimal(m[1] if not m[1].endswith(".") else m[1] + "0") * _GO_UNITS[m[2]]
        pos = m.end()
    if not body:
        return None
    return -total if text.startswith("-") else total


@dataclass(frozen=True)
class _Duration:
    """A Bifrost reset duration: its rolling length, and the calendar unit it aligns to."""

    raw: str
    seconds: Decimal
    alignable: str | None  # d/w/M/Y when Bifrost can align it to the calendar
    count: Decimal | None  # the count before an alignable unit


def _parse_duration(raw: object) -> _Duration | str:
    """A Bifrost duration, or why it is not one."""
    if not isinstance(raw, str) or not raw:
        return f"{raw!r} is not a duration"
    text = _ALIASES.get(raw.lower(), raw)
    unit = text[-1]
    if unit in _LONG_UNITS:
        number = text[:-1]
        # Bifrost parses the count as a Go duration in hours; anything but a plain number there is
        # an accident of that implementation, not a duration anyone means.
        if not _NUMBER.fullmatch(number):
            return f"{raw!r} is not a duration Bifrost reads as meant (a count then d, w, M or Y)"
        count = Decimal(number if not number.endswith(".") else number + "0")
        seconds = count * _LONG_UNITS[unit]
        alignable: str | None = unit
    else:
        go = _go_seconds(text)
        if go is None:
            return f"{raw!r} is not a Bifrost duration (30s, 5m, 1h, 1d, 1w, 1M, 1Y)"
        seconds, alignable, count = go, None, None
    if seconds <= 0:
        return f"{raw!r} is not a positive duration"
    return _Duration(raw, seconds, alignable, count)


def _reset(d: _Duration, calendar: bool) -> tuple[str, bool] | str:
    """The spendfuse reset (and calendar flag) equal to Bifrost's window, or why there is none."""
    if calendar and d.alignable is not None:
        if d.count != 1:
            # GetCalendarPeriodStart ignores the count: a calendar "2M" resets every month.
            return (
                f"{d.raw!r} is calendar-aligned, and Bifrost aligns it to every single "
                f"{_UNIT_NAMES[d.alignable]} whatever the count; write 1{d.alignable} to say what it does"
            )
        return f"1{d.alignable}", True
    seconds = d.seconds
    if seconds != seconds.to_integral_value():
        return f"{d.raw!r} is not a whole number of seconds"
    whole = int(seconds)
    for unit, length in _OUT_UNITS:
        if whole % length == 0:
            text = f"{whole // length}{unit}"
            try:
                windows.parse_reset(text)
            except ValueError as e:
                return str(e)
            return text, False
    raise AssertionError("unreachable: every whole second count divides by 1")
