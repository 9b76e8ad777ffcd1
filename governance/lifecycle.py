"""Opening what an engine records into: the ledger a proxy is configured with, and its salt."""

from __future__ import annotations

from governance.ledger import default_path
from governance.store import LedgerStore
from governance.store.opening import open_store


def ledger_path(option: str) -> str:
    """The ledger the `spendfuse_db` option names (a file, or a `postgresql://` URL); empty: the
    per-user default file."""
    return option or str(default_path())


def open_ledger(path: str) -> tuple[LedgerStore, str]:
    """Open (creating if missing) the ledger at `path` (a SQLite file, or a `postgresql://` URL),
    and read its salt for hashing upstream API keys into principals. Runs on the ledger thread.
    Raises `LedgerUnavailable`."""
    ledger = open_store(path)
    return ledger, ledger.salt()
