"""Reading rule files: strict YAML (a repeated key is an error naming its line), and the
problems a rules file can have, each at its place in the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from governance.errors import PolicyError


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error naming its
    line: last-wins would let a second `limit_usd` silently change a cap."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: the constructor below reports it
        line = key_node.start_mark.line + 1
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {first}, again on line {line})",
                key_node.start_mark,
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str) -> Any:
    """Parse YAML as rules are parsed: safe, and duplicate keys are errors."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path, what: str) -> Any:
    """The YAML at `path`, parsed strictly. Raises `PolicyError` naming `what` when the file is
    missing or unreadable."""
    if not path.is_file():
        # A mistyped path must not mean "no rules": that would be a proxy without enforcement.
        raise PolicyError(f"{what} {str(path)!r} does not exist")
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PolicyError(f"cannot read {what} {str(path)!r}: {e}") from e


@dataclass(frozen=True)
class Problem:
    """Something wrong in a rules file, at a place in it (`("keys", 2, "team")`)."""

    loc: tuple[str | int, ...]
    message: str
    fatal: bool = True  # False: a warning (legal, but likely not what was meant)

    def where(self) -> str:
        return ".".join(str(p) for p in self.loc) or "(top level)"


class RulesInvalid(PolicyError):
    """A rules file with problems; `problems` lists each, with its place in the file."""

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        self.origin = origin
        self.problems = problems
        lines = "\n".join(f"  {p.where()}: {p.message}" for p in problems)
        super().__init__(f"{origin} is invalid:\n{lines}")


def validation_problems(e: ValidationError) -> list[Problem]:
    """Pydantic's errors as problems at their places."""
    return [Problem(tuple(err["loc"]), err["msg"]) for err in e.errors()]
