"""Which custody key an LLM request is sent with, or why it is refused. Pure.

A custody key (`governance.keyring`) is only ever sent to a host of its own provider in the
shipped hosts table: never to an operator's host, an unknown host, or a host of another
provider, so an agent cannot have a key sent to a host it controls. The request's own provider
credentials (every API key header, and Google's `key` query parameter) are then removed, so the
provider receives exactly the custody key, in its own header (`ErrorEnvelope.auth`).

- A request carrying a virtual key (a key's secret as its API key) is forwarded only with a
  custody key: with none for its provider and model it is refused, never sent on.
- `custody: required`: a request carrying any other provider key (a stray real key) is refused;
  one that carries none gets a custody key, and is refused when none can serve it.
- `custody: optional` (the default): a request carrying a real key is sent with it; one that
  carries none gets a custody key when one serves it.
- A key is only sent over TLS: a plain-HTTP request that would get one is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from governance.families import ENVELOPES, Auth
from governance.identity import Identity
from governance.keyring import HeldKey, Keyring
from governance.types import Endpoint, Refusal, RefusalKind


@dataclass(frozen=True)
class Plan:
    """What to do with a request's provider credentials at the end of the addon chain."""

    key: HeldKey | None  # send this key (in `auth`'s header); None: send none of ours
    auth: Auth | None
    strip: bool  # remove the request's own provider credentials (replaced, or a virtual key)


#: Forward the request's credentials as they are.
UNTOUCHED = Plan(None, None, False)


def _refusal(kind: RefusalKind, code: str, message: str) -> Refusal:
    return Refusal(rule="custody", code=code, kind=kind, message=f"spendfuse: {message}")


def stray_key() -> Refusal:
    return _refusal(
        RefusalKind.AUTH,
        "custody_required",
        "this proxy holds the provider keys (custody: required), so a request may not bring a "
        "provider API key of its own. Use your spendfuse key as the API key (or send it in "
        "x-spendfuse-key, or as proxy credentials); spendfuse sends the provider key.",
    )


def no_custody_key(endpoint: Endpoint, provider: str | None, model: str | None, virtual: bool) -> Refusal:
    why = (
        "it authenticates with a virtual key, which is never sent to a provider"
        if virtual
        else "custody is required"
    )
    serves = f"provider '{provider}'" if provider else "this host (not a provider host of the hosts table)"
    if model:
        serves += f" and model '{model}'"
    return _refusal(
        RefusalKind.FORBIDDEN,
        "no_custody_key",
        f"no custody key (credentials:) this key may use serves {serves} on {endpoint.host}, and "
        f"{why}. Add a credential for it to the rules, or allow this key one.",
    )


def cleartext(endpoint: Endpoint) -> Refusal:
    return _refusal(
        RefusalKind.FORBIDDEN,
        "custody_needs_tls",
        f"a custody key is only sent over TLS, and this request to {endpoint.host} is plain HTTP. "
        "Use https://.",
    )


def plan(
    keyring: Keyring,
    custody: str,
    providers: Mapping[str, str],
    endpoint: Endpoint,
    model: str | None,
    who: Identity,
    has_api_key: bool,
    tls: bool,
    named: frozenset[str] = frozenset(),
) -> Plan | Refusal:
    """What a request for `endpoint` (and `model`, when it names one), sent by `who`, is sent
    with. `providers`: the shipped host entries custody keys may be sent to, by name, with their
    provider; `has_api_key`: the request carries a provider credential; `tls`: it goes to its
    host over TLS (a key is never sent in cleartext); `named`: entries whose hosts are customers'
    own resources, where only a key whose credential names the request's host is sent."""
    virtual = who.virtual_api_key
    if has_api_key and not virtual:
        return stray_key() if custody == "required" else UNTOUCHED
    need = virtual or custody == "required"
    provider = providers.get(endpoint.entry)
    auth = (
        ENVELOPES[endpoint.envelope].auth(provider) if provider and endpoint.envelope in ENVELOPES else None
    )
    held = None
    if provider is not None and auth is not None:
        allowed = who.key.credentials if who.key is not None else None
        held = keyring.choose(provider, model, allowed, endpoint.host, named_only=endpoint.entry in named)
    if held is None:
        return no_custody_key(endpoint, provider, model, virtual) if need else UNTOUCHED
    return Plan(held, auth, True) if tls else cleartext(endpoint)
