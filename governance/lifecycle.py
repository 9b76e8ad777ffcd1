"""Opening what an engine records into: the ledger a proxy is configured with, and its salt."""

from __future__ import annotations

from governance.ledger import Ledger, default_path


def ledger_path(option: str) -> str:
    """The ledger the `spendfuse_db` option names; empty: the per-user default."""
    return option or str(default_path())


def open_ledger(path: str) -> tuple[Ledger, str]:
    """Open (creating if missing) the ledger at `path`, and read its salt for hashing upstream
    API keys into principals. Runs on the ledger thread. Raises `LedgerUnavailable`."""
    ledger = Ledger.open(path)
    return ledger, ledger.salt()
