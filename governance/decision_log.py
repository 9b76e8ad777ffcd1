"""The JSON decision log: one line per decision (admitted, refused, settled, released, reaped,
and the free, unmetered and dry-run passes), for a log pipeline to read. Its schema is
`rules/decision-log.schema.json` (versioned: `v`); the human log stays as it is beside it.

Lines go to a file (appended, line-buffered, so each line is whole as soon as it is written) or
to stderr. Principals are the ledger's, never a secret; no request or response body is logged.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

from governance import RULES_DIR
from governance.decisions import SCHEMA_VERSION, Record

#: The schema every line follows.
SCHEMA_FILE = RULES_DIR / "decision-log.schema.json"


class DecisionLog:
    """A sink (`governance.observe`) writing one JSON object per line. `now` gives each line's time."""

    def __init__(self, stream: IO[str], now: Callable[[], datetime], *, owned: bool = False) -> None:
        self._stream = stream
        self._now = now
        self._owned = owned
        self._lock = threading.Lock()  # lines stay whole if a sink is ever called off the loop

    @classmethod
    def open(cls, target: str, now: Callable[[], datetime]) -> DecisionLog:
        """The log at `target`: a file path (appended; created if missing), or `-` / empty for
        stderr. Raises `OSError` if the file cannot be opened."""
        if target in ("", "-"):
            return cls(sys.stderr, now)
        path = Path(target).expanduser()
        return cls(path.open("a", encoding="utf-8", buffering=1), now, owned=True)

    def __call__(self, record: Record) -> None:
        line = json.dumps(
            {"v": SCHEMA_VERSION, "ts": self._now().isoformat(), **record.fields()},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()
