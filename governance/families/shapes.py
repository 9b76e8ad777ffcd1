"""Refusal shapes as data: `rules/refusal_shapes.yaml`, validated by `RefusalShapes`, gives each
error envelope's HTTP status, error type and (where the provider has its own) error code for
every refusal kind. A family's `render_error` lays them out in its provider's body."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

from governance.rulefile import Problem, RulesInvalid, read_yaml, validation_problems
from governance.types import Refusal, RefusalKind

_KINDS = tuple(k.value for k in RefusalKind)


class Shape(BaseModel):
    """What one kind of refusal looks like to one envelope's clients."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    status: Annotated[int, Field(ge=400, le=599)]
    """The HTTP status."""
    type: Annotated[str, Field(min_length=1)]
    """The provider's error type (OpenAI `type`, Anthropic `error.type`, Google `status`,
    Bedrock `x-amzn-ErrorType`)."""
    code: Annotated[str, Field(min_length=1)] | None = None
    """The provider's own error code the clients know; unset: the refusal's own code."""


class RefusalShapes(RootModel[dict[str, dict[str, Shape]]]):
    """Envelope name -> refusal kind -> shape. Every envelope names every kind."""

    @model_validator(mode="after")
    def _complete(self) -> RefusalShapes:
        for envelope, kinds in self.root.items():
            missing = [k for k in _KINDS if k not in kinds]
            unknown = sorted(set(kinds) - set(_KINDS))
            if missing or unknown:
                raise ValueError(
                    f"envelope {envelope!r}: missing kinds {missing}, unknown kinds {unknown} "
                    f"(kinds: {', '.join(_KINDS)})"
                )
        return self

    def shape(self, envelope: str, kind: RefusalKind) -> Shape:
        return self.root[envelope][kind.value]


@functools.cache
def shipped() -> RefusalShapes:
    """`rules/refusal_shapes.yaml`. Raises `RulesInvalid` (a proxy that cannot shape its refusals
    does not start)."""
    from governance import RULES_DIR

    path = RULES_DIR / "refusal_shapes.yaml"
    try:
        return RefusalShapes.model_validate(read_yaml(path, "refusal shapes"))
    except ValidationError as e:
        raise RulesInvalid(str(path), validation_problems(e)) from e


def require(envelopes: Iterable[str]) -> None:
    """Load the shipped shapes now and check they shape every one of `envelopes`. Raises
    `PolicyError` (`RulesInvalid`), so that a proxy that could not shape a refusal never starts."""
    from governance import RULES_DIR

    missing = sorted(set(envelopes) - set(shipped().root))
    if missing:
        path = str(RULES_DIR / "refusal_shapes.yaml")
        raise RulesInvalid(
            path, [Problem((name,), "no refusal shapes for this envelope") for name in missing]
        )


def shape(envelope: str, kind: RefusalKind) -> Shape:
    """The shipped shape of a `kind` refusal in `envelope`."""
    return shipped().shape(envelope, kind)


def of(envelope: str, refusal: Refusal) -> Shape:
    """The shape `refusal` is rendered in: its client's own (`governance.clients`), else the
    envelope's shipped one for its kind."""
    return refusal.shape or shape(envelope, refusal.kind)


def json_schema() -> str:
    """The JSON schema of `rules/refusal_shapes.yaml`, as committed beside it."""
    schema = RefusalShapes.model_json_schema(mode="validation")
    schema["title"] = "spendfuse refusal shapes"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
