"""The operator's reads of a SQLite ledger: its `query`; the SQL is `governance.store.reports`'s."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlite_utils import Database

from governance.errors import LedgerUnavailable
from governance.store.reports import LedgerReports


class SqliteReports(LedgerReports):
    """Reads for the operator commands, on the ledger's `db`."""

    db: Database

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, for the operator commands and tests."""
        try:
            return list(self.db.query(sql, list(params)))
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"ledger read failed: {e}") from e
