"""Model-name lookup shared by every model-keyed table: multipliers, price overrides, output caps."""

from __future__ import annotations

from collections.abc import Mapping

# A key matches as a prefix only at one of these, so `gpt-5` covers `gpt-5-2025-08-07` and
# `gpt-5-mini`, but not `gpt-5.5-pro`: a new model must not inherit an older model's entry
# by accident (gh-aw-firewall's multiplier cap let new names slip through that way).
_BOUNDARIES = frozenset("-@:_/")


def normalise_model(model: str) -> str:
    """Lower-case and trim a model name; tables and requests are compared in this form."""
    return model.strip().lower()


def lookup_model[V](table: Mapping[str, V], model: str) -> tuple[str, V] | None:
    """Find `model` in `table`: the exact key first, then the longest key that is a prefix of it
    ending at a name boundary. Keys are compared case-insensitively. Returns `(key, value)`."""
    wanted = normalise_model(model)
    best: tuple[str, V] | None = None
    for key, value in table.items():
        k = normalise_model(key)
        if k == wanted:
            return key, value
        if (
            len(wanted) > len(k)
            and wanted.startswith(k)
            and wanted[len(k)] in _BOUNDARIES
            and (best is None or len(k) > len(normalise_model(best[0])))
        ):
            best = key, value
    return best
