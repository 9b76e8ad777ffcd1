"""The SQLite ledger: the only counter of spend, and the only place that opens a transaction.

Every request is a row in `requests`. A request that is let through also holds one row in
`claims` per limit it counts against, and `totals` keeps each scope-window's settled and held
micro-USD (settled spend exactly, with its rest below a micro-dollar: `governance.money`),
changed only by increments inside the same transaction as the claim rows, so it always equals
the sum of its claims (a test reconciles them).

Check-and-reserve runs in one `BEGIN IMMEDIATE` transaction: SQLite lets one writer in at a
time across every process that opens the file, so spend plus holds never pass a limit. A
writer waits for another process's lock for as long as it takes (up to `lock_wait_s`);
waiting is never a reason to refuse. Any other database failure raises `LedgerUnavailable`.

Methods are synchronous and not thread-safe: the addon calls them from one ledger thread.
Every method takes `now`, so tests choose the time.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlite_utils import Database, Migrations

from governance import money, windows
from governance.errors import LedgerUnavailable
from governance.types import Claim, Usage, claim_tokens

migrations = Migrations("spendfuse")
logger = logging.getLogger(__name__)

# SQLite checkpoints the WAL inside whichever commit pushes it past `wal_autocheckpoint` pages,
# which puts the checkpoint's copy and fsync on a request's path. The ledger thread instead calls
# `checkpoint_if_due` when it has nothing queued (a request is at the upstream for seconds), and
# SQLite's own checkpoint stays as a backstop for a ledger that is never idle.
IDLE_CHECKPOINT_COMMITS = 100
BACKSTOP_CHECKPOINT_PAGES = 10_000
PAGE_CACHE_KIB = 65_536


@migrations()
def m001_initial(db: Database) -> None:
    db["requests"].create(
        {
            "id": str,  # the request id (mitmproxy flow id): settlement is idempotent on it
            "created_at": str,
            "settled_at": str,
            "principal": str,
            "provider": str,
            "api": str,
            "model": str,
            "stream": int,
            "est_input_tokens": int,
            "max_output_tokens": int,
            "input_tokens": int,
            "output_tokens": int,
            "cache_read_tokens": int,
            "cache_write_tokens": int,
            "reserved_micro": int,
            "cost_micro": int,
            "state": str,  # held | settled | released | expired | refused
            "decision": str,  # allowed | refused | dry_run
            "rule": str,
            "reason": str,
            "outcome": str,  # how the flow ended: usage | no_usage | upstream_error | ...
            "price_source": str,
        },
        pk="id",
        not_null={"created_at", "principal", "state", "decision", "reserved_micro"},
        defaults={"reserved_micro": 0},
    )
    db["requests"].create_index(["created_at"])
    db["requests"].create_index(["state", "created_at"])
    db["claims"].create(
        {"request_id": str, "scope": str, "window_start": str, "amount_micro": int, "state": str},
        pk=("request_id", "scope", "window_start"),
        not_null={"amount_micro", "state"},
        foreign_keys=[("request_id", "requests", "id")],
    )
    db["totals"].create(
        {"scope": str, "window_start": str, "settled_micro": int, "held_micro": int},
        pk=("scope", "window_start"),
        not_null={"settled_micro", "held_micro"},
        defaults={"settled_micro": 0, "held_micro": 0},
    )


@migrations()
def m002_output_caps(db: Database) -> None:
    # What the client asked for as its output cap, and what spendfuse wrote into the request
    # instead (output-cap injection), so a clamped request can always be told from its original.
    db["requests"].add_column("requested_output_tokens", int)
    db["requests"].add_column("injected_output_tokens", int)


@migrations()
def m003_contexts(db: Database) -> None:
    # The size of context the provider keeps on its side (a Responses answer, a conversation),
    # as the usage of the answer that ended it showed: a follow-up that names it is billed
    # that much input on top of its own.
    db["contexts"].create(
        {"id": str, "tokens": int, "updated_at": str}, pk="id", not_null={"tokens", "updated_at"}
    )


@migrations()
def m004_governance(db: Database) -> None:
    # Claims carry a unit (micro-USD, tokens, requests, requests in flight), so one counter
    # mechanism serves budgets and rate limits alike.
    db["claims"].add_column("unit", str, not_null_default="usd")
    # Per counter: the anchor its rolling windows run from (set at first use), moved to "now" by
    # an operator's reset; and the top-ups added to a budget that never resets.
    db["counters"].create(
        {"counter": str, "anchor_at": str, "topup_micro": int},
        pk="counter",
        not_null={"topup_micro"},
        defaults={"topup_micro": 0},
    )
    # Operator actions, with who and when: resets and top-ups.
    db["adjustments"].create(
        {"id": int, "at": str, "counter": str, "action": str, "amount_micro": int, "who": str, "note": str},
        pk="id",
        not_null={"at", "counter", "action", "who"},
    )
    # The counters a request was reserved against (and so charged at settlement).
    db["requests"].add_column("counters", str)
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["meta"].insert({"key": "salt", "value": secrets.token_hex(16)})


@migrations()
def m005_window_shapes(db: Database) -> None:
    # The window shape a counter was last used with, so a rules change that reshapes it can
    # carry the current window's spend over instead of starting from zero.
    db["counters"].add_column("shape", str)


@migrations()
def m006_exact_costs(db: Database) -> None:
    # The part of a micro-dollar below each settled amount (see governance.money).
    money.add_columns(db)


def iso(now: datetime) -> str:
    """A fixed-width UTC timestamp, so text order is time order."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    # isoformat is ~20x cheaper than strftime, and this runs twice per request.
    return now.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True)
class RequestRecord:
    """The facts recorded about a request when it is admitted or refused."""

    request_id: str
    principal: str
    provider: str | None = None
    api: str | None = None
    model: str | None = None
    stream: bool = False
    est_input_tokens: int | None = None
    max_output_tokens: int | None = None
    price_source: str | None = None
    requested_output_tokens: int | None = None  # the request's own cap, per choice; None: it set none
    injected_output_tokens: int | None = None  # the cap spendfuse wrote into it, per choice


@dataclass(frozen=True)
class Refit:
    """A request made to fit the room left in its windows: a smaller amount, and its record."""

    amount_micro: int
    rec: RequestRecord


@dataclass(frozen=True)
class ReserveResult:
    """Whether the holds were written, and the first claim that did not fit (with its window's
    spend and holds) when one did not: refused, or in dry run held regardless. `refit` is set
    when the request was made to fit (`reserve(fit=...)`)."""

    granted: bool
    blocking: Claim | None = None
    settled_micro: int = 0
    held_micro: int = 0
    settled_submicro: int = 0  # the spend's rest below a micro-dollar (governance.money)
    refit: Refit | None = None
    room: int | None = None  # the least room left in the claims' USD windows, when refused
    remaining_micro: int | None = None  # granted: USD left in the tightest budget after the hold
    binding: str | None = None  # that budget's rule


@dataclass(frozen=True)
class WindowTotals:
    """A window's spend (whole micro-units plus its rest in atto-USD) and holds."""

    settled_micro: int
    held_micro: int
    settled_submicro: int = 0

    @property
    def used_micro(self) -> int:
        """Spend plus holds, rounded up: what a whole amount must fit beside (money.used_micro)."""
        return money.used_micro(self.settled_micro, self.settled_submicro, self.held_micro)


_NO_TOTALS = WindowTotals(0, 0)


@functools.lru_cache(maxsize=64)
def _parse_reset(text: str) -> windows.Reset | None:
    return windows.parse_reset(text)


# Windows last computed, by (reset, calendar, zone, anchor): a window holds for every request
# until it ends, so most requests skip the calendar and zone arithmetic.
_WINDOW_CACHE: dict[tuple[str, bool, str, str | None], tuple[datetime | None, datetime | None, str, str]] = {}


def _window(
    claim: Claim, reset: windows.Reset | None, anchor_text: str | None, now: datetime
) -> tuple[str, str]:
    """`(window_start key, resets)` of the claim's window at `now`."""
    key = (claim.reset, claim.calendar, claim.timezone, anchor_text)
    hit = _WINDOW_CACHE.get(key)
    if hit is not None and (hit[0] is None or hit[0] <= now) and (hit[1] is None or now < hit[1]):
        return hit[2], hit[3]
    anchor = _parse_iso(anchor_text) if anchor_text else None
    start, end = windows.window_at(reset, now, anchor=anchor, calendar=claim.calendar, tz=claim.timezone)
    result = (start, end, windows.window_key(start), iso(end) if end is not None else "never")
    if len(_WINDOW_CACHE) > 4096:
        _WINDOW_CACHE.clear()
    _WINDOW_CACHE[key] = result
    return result[2], result[3]


@functools.lru_cache(maxsize=4096)
def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


# Limits a smaller output cap can make a request fit (output-cap injection).
_FITTABLE_UNITS = frozenset({"usd", "tokens:output", "tokens:total"})


def _in_window(claim: Claim, window_start: str, resets: str, limit_micro: int) -> Claim:
    """`claim` in its resolved window. Built directly: `dataclasses.replace` costs several times
    more, and this runs for every claim of every request."""
    return Claim(
        claim.scope,
        window_start,
        resets,
        limit_micro,
        claim.amount_micro,
        claim.rule,
        claim.unit,
        claim.reset,
        claim.calendar,
        claim.timezone,
    )


def _shape(claim: Claim) -> str:
    """A counter's window shape as the rules define it: reset, alignment and zone."""
    return f"{claim.reset}|{'calendar' if claim.calendar else 'rolling'}|{claim.timezone}"


def _refitted(claim: Claim, refit: Refit) -> Claim:
    """A claim of a request made to fit: USD at the refit's amount, tokens at its worst case."""
    if claim.unit == "usd":
        return replace(claim, amount_micro=refit.amount_micro)
    if claim.unit.startswith("tokens:"):
        r = refit.rec
        return replace(
            claim, amount_micro=claim_tokens(claim.unit, r.est_input_tokens or 0, r.max_output_tokens or 0)
        )
    return claim


def _final_amount(unit: str, amount: int, cost_micro: int, usage: Usage | None, state: str) -> int:
    """What a claim counts once its request is finished: money at the cost; tokens at the real
    count (the reservation when unknown); a request once; a request in flight no longer."""
    if unit == "usd":
        return cost_micro
    if unit == "in_flight" or state == "released":
        return 0
    if unit.startswith("tokens:") and usage is not None:
        return claim_tokens(unit, usage.input_tokens, usage.output_tokens)
    return amount


def _charged_at_expiry(unit: str, amount: int) -> int:
    """What the reaper charges a lost hold's claim: its amount, except that nothing is in flight."""
    return 0 if unit == "in_flight" else amount


def default_path() -> Path:
    """Where the ledger lives unless told: a per-user state directory, never the current one
    (`SPENDFUSE_STATE_DIR`, else `$XDG_STATE_HOME/spendfuse`, else `~/.local/state/spendfuse`)."""
    state = os.environ.get("SPENDFUSE_STATE_DIR")
    if state:
        return Path(state).expanduser() / "ledger.sqlite"
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "spendfuse" / "ledger.sqlite"


#: `scheme:` at the start of a ledger value: a URL, never a file path (one letter is a drive).
_URL_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]+):", re.IGNORECASE)
#: `host=db dbname=spend`: a libpq keyword connection string, never a file path.
_KEYWORD_DSN = re.compile(r"^\s*[a-z_]+\s*=\s*\S*(\s+[a-z_]+\s*=|$)", re.IGNORECASE)


def check_path(path: str | Path) -> None:
    """Refuse ledger names SQLite keeps in memory or deletes on close: spend recorded there is
    forgotten on restart and cannot be shared by several proxies."""
    text = str(path).strip()
    lowered = text.lower()
    if text in ("", ":memory:") or (lowered.startswith("file:") and "memory" in lowered):
        raise LedgerUnavailable(
            f"ledger {text!r} would live in memory (or in a temporary file): spend would be forgotten on "
            f"restart and could not be shared; give a file path"
        )
    if _KEYWORD_DSN.match(text):
        raise LedgerUnavailable(
            f"ledger {text!r} looks like a database connection string (key=value), which this build "
            f"cannot open: it keeps its ledger in a SQLite file; give that file's path"
        )
    if scheme := _URL_SCHEME.match(text):
        # Taken as a file name, `postgresql://host/db` would become a SQLite file under the working
        # directory: each machine of a fleet would keep its own ledger and pass every cap once.
        raise LedgerUnavailable(
            f"ledger {text!r} names a {scheme.group(1)!r} URL, which this build cannot open: it keeps "
            f"its ledger in a SQLite file; give that file's path (several proxies on one machine may "
            f"share it)"
        )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_busy(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


class Ledger:
    """A ledger file. Open it with `Ledger.open(path)`; close it with `close()`."""

    def __init__(self, db: Database, *, lock_wait_s: float, path: Path | None = None) -> None:
        self.db = db
        self._lock_wait_s = lock_wait_s
        self.commits_since_checkpoint = 0
        self.path = path
        # The file this connection has open, as (device, inode): a ledger deleted or replaced
        # under a running proxy would otherwise take writes that the next start never sees.
        self._identity = _identity(path) if path is not None else None
        self.replaced: str | None = None  # why the file is not the one opened, while it is not

    @classmethod
    def open(cls, path: str | Path, *, busy_timeout_s: float = 5.0, lock_wait_s: float = 600.0) -> Ledger:
        """Open (creating if needed) and migrate a ledger. Safe when several processes do it
        at the same moment on a file that does not exist yet. Raises `LedgerUnavailable` for a
        ledger that would not survive a restart or could not be shared (in memory, temporary)."""
        check_path(path)
        try:
            p = Path(path).expanduser().absolute()
            if p.parent and not p.parent.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(p), timeout=busy_timeout_s, check_same_thread=False)
            ledger = cls(Database(conn), lock_wait_s=lock_wait_s, path=p)
            ledger._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            # Keep the B-trees' inner pages in memory: with SQLite's default 2 MB cache, a ledger
            # of a million requests reserves about a quarter slower than an empty one.
            conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            with ledger._write():
                # Inside BEGIN IMMEDIATE, so two processes never both see a migration as pending.
                migrations.apply(ledger.db)
            return ledger
        except (sqlite3.Error, OSError) as e:
            raise LedgerUnavailable(f"cannot open ledger {str(path)!r}: {e}") from e

    def close(self) -> None:
        try:
            self.db.conn.close()
        except sqlite3.Error:
            pass

    # -- the file under us ----------------------------------------------------------------------

    def check_file(self) -> None:
        """Raise `LedgerUnavailable` unless the path still names the file this ledger opened.
        A stat: about a microsecond, so it runs before every transaction."""
        if self.path is None or self._identity is None:
            return
        now_there = _identity(self.path)
        if now_there == self._identity:
            if self.replaced is not None:
                logger.warning("ledger %s is back; accepting requests again", self.path)
                self.replaced = None
            return
        what = "was deleted" if now_there is None else "was replaced by another file"
        if self.replaced is None:
            logger.error(
                "LEDGER %s %s while the proxy was running; refusing every request until the original "
                "file is back at that path (restarting on a new file would start spend at zero)",
                self.path,
                what,
            )
        self.replaced = what
        raise LedgerUnavailable(f"the ledger file {str(self.path)!r} {what}")

    # -- transactions -------------------------------------------------------------------------

    def _retry_busy(self, fn):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + self._lock_wait_s
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                # The connection's busy timeout has already waited; keep waiting while the
                # other writer is alive rather than refusing a request over a lock.
                if not _is_busy(e) or time.monotonic() > deadline:
                    raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any error."""
        self.check_file()
        conn = self.db.conn
        try:
            self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"ledger is not writable: {e}") from e
        try:
            yield conn
            self._retry_busy(conn.commit)
            self.commits_since_checkpoint += 1
        except BaseException as e:
            try:
                conn.rollback()
            except sqlite3.Error:
                pass
            if isinstance(e, sqlite3.Error):
                raise LedgerUnavailable(f"ledger write failed: {e}") from e
            raise

    def checkpoint_if_due(self) -> bool:
        """Checkpoint the WAL into the database file if `IDLE_CHECKPOINT_COMMITS` commits have
        passed since the last one. PASSIVE: it never waits for, or blocks, another process.
        Returns whether it ran; housekeeping, so a failure is left to the backstop."""
        try:
            self.check_file()  # noticed while idle too, not only when the next request comes
        except LedgerUnavailable:
            return False
        if self.commits_since_checkpoint < IDLE_CHECKPOINT_COMMITS:
            return False
        self.commits_since_checkpoint = 0
        try:
            self.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            return False
        return True

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row | tuple]:
        try:
            return self._retry_busy(lambda: self.db.conn.execute(sql, params).fetchall())
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"ledger read failed: {e}") from e

    # -- the request path ---------------------------------------------------------------------

    @staticmethod
    def _insert_request(
        conn: sqlite3.Connection,
        rec: RequestRecord,
        now: datetime,
        *,
        state: str,
        decision: str,
        reserved_micro: int,
        rule: str | None,
        reason: str | None,
        counters: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO requests (id, created_at, principal, provider, api, model, stream, "
            "est_input_tokens, max_output_tokens, reserved_micro, state, decision, rule, reason, "
            "price_source, requested_output_tokens, injected_output_tokens, counters) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.request_id,
                iso(now),
                rec.principal,
                rec.provider,
                rec.api,
                rec.model,
                int(rec.stream),
                rec.est_input_tokens,
                rec.max_output_tokens,
                reserved_micro,
                state,
                decision,
                rule,
                reason,
                rec.price_source,
                rec.requested_output_tokens,
                rec.injected_output_tokens,
                counters,
            ),
        )

    @classmethod
    def _resolve_windows(
        cls, conn: sqlite3.Connection, claims: Sequence[Claim], now: datetime
    ) -> list[Claim]:
        """Each claim with its current window (`window_start`, `resets`) and its effective limit
        (plus top-ups). Rolling windows run from their counter's anchor, set here at first use; an
        operator's reset moves the anchor, which starts a new window of any kind. A counter whose
        window changed shape in the rules carries its current window's spend into the new one."""
        if not claims:
            return []
        marks = ", ".join("?" * len(claims))
        rows = conn.execute(
            f"SELECT counter, anchor_at, topup_micro, shape FROM counters WHERE counter IN ({marks})",
            [c.scope for c in claims],
        ).fetchall()
        known = {r[0]: (r[1], r[2], r[3]) for r in rows}
        out = []
        for claim in claims:
            reset = _parse_reset(claim.reset)
            rolling = reset is not None and not claim.calendar
            shape = _shape(claim)
            row = known.get(claim.scope)
            if row is None:
                anchor_text, topup = (
                    (iso(now) if rolling else None),
                    0,
                )  # a rolling window's first use anchors it
                conn.execute(
                    "INSERT INTO counters (counter, anchor_at, shape) VALUES (?, ?, ?)",
                    (claim.scope, anchor_text, shape),
                )
                known[claim.scope] = (anchor_text, topup, shape)
            else:
                anchor_text, topup, was = row
                if was != shape:
                    if was is not None:
                        anchor_text = cls._change_shape(conn, claim, was, anchor_text, now)
                    elif rolling and anchor_text is None:
                        anchor_text = iso(now)
                    conn.execute(
                        "UPDATE counters SET shape = ?, anchor_at = ? WHERE counter = ?",
                        (shape, anchor_text, claim.scope),
                    )
                    known[claim.scope] = (anchor_text, topup, shape)
            if reset is None and anchor_text is None:
                window_start, resets = "", "never"
            else:
                window_start, resets = _window(claim, reset, anchor_text, now)
            out.append(_in_window(claim, window_start, resets, claim.limit_micro + topup))
        return out

    @staticmethod
    def _change_shape(
        conn: sqlite3.Connection, claim: Claim, was: str, anchor_text: str | None, now: datetime
    ) -> str | None:
        """The rules changed a counter's window (its reset, calendar alignment or zone): the
        spend and holds of the window in force until now move into the new shape's current
        window, so that a change never loses recorded spend. Returns the counter's anchor."""
        old_reset, kind, old_tz = was.split("|")
        old = replace(claim, reset=old_reset, calendar=kind == "calendar", timezone=old_tz)
        parsed_old = _parse_reset(old_reset)
        old_key = _window(old, parsed_old, anchor_text, now)[0] if parsed_old or anchor_text else ""
        reset = _parse_reset(claim.reset)
        if reset is not None and not claim.calendar and anchor_text is None:
            anchor_text = iso(now)
        new_key = _window(claim, reset, anchor_text, now)[0] if reset or anchor_text else ""
        logger.warning(
            "counter %s changed its window from %s to %s: its spend since %s carries into the new window",
            claim.scope,
            was,
            _shape(claim),
            old_key or "the start",
        )
        if old_key == new_key:
            return anchor_text
        row = conn.execute(
            "SELECT settled_micro, held_micro, settled_submicro FROM totals "
            "WHERE scope = ? AND window_start = ?",
            (claim.scope, old_key),
        ).fetchone()
        if row is None:
            return anchor_text
        conn.execute(
            "INSERT INTO totals (scope, window_start) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (claim.scope, new_key),
        )
        carry = money.add_sql("settled_micro", "settled_submicro")  # the rest carried exactly
        conn.execute(
            f"UPDATE totals SET held_micro = held_micro + ?, {carry} WHERE scope = ? AND window_start = ?",
            (row[1], row[0], row[2], row[2], claim.scope, new_key),
        )
        conn.execute(
            "UPDATE totals SET held_micro = 0 WHERE scope = ? AND window_start = ?", (claim.scope, old_key)
        )
        # Holds in flight settle where they now are: in the new window.
        conn.execute(
            "UPDATE claims SET window_start = ? WHERE scope = ? AND window_start = ? AND state = 'held'",
            (new_key, claim.scope, old_key),
        )
        return anchor_text

    @staticmethod
    def _totals_of(conn: sqlite3.Connection, claims: Sequence[Claim]) -> dict[tuple[str, str], WindowTotals]:
        """The totals of every claim's window, in one query on the primary key."""
        scopes = list({c.scope for c in claims})
        starts = list({c.window_start for c in claims})
        scope_marks, start_marks = ", ".join("?" * len(scopes)), ", ".join("?" * len(starts))
        rows = conn.execute(
            f"SELECT scope, window_start, settled_micro, held_micro, settled_submicro FROM totals "
            f"WHERE scope IN ({scope_marks}) AND window_start IN ({start_marks})",
            [*scopes, *starts],
        ).fetchall()
        return {(r[0], r[1]): WindowTotals(r[2], r[3], r[4]) for r in rows}

    def reserve(
        self,
        rec: RequestRecord,
        claims: Sequence[Claim],
        reserved_micro: int,
        now: datetime,
        *,
        enforce: bool = True,
        decision: str = "allowed",
        rule: str | None = None,
        reason: str | None = None,
        fit: Callable[[int | None, int | None], Refit | None] | None = None,
        record_refusal: bool = True,
    ) -> ReserveResult:
        """Check every claim and hold them all, or none, in one transaction.

        With `enforce`, the first claim (in the order given) whose window's settled + held +
        amount would pass its limit refuses the request: a `refused` row is written and nothing
        is held. Without it (dry run) everything is held and the would-be refusal is only reported.

        `fit`, when given, is asked what the request becomes in the room its windows have left, when
        a budget or a token limit counting output is what blocks it: `fit(usd_room, output_room)`,
        the least USD and the fewest output tokens left (None where no such limit applies). A
        `Refit` that fits is held instead, within the same transaction, so the room cannot change
        in between; every claim is checked again at the refit's smaller worst case.

        `record_refusal=False` writes nothing for a refusal: the caller may try again (with the
        provider's own input count) and records the outcome then."""
        with self._write() as conn:
            claims = self._resolve_windows(conn, claims, now)
            blocking: ReserveResult | None = None
            room: int | None = None
            lefts = []
            found = self._totals_of(conn, claims) if claims else {}
            for claim in claims:
                t = found.get((claim.scope, claim.window_start), _NO_TOTALS)
                left = claim.limit_micro - t.used_micro  # exact spend + holds against the limit
                lefts.append(left)
                if claim.unit == "usd":
                    room = left if room is None else min(room, left)
                if blocking is None and claim.amount_micro > left:
                    blocking = ReserveResult(False, claim, t.settled_micro, t.held_micro, t.settled_submicro)
            # Output tokens the token limits that count output leave room for (None: none do).
            output_room: int | None = None
            for claim, left in zip(claims, lefts, strict=True):
                if claim.unit in ("tokens:output", "tokens:total"):
                    spare = left - ((rec.est_input_tokens or 0) if claim.unit == "tokens:total" else 0)
                    output_room = spare if output_room is None else min(output_room, spare)
            refit = (
                fit(room, output_room)
                if blocking is not None
                and blocking.blocking is not None
                and blocking.blocking.unit in _FITTABLE_UNITS
                and fit is not None
                and (room is None or room > 0)
                and (output_room is None or output_room > 0)
                else None
            )
            if refit is not None and (room is None or refit.amount_micro <= room):
                rec, reserved_micro, blocking = refit.rec, refit.amount_micro, None
                claims = [_refitted(c, refit) for c in claims]
                for claim, left in zip(claims, lefts, strict=True):  # every claim, not only the blocking one
                    if claim.amount_micro > left:
                        t = found.get((claim.scope, claim.window_start), _NO_TOTALS)
                        blocking = ReserveResult(
                            False, claim, t.settled_micro, t.held_micro, t.settled_submicro
                        )
                        refit = None
                        break
            else:
                refit = None
            if blocking is not None and enforce and not record_refusal:
                return replace(blocking, room=room)
            if blocking is not None and enforce:
                self._insert_request(
                    conn,
                    rec,
                    now,
                    state="refused",
                    decision="refused",
                    reserved_micro=0,
                    rule=blocking.blocking.rule if blocking.blocking else rule,
                    reason=reason,
                )
                return replace(blocking, room=room)
            if blocking is not None:  # dry run: held regardless, recorded as a would-be refusal
                decision, rule = "dry_run", rule or (blocking.blocking.rule if blocking.blocking else None)
            self._insert_request(
                conn,
                rec,
                now,
                state="held",
                decision=decision,
                reserved_micro=reserved_micro,
                rule=rule,
                reason=reason,
                counters=",".join(c.scope for c in claims),
            )
            conn.executemany(
                "INSERT INTO claims (request_id, scope, window_start, amount_micro, state, unit) "
                "VALUES (?, ?, ?, ?, 'held', ?)",
                [(rec.request_id, c.scope, c.window_start, c.amount_micro, c.unit) for c in claims],
            )
            conn.executemany(
                "INSERT INTO totals (scope, window_start, settled_micro, held_micro) "
                "VALUES (?, ?, 0, ?) ON CONFLICT (scope, window_start) "
                "DO UPDATE SET held_micro = held_micro + excluded.held_micro",
                [(c.scope, c.window_start, c.amount_micro) for c in claims],
            )
            if blocking is not None:  # dry run: held anyway, and the would-be refusal reported
                return replace(blocking, granted=True, room=None)
            tightest: tuple[int, str] | None = None
            for claim, left in zip(claims, lefts, strict=True):
                if claim.unit == "usd" and (tightest is None or left - claim.amount_micro < tightest[0]):
                    tightest = (left - claim.amount_micro, claim.rule)
            return ReserveResult(
                True,
                refit=refit,
                remaining_micro=tightest[0] if tightest else None,
                binding=tightest[1] if tightest else None,
            )

    def record_refusal(
        self, rec: RequestRecord, now: datetime, *, rule: str, reason: str, decision: str = "refused"
    ) -> None:
        """Record a request refused before any reservation (parse, price, multiplier, endpoint)."""
        with self._write() as conn:
            self._insert_request(
                conn, rec, now, state="refused", decision=decision, reserved_micro=0, rule=rule, reason=reason
            )

    def _finish(
        self,
        request_id: str,
        *,
        cost_micro: int | None,
        cost_submicro: int = 0,
        state: str,
        outcome: str,
        now: datetime,
        usage: Usage | None,
        price_source: str | None,
    ) -> bool:
        """Replace a hold by `cost_micro` (plus its rest `cost_submicro`, in atto-USD), or by its
        own reserved amount when that is None."""
        if not 0 <= cost_submicro < money.SUBMICRO_PER_MICRO:
            raise ValueError(f"a cost's rest below a micro-dollar must be in [0, 10^12), not {cost_submicro}")
        with self._write() as conn:
            rows = conn.execute(
                "SELECT r.state, r.reserved_micro, c.scope, c.window_start, c.amount_micro, c.unit "
                "FROM requests r LEFT JOIN claims c ON c.request_id = r.id WHERE r.id = ?",
                (request_id,),
            ).fetchall()
            if not rows or rows[0][0] not in ("held", "expired"):
                return False  # already settled or released: settlement is idempotent
            was_expired = rows[0][0] == "expired"
            if cost_micro is None:
                cost_micro = rows[0][1]
            totals, finals = [], []
            for _, _, scope, window_start, amount, unit in rows:
                if scope is None:
                    continue  # a hold with no claims (no limit applied)
                final = _final_amount(unit, amount, cost_micro, usage, state)
                # An expired hold was already charged by the reaper: correct it to the real amount.
                held_back = 0 if was_expired else amount
                charged = final - _charged_at_expiry(unit, amount) if was_expired else final
                rest = cost_submicro if unit == "usd" else 0  # only money has a rest
                totals.append((held_back, charged, rest, rest, scope, window_start))
                finals.append((final, rest, request_id, scope, window_start))
            settle_sql = money.add_sql("settled_micro", "settled_submicro")
            conn.executemany(
                f"UPDATE totals SET held_micro = held_micro - ?, {settle_sql} "
                "WHERE scope = ? AND window_start = ?",
                totals,
            )
            conn.executemany(
                "UPDATE claims SET amount_micro = ?, amount_submicro = ?, state = 'settled' "
                "WHERE request_id = ? AND scope = ? AND window_start = ?",
                finals,
            )
            conn.execute(
                "UPDATE requests SET state = ?, outcome = ?, settled_at = ?, cost_micro = ?, "
                "cost_submicro = ?, input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, "
                "cache_write_tokens = ?, "
                "price_source = COALESCE(?, price_source), model = COALESCE(model, ?) WHERE id = ?",
                (
                    state,
                    outcome,
                    iso(now),
                    cost_micro,
                    cost_submicro,
                    usage.input_tokens if usage else None,
                    usage.output_tokens if usage else None,
                    usage.cache_read_tokens if usage else None,
                    usage.cache_write_tokens if usage else None,
                    price_source,
                    usage.model if usage else None,
                    request_id,
                ),
            )
            if usage is not None:
                self._remember_context(conn, usage, now)
            return True

    @staticmethod
    def _remember_context(conn: sqlite3.Connection, usage: Usage, now: datetime) -> None:
        """Keep the size of the context an answer ended with, under its response id and its
        conversation (whose latest answer is its running size)."""
        size = usage.input_tokens + usage.output_tokens
        keys = []
        if usage.response_id:
            keys.append(f"response:{usage.response_id}")
        if usage.conversation_id:
            keys.append(f"conversation:{usage.conversation_id}")
        for key in keys:
            # The larger size wins: turns of a conversation may settle out of order, and the
            # reservation must never shrink below what the provider already holds.
            conn.execute(
                "INSERT INTO contexts (id, tokens, updated_at) VALUES (?, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET tokens = MAX(tokens, excluded.tokens), updated_at = excluded.updated_at",
                (key, size, iso(now)),
            )

    def settle(
        self,
        request_id: str,
        cost_micro: int,
        now: datetime,
        *,
        outcome: str,
        usage: Usage | None = None,
        price_source: str | None = None,
        cost_submicro: int = 0,
    ) -> bool:
        """Replace a hold by the real cost: `cost_micro` whole micro-dollars plus `cost_submicro`
        atto-USD (`money.split` of the exact cost). Idempotent: returns False if already finished."""
        return self._finish(
            request_id,
            cost_micro=cost_micro,
            cost_submicro=cost_submicro,
            state="settled",
            outcome=outcome,
            now=now,
            usage=usage,
            price_source=price_source,
        )

    def release(self, request_id: str, now: datetime, *, outcome: str) -> bool:
        """Drop a hold, charging nothing (the upstream never ran the request). Idempotent."""
        return self._finish(
            request_id,
            cost_micro=0,
            state="released",
            outcome=outcome,
            now=now,
            usage=None,
            price_source=None,
        )

    def charge_reservation(self, request_id: str, now: datetime, *, outcome: str) -> bool:
        """Settle a hold at its full reserved amount, when real usage cannot be known."""
        return self._finish(
            request_id,
            cost_micro=None,
            state="settled",
            outcome=outcome,
            now=now,
            usage=None,
            price_source=None,
        )

    def reap(self, now: datetime, ttl_seconds: int) -> int:
        """Charge holds older than `ttl_seconds` at their reserved amount (state `expired`): a
        process that died mid-request may have been billed. A late settle still corrects them."""
        cutoff = iso(now - timedelta(seconds=ttl_seconds))
        with self._write() as conn:
            stale = conn.execute(
                "SELECT id FROM requests WHERE state = 'held' AND created_at < ?", (cutoff,)
            ).fetchall()
            for (request_id,) in stale:
                for scope, window_start, amount, unit in conn.execute(
                    "SELECT scope, window_start, amount_micro, unit FROM claims WHERE request_id = ?",
                    (request_id,),
                ).fetchall():
                    conn.execute(
                        "UPDATE totals SET held_micro = held_micro - ?, settled_micro = settled_micro + ? "
                        "WHERE scope = ? AND window_start = ?",
                        (amount, _charged_at_expiry(unit, amount), scope, window_start),
                    )
                conn.execute(
                    "UPDATE claims SET state = 'settled', "
                    "amount_micro = CASE WHEN unit = 'in_flight' THEN 0 ELSE amount_micro END "
                    "WHERE request_id = ?",
                    (request_id,),
                )
                conn.execute(
                    "UPDATE requests SET state = 'expired', outcome = 'expired', settled_at = ?, "
                    "cost_micro = reserved_micro, cost_submicro = 0 WHERE id = ?",
                    (iso(now), request_id),
                )
            return len(stale)

    # -- operator actions ---------------------------------------------------------------------------

    def salt(self) -> str:
        """This ledger's random salt, for hashing upstream API keys into principals."""
        rows = self._read("SELECT value FROM meta WHERE key = 'salt'")
        return str(rows[0][0])

    def reset(self, counters: Sequence[str], now: datetime, *, who: str, note: str | None = None) -> None:
        """Start a new window of each counter now. History stays: the old window's totals and
        claims are kept, and the reset is a row in `adjustments`."""
        with self._write() as conn:
            for counter in counters:
                conn.execute(
                    "INSERT INTO counters (counter, anchor_at) VALUES (?, ?) ON CONFLICT (counter) "
                    "DO UPDATE SET anchor_at = excluded.anchor_at",
                    (counter, iso(now)),
                )
                conn.execute(
                    "INSERT INTO adjustments (at, counter, action, amount_micro, who, note) "
                    "VALUES (?, ?, 'reset', 0, ?, ?)",
                    (iso(now), counter, who, note),
                )

    def topup(
        self, counter: str, amount_micro: int, now: datetime, *, who: str, note: str | None = None
    ) -> None:
        """Add `amount_micro` to a budget counter's limit for good (a balance that never resets),
        recorded in `adjustments`."""
        if amount_micro <= 0:
            raise ValueError("a top-up must be a positive amount")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO counters (counter, topup_micro) VALUES (?, ?) ON CONFLICT (counter) "
                "DO UPDATE SET topup_micro = topup_micro + excluded.topup_micro",
                (counter, amount_micro),
            )
            conn.execute(
                "INSERT INTO adjustments (at, counter, action, amount_micro, who, note) "
                "VALUES (?, ?, 'topup', ?, ?, ?)",
                (iso(now), counter, amount_micro, who, note),
            )

    def resolve_window(self, claim: Claim, now: datetime) -> Claim:
        """`claim` with its current window and effective limit, read-only (for `spendfuse status`)."""
        rows = self._read("SELECT anchor_at, topup_micro FROM counters WHERE counter = ?", (claim.scope,))
        anchor_text, topup = (rows[0][0], rows[0][1]) if rows else (None, 0)
        reset = _parse_reset(claim.reset)
        if reset is not None and anchor_text is None and not claim.calendar:
            anchor_text = iso(now)  # not used yet: its first window would start now
        window_start, resets = (
            _window(claim, reset, anchor_text, now) if reset or anchor_text else ("", "never")
        )
        return _in_window(claim, window_start, resets, claim.limit_micro + topup)

    # -- context kept by providers --------------------------------------------------------------

    def context_tokens(self, ids: Sequence[str]) -> dict[str, int]:
        """The stored size, in tokens, of each context id this ledger has seen settle."""
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._read(f"SELECT id, tokens FROM contexts WHERE id IN ({marks})", list(ids))
        return {row[0]: row[1] for row in rows}

    # -- reading ------------------------------------------------------------------------------

    def window_totals(self, scope: str, window_start: str) -> WindowTotals:
        rows = self._read(
            "SELECT settled_micro, held_micro, settled_submicro FROM totals "
            "WHERE scope = ? AND window_start = ?",
            (scope, window_start),
        )
        return WindowTotals(rows[0][0], rows[0][1], rows[0][2]) if rows else WindowTotals(0, 0)

    def request(self, request_id: str) -> dict[str, Any] | None:
        try:
            rows = list(self.db.query("SELECT * FROM requests WHERE id = ?", [request_id]))
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"ledger read failed: {e}") from e
        return rows[0] if rows else None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, for the operator CLI and tests."""
        try:
            return list(self.db.query(sql, list(params)))
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"ledger read failed: {e}") from e
