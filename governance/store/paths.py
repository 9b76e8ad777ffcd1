"""Where a SQLite ledger lives, and which names are refused as ledgers."""

from __future__ import annotations

import os
import re
from pathlib import Path

from governance.errors import LedgerUnavailable


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
    """Refuse ledger names SQLite keeps in memory or deletes on close (spend recorded there is
    forgotten on restart and cannot be shared by several proxies), and database URLs and
    connection strings (taken as file names, they would give each machine a ledger of its own)."""
    text = str(path).strip()
    lowered = text.lower()
    if text in ("", ":memory:") or (lowered.startswith("file:") and "memory" in lowered):
        raise LedgerUnavailable(
            f"ledger {text!r} would live in memory (or in a temporary file): spend would be forgotten on "
            f"restart and could not be shared; give a file path"
        )
    if _KEYWORD_DSN.match(text):
        raise LedgerUnavailable(
            f"ledger {text!r} looks like a database connection string (key=value): give a SQLite file's "
            f"path, or a fleet's PostgreSQL ledger as a postgresql://user@host/db URL"
        )
    if scheme := _URL_SCHEME.match(text):
        # Taken as a file name, `postgresql://host/db` would become a SQLite file under the working
        # directory: each machine of a fleet would keep its own ledger and pass every cap once.
        raise LedgerUnavailable(
            f"ledger {text!r} names a {scheme.group(1)!r} URL, which this build cannot open: give a SQLite "
            f"file's path (several proxies on one machine may share it), or a fleet's PostgreSQL ledger "
            f"as postgresql://user@host/db"
        )
