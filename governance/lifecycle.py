"""Opening what an engine records into: the ledger a proxy is configured with, and its salt."""

from __future__ import annotations

from pathlib import Path

from governance.ledger import default_path
from governance.store import LedgerStore
from governance.store.opening import open_store


def ledger_path(option: str) -> str:
    """The ledger the `spendfuse_db` option names (a file, or a `postgresql://` URL); empty: the
    per-user default file."""
    return option or str(default_path())


def open_ledger(path: str, spool_dir: Path | None = None) -> tuple[LedgerStore, str]:
    """Open (creating if missing) the ledger at `path` (a SQLite file, or a `postgresql://` URL),
    and read its salt for hashing upstream API keys into principals. Runs on the ledger thread.
    Raises `LedgerUnavailable`. A database's settlements that cannot be written wait in
    `spool_dir` (the proxy's confdir) until it is back."""
    ledger = open_store(path, spool_dir)
    return ledger, ledger.salt()
