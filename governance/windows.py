"""Reset windows of budgets and rate limits: which window a moment falls in, and when it ends.

A limit resets `never`, or every `<count><unit>`: `30s`, `5m`, `1h`, `1d`, `1w`, `1M`, `1Y`
(Bifrost's spellings; M and Y are calendar months and years). A window is either

* rolling: consecutive windows of the reset's length starting at an `anchor`, the moment the
  ledger recorded when the limit was first used or last reset by an operator; or
* calendar: aligned to the wall clock of an IANA time zone (the local hour, midnight, Monday,
  the 1st of the month, January 1st), and started early by an operator reset inside it.

Every function is pure: time is passed in, never read from the clock, and every datetime must be
timezone-aware. Windows come back as `(start, end)` in UTC with `end` exclusive; `None` for a
start means the window has no beginning (a `never` limit that was never reset), and `None` for
an end means it never ends.

Local wall times are turned into instants with `zoneinfo`: a wall time that does not exist (a
spring-forward gap) becomes the first instant after the gap, and an ambiguous one (fall back)
its first occurrence. This module imports nothing from `governance`, so anything may use it.
"""

from __future__ import annotations

import calendar as _calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, available_timezones

__all__ = ["Reset", "parse_reset", "retry_after_seconds", "window_at", "window_key"]

#: Seconds in one unit; None for the calendar units, whose length varies.
_UNIT_SECONDS: dict[str, int | None] = {
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "M": None,
    "Y": None,
}

#: The longest reset accepted. Anything longer is almost certainly a typo, and it keeps every
#: window boundary far inside `datetime`'s range (year 9999) instead of overflowing mid-request.
MAX_RESET_YEARS = 100
_MAX_FIXED_SECONDS = MAX_RESET_YEARS * 366 * 86400
_MAX_MONTHS = MAX_RESET_YEARS * 12

_DAY = timedelta(days=1)
_MICROSECOND = timedelta(microseconds=1)
# Calendar counts of days (and sub-day lengths longer than a day) are floored from this local
# wall time, weeks from the first Monday after it, months and years from January 1970.
_EPOCH_WALL = datetime(1970, 1, 1)
_EPOCH_MONDAY_WALL = datetime(1970, 1, 5)

_FORMS = (
    "expected 'never' or a positive whole count followed by a unit: 30s, 5m, 1h, 1d, 1w, 1M, 1Y "
    "(s seconds, m minutes, h hours, d days, w weeks, M calendar months, Y calendar years)"
)


@dataclass(frozen=True)
class Reset:
    """How often a limit resets: `count` units, `unit` one of s, m, h, d, w, M, Y.

    Constructing one validates it (ValueError): a positive int count, a known unit, and at most
    `MAX_RESET_YEARS` long, so a `Reset` that exists can always be used by `window_at`."""

    count: int
    unit: str  # one of "s", "m", "h", "d", "w", "M", "Y"

    def __post_init__(self) -> None:
        if self.unit not in _UNIT_SECONDS:
            raise ValueError(f"unknown reset unit {self.unit!r}; {_FORMS}")
        # bool is an int subclass; Reset(True, "h") is a bug at the caller, not one hour.
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise ValueError(f"reset count must be a positive whole number, got {self.count!r}")
        too_long = (
            self.count > _MAX_MONTHS
            if self.unit == "M"
            else self.count > MAX_RESET_YEARS
            if self.unit == "Y"
            else self.count * (_UNIT_SECONDS[self.unit] or 0) > _MAX_FIXED_SECONDS
        )
        if too_long:
            raise ValueError(
                f"reset {self} is longer than {MAX_RESET_YEARS} years; use 'never' for a limit "
                "that does not reset"
            )

    def __str__(self) -> str:
        """The canonical spelling, `5m`; `parse_reset(str(r)) == r`."""
        return f"{self.count}{self.unit}"

    def seconds(self) -> int | None:
        """The fixed length in seconds for s/m/h/d/w (a day is always 86400 s, whatever DST does);
        None for M and Y, whose length depends on the calendar."""
        unit = _UNIT_SECONDS[self.unit]
        return None if unit is None else self.count * unit


_RESET_RE = re.compile(r"([1-9][0-9]*)([smhdwMY])")
# Loose shape of what someone meant, only used to explain a rejection.
_LOOSE_RE = re.compile(r"\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
# Case slips that are unambiguous (m and M are both valid, so they are never "corrected").
_CASE_SLIPS = {"S": "s", "H": "h", "D": "d", "W": "w", "y": "Y"}
_UNIT_WORDS = {
    **dict.fromkeys(["sec", "secs", "second", "seconds"], "s"),
    **dict.fromkeys(["min", "mins", "minute", "minutes"], "m"),
    **dict.fromkeys(["hr", "hrs", "hour", "hours"], "h"),
    **dict.fromkeys(["day", "days"], "d"),
    **dict.fromkeys(["wk", "wks", "week", "weeks"], "w"),
    **dict.fromkeys(["mo", "mos", "mon", "month", "months"], "M"),
    **dict.fromkeys(["yr", "yrs", "year", "years"], "Y"),
}


def parse_reset(text: str) -> Reset | None:
    """`never` -> None; `<count><unit>` -> `Reset(count, unit)`, e.g. `5m` -> `Reset(5, "m")`.

    Only the canonical spelling is accepted: lower-case `never`, a count of 1 or more without a
    sign, leading zeros or spaces, and exactly one of the units s m h d w M Y. Anything else
    raises ValueError whose message lists the accepted forms and, where the intent is clear,
    suggests the canonical spelling ("1D" -> "1d", "5 minutes" -> "5m", "1mo" -> "1M")."""
    if text == "never":
        return None
    if isinstance(text, str) and (m := _RESET_RE.fullmatch(text)):
        return Reset(int(m[1]), m[2])
    raise ValueError(f"invalid reset {text!r} ({_why_invalid(text)}); {_FORMS}")


def _why_invalid(text: object) -> str:
    """What is wrong with a reset that `parse_reset` rejected, with a suggestion if one is clear."""
    if not isinstance(text, str):
        return f"it must be text, not {type(text).__name__}"
    if not text.strip():
        return "it is empty"
    if text.strip().lower() == "never":
        return "did you mean 'never'?"
    m = _LOOSE_RE.fullmatch(text)
    if m is None:
        return "it is not a count followed by a unit"
    sign, number, word = m.groups()
    if sign == "-" or float(number) == 0:
        return "the count must be 1 or more"
    if "." in number:
        return "the count must be a whole number (use a smaller unit)"
    unit = word if word in _UNIT_SECONDS else _CASE_SLIPS.get(word) or _UNIT_WORDS.get(word.lower())
    if unit is None:
        return f"unknown unit {word!r}" if word else "the unit is missing"
    return f"did you mean '{int(number)}{unit}'?"


def window_at(
    reset: Reset | None,
    now: datetime,
    *,
    anchor: datetime | None = None,
    calendar: bool = False,
    tz: str = "UTC",
) -> tuple[datetime | None, datetime | None]:
    """`(start, end)` of the window containing `now`, both timezone-aware UTC datetimes; `end` is
    exclusive.

    * `reset is None` (never): `(anchor, None)`, the start being the operator's last reset, or
      None when there was none.
    * rolling (`calendar=False`): windows `[anchor + k*d, anchor + (k+1)*d)` for the largest
      k >= 0 with start <= now; `anchor` is required. For s/m/h/d/w, d is a fixed length. For M
      and Y the k-th boundary is `anchor` plus k*count months (years) in `tz` wall-clock time,
      always computed from the anchor (a Jan 31 anchor gives Feb 28/29, Mar 31, Apr 30, ...), the
      day clamped to the month's length.
    * calendar (`calendar=True`): windows aligned to the wall clock in `tz`: s/m/h floored to
      multiples of the length within the local day (the day's last window ends at midnight; a
      length over a day is floored from 1970-01-01 local instead); d local midnight, counted
      from 1970-01-01; w Monday 00:00, counted from Monday 1970-01-05; M the 1st 00:00, counted
      from January 1970; Y January 1st, counted from 1970. An `anchor` inside the window (an
      operator reset) starts it early: start = anchor. An anchor before it is ignored.

    `now` before `anchor` (clock skew between processes) is treated as `now == anchor` in every
    mode, so the window starts at the anchor and may start after `now`: a reset is never undone
    by skew, and spend after it is never counted against the window before it.

    Raises ValueError for a naive `now` or `anchor`, an unknown `tz`, or a rolling window without
    an anchor."""
    _require_aware(now, "now")
    if anchor is not None:
        _require_aware(anchor, "anchor")
        anchor = anchor.astimezone(UTC)
    now = now.astimezone(UTC)
    tzone = zone(tz)  # validated in every mode, so a bad rules file fails whichever limit uses it
    if reset is None:
        return anchor, None
    if calendar:
        return _calendar_window(reset, now, anchor, tzone)
    if anchor is None:
        raise ValueError(
            f"a rolling {reset} window needs an anchor: the time the limit was first used or reset"
        )
    return _rolling_window(reset, max(now, anchor), anchor, tzone)


def retry_after_seconds(end: datetime | None, now: datetime) -> int | None:
    """Whole seconds until `end`, rounded up and at least 1 (a client told 0 would retry at once
    into the same refusal); None for a window that never ends. Both must be timezone-aware."""
    _require_aware(now, "now")
    if end is None:
        return None
    _require_aware(end, "end")
    micros = (end - now) // _MICROSECOND
    return max(1, -(-micros // 1_000_000))


def window_key(start: datetime | None) -> str:
    """The ledger's text key of a window start: "" for None (a window with no beginning), else a
    fixed-width UTC timestamp `YYYY-MM-DDTHH:MM:SS.ffffffZ`, exactly like `governance.ledger.iso`,
    so text order is time order. `start` must be timezone-aware."""
    if start is None:
        return ""
    _require_aware(start, "start")
    # The same expression as ledger.iso; a test pins the two together.
    return start.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")


def zone(tz: str) -> tzinfo:
    """The time zone named `tz`, or ValueError naming it (rules validate their zones with it)."""
    if tz == "UTC":
        # The default needs no tz database, so a machine without one still runs UTC limits.
        return UTC
    try:
        return ZoneInfo(tz)
    # ZoneInfo raises ZoneInfoNotFoundError (a KeyError) for unknown names, ValueError for
    # malformed ones, and OSError for some paths ("America" is a directory).
    except (KeyError, ValueError, OSError, TypeError) as e:
        hint = "" if available_timezones() else " (no tz database found: install the tzdata package)"
        raise ValueError(
            f"unknown time zone {tz!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'{hint}"
        ) from e


def _rolling_window(reset: Reset, now: datetime, anchor: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """The rolling window containing `now`, which is never before `anchor` here."""
    seconds = reset.seconds()
    if seconds is not None:
        # timedelta // timedelta and timedelta * int are exact integer microsecond arithmetic, so
        # the k-th window of a years-old anchor lands exactly where it should, without a loop.
        length = timedelta(seconds=seconds)
        start = anchor + length * ((now - anchor) // length)
        return start, start + length
    step = reset.count * (12 if reset.unit == "Y" else 1)
    anchor_wall = anchor.astimezone(zone).replace(tzinfo=None)
    now_wall = now.astimezone(zone).replace(tzinfo=None)
    elapsed_months = (now_wall.year - anchor_wall.year) * 12 + now_wall.month - anchor_wall.month
    k = max(elapsed_months // step, 0)
    # The month count ignores day and time of day, so k can be one too many (or, for wall-clock
    # oddities around DST, too few); boundaries are increasing, so nudge until they bracket now.
    while k > 0 and _month_boundary(anchor, anchor_wall, k * step, zone) > now:
        k -= 1
    while _month_boundary(anchor, anchor_wall, (k + 1) * step, zone) <= now:
        k += 1
    start = _month_boundary(anchor, anchor_wall, k * step, zone)
    return start, _month_boundary(anchor, anchor_wall, (k + 1) * step, zone)


def _month_boundary(anchor: datetime, anchor_wall: datetime, months: int, zone: tzinfo) -> datetime:
    """`anchor` plus `months` calendar months in wall-clock time, the day clamped to the month.

    Always computed from the anchor itself, never from the previous boundary, so a day clamped
    in a short month (Jan 31 -> Feb 28) comes back in the next (Mar 31)."""
    if months == 0:
        # The anchor exactly, even when its wall time is the second of an ambiguous pair.
        return anchor
    year, month0 = divmod(anchor_wall.year * 12 + anchor_wall.month - 1 + months, 12)
    day = min(anchor_wall.day, _calendar.monthrange(year, month0 + 1)[1])
    return _resolve(anchor_wall.replace(year=year, month=month0 + 1, day=day), zone)


def _calendar_window(
    reset: Reset, now: datetime, anchor: datetime | None, zone: tzinfo
) -> tuple[datetime, datetime]:
    """The wall-clock-aligned window containing `now` (or `anchor`, if later), started at
    `anchor` when the anchor is inside it."""
    at = now if anchor is None else max(now, anchor)
    wall = _bucketing_wall(at, zone)
    seconds = reset.seconds()
    if reset.unit in ("M", "Y"):
        step = reset.count * (12 if reset.unit == "Y" else 1)
        months = (wall.year - 1970) * 12 + wall.month - 1
        first = months - months % step
        start_wall = datetime(1970 + first // 12, first % 12 + 1, 1)
        end_wall = datetime(1970 + (first + step) // 12, (first + step) % 12 + 1, 1)
    elif seconds is not None and seconds < 86400:
        # Floor within the local day, so windows restart at every midnight; a length that does
        # not divide the day leaves a shorter last window that ends at midnight.
        length = timedelta(seconds=seconds)
        midnight = datetime(wall.year, wall.month, wall.day)
        start_wall = midnight + length * ((wall - midnight) // length)
        end_wall = min(start_wall + length, midnight + _DAY)
    else:
        # d and w, and s/m/h lengths of a day or more: whole multiples of the length counted in
        # wall-clock time from a fixed local epoch, so 2d windows do not depend on when asked.
        assert seconds is not None
        length = timedelta(seconds=seconds)
        epoch = _EPOCH_MONDAY_WALL if reset.unit == "w" else _EPOCH_WALL
        start_wall = epoch + length * ((wall - epoch) // length)
        end_wall = start_wall + length
    start, end = _resolve(start_wall, zone), _resolve(end_wall, zone)
    if anchor is not None and anchor >= start:
        # An operator reset inside the window starts a new window now, ending at the boundary.
        start = anchor
    return start, end


def _bucketing_wall(at: datetime, zone: tzinfo) -> datetime:
    """The naive local wall time whose calendar window contains the instant `at`.

    Usually `at`'s own wall time. Boundaries resolve ambiguous wall times to their first
    occurrence, so windows are a partition of time in which the second pass through a repeated
    hour belongs to the window that was current just before the clocks went back (otherwise a
    window [01:00, 01:30) resolved to the first pass would not contain 01:15 of the second)."""
    local = at.astimezone(zone)
    if not local.fold:
        return local.replace(tzinfo=None)
    first_pass = local.replace(fold=0).astimezone(UTC)
    transition = _transition(first_pass, at, zone)
    return (transition - _MICROSECOND).astimezone(zone).replace(tzinfo=None)


def _resolve(wall: datetime, zone: tzinfo) -> datetime:
    """The UTC instant of the naive local `wall` time: its first occurrence when ambiguous, and
    the first instant after the gap when it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=0 applies the offset from before the transition and fold=1 the one after
    # (PEP 495), so the transition lies between the fold=1 reading and the fold=0 reading.
    return _transition(wall.replace(tzinfo=zone, fold=1).astimezone(UTC), first, zone)


def _transition(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The first instant in (`before`, `after`] whose UTC offset differs from `before`'s.

    zoneinfo does not expose its transitions, so this bisects to the microsecond; it only runs
    for wall times in a gap or a repeated hour, a few hours wide at most (~35 steps)."""
    offset = before.astimezone(zone).utcoffset()
    low, high = 0, (after - before) // _MICROSECOND  # offset at low is `offset`, at high is not
    while high - low > 1:
        mid = (low + high) // 2
        if (before + mid * _MICROSECOND).astimezone(zone).utcoffset() == offset:
            low = mid
        else:
            high = mid
    return before + high * _MICROSECOND
