"""spendfuse's engine: everything that decides and records, with no mitmproxy in sight."""

from __future__ import annotations

from pathlib import Path

#: The repository's rules directory, where the shipped rule files live.
RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
DEFAULT_RULES = RULES_DIR / "default.yaml"
