"""Cross-reference checks of Azure's rules: every model a deployment may run has a price, and a
custody key for a host whose names are customers' own resources names the hosts it may go to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import genai_prices

from governance.hostrules import host_table
from governance.matching import lookup_model
from governance.rulefile import Problem

if TYPE_CHECKING:
    from governance.policymodel import Policy

#: The provider Azure deployments are priced as.
AZURE = "azure"


def deployment_problems(p: Policy) -> list[Problem]:
    """A deployment mapped to a model nothing prices could never be reserved: refused at load."""
    out: list[Problem] = []
    for name, models in p.azure_deployments.items():
        for model in [models] if isinstance(models, str) else models:
            if _priced(p, model):
                continue
            out.append(
                Problem(
                    ("azure_deployments", name),
                    f"model {model!r} has no price (genai-prices {AZURE!r}, `prices` or `default_price`)",
                )
            )
    return out


def _priced(p: Policy, model: str) -> bool:
    if lookup_model(p.prices, model) is not None or p.default_price is not None:
        return True
    try:
        genai_prices.data_snapshot.get_snapshot().find_provider_model(model, None, AZURE, None)
    except LookupError:
        return False
    return True


def credential_host_problems(p: Policy) -> list[Problem]:
    """A credential of a provider whose hosts are customers' own (Azure) that names no `hosts:`
    would go to any resource an agent creates: refused at load."""
    owned = {e.provider for e in host_table(p.hosts).entries if e.customer_hosts and e.provider}
    return [
        Problem(
            ("credentials", i, "hosts"),
            f"credential {c.id!r} of provider {c.provider!r} must name the hosts it may be sent to "
            f"(hosts: [myresource.openai.azure.com]): every name under that provider's domains is a "
            "customer's own resource, and an agent could create one",
        )
        for i, c in enumerate(p.credentials)
        if c.provider in owned and c.hosts is None
    ]
