"""The operator's reads of a SQLite ledger: its `query`; the SQL is `governance.store.reports`'s."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlite_utils import Database

from governance.errors import LedgerUnavailable
from governance.store.reports import LedgerReports


class SqliteReports(LedgerReports):
    """Reads for the operator commands, on the ledger's `db`."""

    db: Database
    _retry_busy: Callable[[Callable[[], list[dict[str, Any]]]], list[dict[str, Any]]]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, for the operator commands and tests."""
        try:  # waiting out another process's lock, as every read of this file does
            return self._retry_busy(lambda: list(self.db.query(sql, list(params))))
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"ledger read failed: {e}") from e
