"""Settlements that could not be written to a PostgreSQL ledger wait in a local spool file.

A settlement is the record of money the provider already billed: losing it would leave the hold
to the reaper (charged at its reservation, not at the bill) or, worse, under-count. So when the
database cannot be reached, a settlement is tried `ATTEMPTS` times and then appended to a spool
file in the proxy's confdir (one JSON line per settlement, flushed and fsynced before the
settlement is reported done). The spool is replayed into the database as soon as a write
succeeds again, at start-up, and before every reaping, oldest first. Replay is exactly once:
`spendfuse_finish` answers false for a request already finished, so a line replayed twice (the
proxy died between the database's commit and the spool's rewrite) counts once; a line is removed
only once the database has answered it. A settlement the reaper charged first (its TTL passed
while the database was away) is corrected to the real cost, as any late settlement is.

The file is locked (`flock`) while it is appended to or replayed, so proxies that share a
confdir do not interleave."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from governance.errors import LedgerUnavailable
from governance.store.holds import Finish
from governance.types import Usage

logger = logging.getLogger(__name__)

ATTEMPTS = 3  # tries before spooling
PAUSE_S = 0.2  # between tries


def spool_path(directory: Path, url: str) -> Path:
    """The spool file of the ledger at `url` in `directory` (one per database)."""
    return directory / f"spendfuse-spool-{hashlib.sha256(url.encode()).hexdigest()[:12]}.jsonl"


def _line(f: Finish) -> str:
    d = asdict(f)
    d["now"] = f.now.isoformat()
    return json.dumps(d, sort_keys=True) + "\n"


def _finish_of(line: str) -> Finish:
    d = json.loads(line)
    d["now"] = datetime.fromisoformat(d["now"])
    d["usage"] = Usage(**d["usage"]) if d["usage"] is not None else None
    return Finish(**d)


class PgSpooling:
    """A PostgreSQL store's spool (`spool`: the file, or None to raise instead of spooling)."""

    spool: Path | None = None
    _down: bool
    _replaying = False
    _spool_pending = False  # whether this process spooled since its last replay

    def _settle_or_spool(self, f: Finish, write: Callable[[], bool]) -> bool:
        """`write()`, tried again while the database is away, then spooled: True once spooled."""
        if self._replaying:
            return write()  # a replayed line that fails stays in the spool
        for attempt in range(ATTEMPTS):
            try:
                return write()
            except LedgerUnavailable:
                if self.spool is None or not self._down:
                    raise  # not for want of the database: a defect to report, not to spool
                if attempt < ATTEMPTS - 1:
                    time.sleep(PAUSE_S)
        assert self.spool is not None
        with _locked(self.spool) as fd:
            os.write(fd, _line(f).encode())
            os.fsync(fd)
        self._spool_pending = True
        logger.error(
            "spendfuse: ledger database down: settlement of %s kept in %s until it is back",
            f.request_id,
            self.spool,
        )
        return True

    def _came_back(self) -> None:
        super()._came_back()  # type: ignore[misc]
        if self._spool_pending and not self._replaying:
            self.replay_spool()

    def replay_spool(self) -> int:
        """Write the spooled settlements into the database, oldest first, each once; the number
        replayed. Stops at the first that cannot be written (the rest stay for the next time)."""
        if self.spool is None or self._replaying or not self.spool.exists():
            return 0
        self._replaying, self._spool_pending = True, False
        try:
            with _locked(self.spool) as fd:
                lines = [ln for ln in Path(self.spool).read_text().splitlines() if ln.strip()]
                if not lines:
                    return 0
                done = 0
                try:
                    for line in lines:
                        self._finish(_finish_of(line))  # type: ignore[attr-defined]
                        done += 1
                except LedgerUnavailable as e:
                    logger.error("spendfuse: replaying the spool stopped: %s", e)
                finally:
                    rest = "".join(ln + "\n" for ln in lines[done:])
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.write(fd, rest.encode())
                    os.fsync(fd)
                    self._spool_pending = bool(rest)
        finally:
            self._replaying = False
        if done:
            logger.warning("spendfuse: %d spooled settlement(s) written to the ledger database", done)
        return done


class _locked:
    """The spool file opened for appending, under an exclusive `flock`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
