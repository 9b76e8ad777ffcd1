"""A SQLite ledger file: opening and migrating it, its transactions, and the file under it.

A write is one `BEGIN IMMEDIATE` transaction: SQLite lets one writer in at a time across every
process that opens the file, so a check and the holds it allows are never interleaved with
another writer's. A writer waits for another process's lock for as long as it takes (up to
`lock_wait_s`); waiting is never a reason to refuse. Any other database failure raises
`LedgerUnavailable`. Not thread-safe: the addon calls it from one ledger thread."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlite_utils import Database

from governance.errors import LedgerUnavailable
from governance.store.migrations import migrations
from governance.store.paths import check_path

logger = logging.getLogger(__name__)

# SQLite checkpoints the WAL inside whichever commit pushes it past `wal_autocheckpoint` pages,
# which puts the checkpoint's copy and fsync on a request's path. The ledger thread instead calls
# `checkpoint_if_due` when it has nothing queued (a request is at the upstream for seconds), and
# SQLite's own checkpoint stays as a backstop for a ledger that is never idle.
IDLE_CHECKPOINT_COMMITS = 100
BACKSTOP_CHECKPOINT_PAGES = 10_000
PAGE_CACHE_KIB = 65_536


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_busy(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


class SqliteFile:
    """A ledger file's connection. Open it with `open(path)`; close it with `close()`."""

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
    def open(cls, path: str | Path, *, busy_timeout_s: float = 5.0, lock_wait_s: float = 600.0) -> Self:
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
