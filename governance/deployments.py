"""Deployment names (Azure OpenAI): which model a request to a deployment is reserved as.

A deployment is the customer's alias for a model, chosen when the deployment was made; the
request names only the alias, and the response reports the model that ran. The rules'
`azure_deployments` maps an alias (`name`, or `host/name` for one resource) to the model it
runs, or to the models it may run; `"*"` bounds every alias not listed. An alias the rules do
not map is bounded by the models the request's key may use on the provider (exact names).
Among several models the request is reserved as the priciest for this very request (its input
and output bound), and settled by the model the response reports (`governance.settlement`).
With no bound at all (the rules map nothing, the key allows every model) the request is refused:
its price cannot be bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from governance.errors import PricingError, RequestParseError
from governance.limits import Key

if TYPE_CHECKING:
    from governance.engine import Engine

#: The key of `azure_deployments` that bounds every alias not listed.
ANY = "*"


def mapped(table: Mapping[str, str | list[str]], host: str, deployment: str) -> tuple[str, ...] | None:
    """The models the rules map `deployment` on `host` to: `host/name`, then `name`, then `*`
    (names compared case-insensitively, as Azure compares them); None when none applies."""
    lowered = {k.lower(): v for k, v in table.items()}
    for key in (f"{host}/{deployment}".lower(), deployment.lower(), ANY):
        if key in lowered:
            found = lowered[key]
            return (found,) if isinstance(found, str) else tuple(found)
    return None


def key_models(key: Key | None, provider: str) -> Sequence[str] | None:
    """The models `key` may use on `provider` (its provider entry's list, else its own); None
    when it may use any."""
    if key is None:
        return None
    allowed = key.allowed_models
    for kp in key.providers:
        if kp.provider == provider and kp.allowed_models is not None:
            allowed = kp.allowed_models
    return allowed


def candidates(engine: Engine, host: str, deployment: str, key: Key | None, provider: str) -> tuple[str, ...]:
    """The models a request to `deployment` may run, as the rules bound them. Raises
    `RequestParseError` when nothing bounds them."""
    found = mapped(engine.policy.azure_deployments, host, deployment)
    if found is not None:
        return found
    allowed = key_models(key, provider)
    if allowed and not any("*" in m for m in allowed):
        return tuple(allowed)
    raise RequestParseError(
        f"deployment '{deployment}' on {host} is not mapped to a model in the rules' azure_deployments, "
        "and nothing else bounds what it may run (the key may use "
        f"{'models named by globs' if allowed else 'any model'}), so its price cannot be bounded. "
        f"Map it (azure_deployments: {{{deployment}: <model>}}), or list the key's allowed_models."
    )


def priciest(models: Sequence[str], cost_of: Callable[[str], Decimal]) -> str:
    """The model of `models` whose worst case for the request (`cost_of`) is highest. A model
    that cannot be priced leaves the bound unknown: `RequestParseError`."""
    if len(models) == 1:
        return models[0]
    costs = []
    for model in models:
        try:
            costs.append((cost_of(model), model))
        except PricingError:
            raise RequestParseError(
                f"model '{model}', which the request may run as, has no price: it cannot be bounded"
            ) from None
    return max(costs, key=lambda c: c[0])[1]
