"""Window resolution, outside any store: which window of its counter a claim falls in at `now`,
given the counter's anchor and top-ups, and where a reshaped counter's spend carries to.

Pure functions over the rules (`governance.windows`): a store reads and writes the anchors,
this module says what they mean."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from governance import windows
from governance.store import iso
from governance.types import Claim
from governance.units import Unit, unit_of

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def parse_reset(text: str) -> windows.Reset | None:
    return windows.parse_reset(text)


# Windows last computed, by (reset, calendar, zone, anchor): a window holds for every request
# until it ends, so most requests skip the calendar and zone arithmetic.
_WINDOW_CACHE: dict[tuple[str, bool, str, str | None], tuple[datetime | None, datetime | None, str, str]] = {}


def _window(
    claim: Claim, reset: windows.Reset | None, anchor_text: str | None, now: datetime
) -> tuple[str, str]:
    """`(window_start key, resets)` of the claim's window at `now`."""
    found = _bounds(claim, reset, anchor_text, now)
    return found[2], found[3]


def _bounds(
    claim: Claim, reset: windows.Reset | None, anchor_text: str | None, now: datetime
) -> tuple[datetime | None, datetime | None, str, str]:
    key = (claim.reset, claim.calendar, claim.timezone, anchor_text)
    hit = _WINDOW_CACHE.get(key)
    if hit is not None and (hit[0] is None or hit[0] <= now) and (hit[1] is None or now < hit[1]):
        return hit
    anchor = _parse_iso(anchor_text) if anchor_text else None
    start, end = windows.window_at(reset, now, anchor=anchor, calendar=claim.calendar, tz=claim.timezone)
    result = (start, end, windows.window_key(start), iso(end) if end is not None else "never")
    if len(_WINDOW_CACHE) > 4096:
        _WINDOW_CACHE.clear()
    _WINDOW_CACHE[key] = result
    return result


@functools.lru_cache(maxsize=4096)
def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


def in_window(claim: Claim, window_start: str, resets: str, limit: int) -> Claim:
    """`claim` in its resolved window. Built directly: `dataclasses.replace` costs several times
    more, and this runs for every claim of every request."""
    return Claim(
        claim.scope,
        window_start,
        resets,
        limit,
        claim.amount,
        claim.rule,
        claim.unit if claim.unit.__class__ is Unit else unit_of(claim.unit),
        claim.reset,
        claim.calendar,
        claim.timezone,
    )


def shape(claim: Claim) -> str:
    """A counter's window shape as the rules define it: reset, alignment and zone."""
    return f"{claim.reset}|{'calendar' if claim.calendar else 'rolling'}|{claim.timezone}"


def first_anchor(claim: Claim, now: datetime) -> str | None:
    """The anchor a counter gets at first use: now for a rolling window, none otherwise."""
    return iso(now) if parse_reset(claim.reset) is not None and not claim.calendar else None


def window_key(claim: Claim, anchor_text: str | None, now: datetime) -> tuple[str, str]:
    """`(window_start key, resets)` of the claim's window at `now`: ("", "never") for a counter
    that never resets and was never reset."""
    reset = parse_reset(claim.reset)
    if reset is None and anchor_text is None:
        return "", "never"
    return _window(claim, reset, anchor_text, now)


def window_bounds(
    claim: Claim, anchor_text: str | None, now: datetime
) -> tuple[str, str, datetime | None, datetime | None]:
    """`(window_start key, resets, since, until)` of the claim's window at `now`: every instant in
    `[since, until)` falls in that same window (None: unbounded on that side; a window that
    starts at its anchor also holds every instant before it, see `windows.window_at`)."""
    reset = parse_reset(claim.reset)
    if reset is None and anchor_text is None:
        return "", "never", None, None
    start, end, key, resets = _bounds(claim, reset, anchor_text, now)
    if start is not None and anchor_text is not None and start == _parse_iso(anchor_text):
        start = None
    return key, resets, start, end


def resolve(claim: Claim, anchor_text: str | None, topup_micro: int, now: datetime) -> Claim:
    """`claim` with its current window and its effective limit (the rules' plus top-ups)."""
    reset = parse_reset(claim.reset)  # window_key inlined: this runs for every claim of every request
    window_start, resets = (
        ("", "never") if reset is None and anchor_text is None else _window(claim, reset, anchor_text, now)
    )
    return in_window(claim, window_start, resets, claim.limit + topup_micro)


def reshaped(claim: Claim, was: str, anchor_text: str | None, now: datetime) -> tuple[str, str, str | None]:
    """The rules changed a counter's window from shape `was` to `claim`'s: `(old window key, new
    window key, the counter's anchor)`. The spend of the old key's window carries into the new."""
    old_reset, kind, old_tz = was.split("|")
    old = replace(claim, reset=old_reset, calendar=kind == "calendar", timezone=old_tz)
    old_key = window_key(old, anchor_text, now)[0]
    if anchor_text is None:
        anchor_text = first_anchor(claim, now)
    new_key = window_key(claim, anchor_text, now)[0]
    logger.warning(
        "counter %s changed its window from %s to %s: its spend since %s carries into the new window",
        claim.scope,
        was,
        shape(claim),
        old_key or "the start",
    )
    return old_key, new_key, anchor_text


#: A counter's row as a store read it: `(anchor, top-ups in micro-USD, shape)`.
Known = dict[str, tuple[str | None, int, str | None]]


def resolve_known(
    claims: Sequence[Claim],
    known: Known,
    now: datetime,
    *,
    first_use: Callable[[str, str | None, str], None],
    change_shape: Callable[[Claim, str, str | None], str | None],
    set_shape: Callable[[str, str, str | None], None],
) -> list[Claim]:
    """Each claim with its current window and effective limit, from its counter's row in
    `known` (updated as it goes). A store supplies the writes, inside its transaction:
    `first_use(counter, anchor, shape)` for a counter never seen (a rolling window's first use
    anchors it), `change_shape(claim, was, anchor) -> anchor` to carry a reshaped counter's spend
    into its new window, and `set_shape(counter, shape, anchor)`."""
    out = []
    for claim in claims:
        now_shape = shape(claim)
        row = known.get(claim.scope)
        if row is None:
            anchor_text, topup = first_anchor(claim, now), 0
            first_use(claim.scope, anchor_text, now_shape)
            known[claim.scope] = (anchor_text, topup, now_shape)
        else:
            anchor_text, topup, was = row
            if was != now_shape:
                if was is not None:
                    anchor_text = change_shape(claim, was, anchor_text)
                elif anchor_text is None:
                    anchor_text = first_anchor(claim, now)
                set_shape(claim.scope, now_shape, anchor_text)
                known[claim.scope] = (anchor_text, topup, now_shape)
        out.append(resolve(claim, anchor_text, topup, now))
    return out
