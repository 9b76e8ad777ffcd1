"""Model-name lookup shared by every model-keyed table: multipliers, price overrides, output caps."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

# A key matches as a prefix only at one of these, so `gpt-5` covers `gpt-5-2025-08-07` and
# `gpt-5-mini`, but not `gpt-5.5-pro`: a new model must not inherit an older model's entry
# by accident (gh-aw-firewall's multiplier cap let new names slip through that way).
_BOUNDARIES = frozenset("-@:_/")


def normalise_model(model: str) -> str:
    """Lower-case and trim a model name; tables and requests are compared in this form."""
    return model.strip().lower()


def lookup_model[V](
    table: Mapping[str, V], model: str, *, bedrock_names: bool = True
) -> tuple[str, V] | None:
    """Find `model` in `table`: the exact key first, then the longest key that is a prefix of it
    ending at a name boundary; failing both, the same for the name a Bedrock model id carries
    (`us.anthropic.claude-sonnet-4-5-20250929-v1:0` is `claude-sonnet-4-5-20250929` to a table),
    unless `bedrock_names` is False. Keys are compared case-insensitively. Returns `(key, value)`."""
    found = _lookup(table, model)
    if found is None and bedrock_names and "." in model:
        from governance.bedrock_ids import table_name  # its word lists load on first use

        name = table_name(model)
        found = _lookup(table, name) if name else None
    return found


def _lookup[V](table: Mapping[str, V], model: str) -> tuple[str, V] | None:
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


@functools.cache
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in normalise_model(pattern)))


def glob_match(pattern: str, name: str) -> bool:
    """Whether `name` matches `pattern`, case-insensitively, where `*` stands for any characters
    and everything else is literal: `gpt-4o` is that exact model, `claude-opus-*` every Opus."""
    return _glob(pattern).fullmatch(normalise_model(name)) is not None


# A dated snapshot or a vendor prefix names the same model as far as limits go: `gpt-4o-2024-08-06`,
# `claude-sonnet-4-5-20250929`, `claude-3-5-sonnet@20240620` (Vertex), `openai/gpt-4o` (gateways).
# OpenAI's older snapshots are dated by month and day only (`gpt-4-0613`, `gpt-3.5-turbo-0125`):
# a real month and day, so `-2099` stays part of an unknown name.
_SNAPSHOT = re.compile(
    r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))|-latest)$"
)


def model_names(model: str) -> tuple[str, ...]:
    """The names a requested model answers to in limits and access lists: itself, without a
    vendor prefix, and without a dated-snapshot suffix. An exact rule for `gpt-4o` must also hold
    for `gpt-4o-2024-08-06`, which is billed as the same model, but not for `gpt-4o-mini`."""
    name = normalise_model(model)
    names = [name]
    if "/" in name:
        names.append(name.rsplit("/", 1)[1])
    for n in list(names):
        stripped = _SNAPSHOT.sub("", n)
        if stripped and stripped != n:
            names.append(stripped)
    return tuple(dict.fromkeys(names))


def model_matches(pattern: str, model: str) -> bool:
    """Whether an exact name or glob from the rules covers `model` under any of its names."""
    return any(glob_match(pattern, name) for name in model_names(model))
