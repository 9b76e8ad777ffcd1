"""Which store a ledger target names: a `postgresql://` (or `postgres://`) URL opens the shared
PostgreSQL ledger of a fleet; anything else is a SQLite file (`governance.store.paths`)."""

from __future__ import annotations

import re
from pathlib import Path

from governance.store import LedgerStore

#: `postgresql://` or `postgres://`: a ledger in a PostgreSQL database. (Matched here, so that a
#: proxy on a SQLite ledger never imports psycopg.)
_URL = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


def is_database(target: str) -> bool:
    """Whether `target` names a PostgreSQL database rather than a SQLite file."""
    return bool(_URL.match(target.strip()))


def open_store(target: str, spool_dir: Path | None = None) -> LedgerStore:
    """Open (creating and migrating if needed) the ledger `target` names. Raises
    `LedgerUnavailable` if it cannot be opened now: a database that is down, or a file that
    could not be shared. A database's settlements that cannot be written wait in `spool_dir`."""
    if is_database(target):
        from governance.store.postgres import PostgresStore  # psycopg only for a fleet's ledger

        return PostgresStore.open(target, spool_dir=spool_dir)
    from governance.store.sqlite import SqliteStore

    return SqliteStore.open(target)
