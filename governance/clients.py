"""Refusal shapes per client: the clients whose envelope's default shape would make them retry
or hide spendfuse's message, recognised from their request (`rules/refusal_clients.yaml`, and the
rules' own `refusal_clients:`, tried first). Pure: headers in, a shape out."""

from __future__ import annotations

import fnmatch
import functools
import json
from collections.abc import Callable, Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from governance.families import EnvelopeName
from governance.families.shapes import Shape
from governance.rulefile import RulesInvalid, read_yaml, validation_problems
from governance.types import RefusalKind

_KINDS = tuple(k.value for k in RefusalKind)


class ClientShapes(BaseModel):
    """A client that needs refusals shaped its own way."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    """Names the client in logs and in the `x-spendfuse-client` header of its refusals."""
    envelope: EnvelopeName
    """The error envelope (`hosts.yaml` `envelope:`) whose refusals this changes."""
    match: dict[str, list[str]]
    """Request header (any case) -> globs (case-insensitive); any value of any listed header
    matching any glob recognises the client."""
    shapes: dict[str, Shape]
    """Refusal kind -> the shape this client gets instead of the envelope's."""

    @field_validator("match")
    @classmethod
    def _some_match(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if not any(v.values()):
            raise ValueError("names no header glob: the client could never be recognised")
        return {name.lower(): globs for name, globs in v.items()}

    @field_validator("shapes")
    @classmethod
    def _known_kinds(cls, v: dict[str, Shape]) -> dict[str, Shape]:
        unknown = sorted(set(v) - set(_KINDS))
        if unknown:
            raise ValueError(f"unknown refusal kinds {unknown} (kinds: {', '.join(_KINDS)})")
        return v

    def recognises(self, headers: Callable[[str], list[str]]) -> bool:
        return any(
            fnmatch.fnmatchcase(value.strip().lower(), glob.lower())
            for name, globs in self.match.items()
            for value in headers(name)
            for glob in globs
        )


class ClientTable(BaseModel):
    """`rules/refusal_clients.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: list[ClientShapes]


@functools.cache
def shipped() -> tuple[ClientShapes, ...]:
    """The shipped client table. Raises `RulesInvalid` (a proxy that cannot read it does not start)."""
    from governance import RULES_DIR

    path = RULES_DIR / "refusal_clients.yaml"
    try:
        return tuple(ClientTable.model_validate(read_yaml(path, "refusal clients")).clients)
    except ValidationError as e:
        raise RulesInvalid(str(path), validation_problems(e)) from e


def client_shape(
    clients: Sequence[ClientShapes], envelope: str, kind: RefusalKind, headers: Callable[[str], list[str]]
) -> tuple[str, Shape] | None:
    """`(client name, shape)` for a `kind` refusal in `envelope` of a request with `headers`
    (a `get_all`), from the first client it recognises; None: the envelope's own shape."""
    for client in clients:
        if client.envelope == envelope and client.recognises(headers):
            shape = client.shapes.get(kind.value)
            return (client.name, shape) if shape is not None else None
    return None


def json_schema() -> str:
    """The JSON schema of `rules/refusal_clients.yaml`, as committed beside it."""
    schema = ClientTable.model_json_schema(mode="validation")
    schema["title"] = "spendfuse refusal clients"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
