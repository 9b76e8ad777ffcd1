"""The ledger under its historical names: `Ledger` is the SQLite store.

The storage protocol and its record types live in `governance.store`; the SQLite store in
`governance.store.sqlite`. These names stay importable from here for the addon, the operator
commands and the tests that use them.
"""

from __future__ import annotations

from governance.store import LedgerStore, Refit, RequestRecord, ReserveResult, Room, WindowTotals, iso
from governance.store.migrations import migrations
from governance.store.paths import check_path, default_path
from governance.store.sqlite import SqliteStore
from governance.store.sqlite_file import BACKSTOP_CHECKPOINT_PAGES, IDLE_CHECKPOINT_COMMITS, PAGE_CACHE_KIB

#: The SQLite ledger store, by its historical name.
Ledger = SqliteStore

__all__ = [
    "BACKSTOP_CHECKPOINT_PAGES",
    "IDLE_CHECKPOINT_COMMITS",
    "PAGE_CACHE_KIB",
    "Ledger",
    "LedgerStore",
    "Refit",
    "RequestRecord",
    "ReserveResult",
    "Room",
    "SqliteStore",
    "WindowTotals",
    "check_path",
    "default_path",
    "iso",
    "migrations",
]
