"""How a Bifrost import reports what it cannot translate. `BifrostImportError` carries every
problem found, each `"<json path>: <why>"`, so one run names them all; `_list` spells a set of
accepted names inside such a message. Imports nothing else from the package."""

from __future__ import annotations

from collections.abc import Iterable


class BifrostImportError(ValueError):
    """Bifrost governance that cannot be translated exactly. `problems` lists each untranslatable
    field as `"<json path>: <why>"`, every one found, not just the first."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"cannot translate this Bifrost governance into spendfuse rules:\n{lines}")


def _list(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))
