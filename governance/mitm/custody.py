"""Custody keys on the wire: the provider's credentials a request carries are removed and the
custody key the engine chose is put in the provider's own header (`governance.injection`),
at the very end of the addon chain (the transport guard), so no other addon's request hook sees
it. Once the request is sent (its response headers came, or it failed), the flow's copy of the
key is replaced by a placeholder naming the credential, before mitmproxy's own addons (saving,
display, dumping) see the flow: those run after spendfuse's hooks."""

from dataclasses import dataclass

from mitmproxy import http

from governance import families
from governance.families.google import API_KEY_QUERY
from governance.injection import Plan


@dataclass(frozen=True)
class Injected:
    """Where a custody key was put, for its redaction."""

    header: str
    placeholder: str


def strip_credentials(request: http.Request) -> None:
    """Remove every provider credential the request carries: each API key header, and Google's
    `key` query parameter."""
    for name in families.API_KEY_HEADERS:
        request.headers.pop(name, None)
    if API_KEY_QUERY + "=" in request.path and API_KEY_QUERY in request.query:
        del request.query[API_KEY_QUERY]


def inject(request: http.Request, plan: Plan) -> Injected | None:
    """Carry out `plan` on the request about to be sent."""
    if plan.strip:
        strip_credentials(request)
    if plan.key is None or plan.auth is None:
        return None
    request.headers[plan.auth.header] = plan.auth.value(plan.key.secret.reveal())
    return Injected(plan.auth.header, plan.auth.value(f"<spendfuse custody key '{plan.key.id}'>"))


def redact(request: http.Request, injected: Injected) -> None:
    """Replace the sent key in the flow by its placeholder."""
    request.headers[injected.header] = injected.placeholder
