"""Custody keys on the wire: the provider's credentials a request carries are removed and the
custody key the engine chose is put in the provider's own header (`governance.injection`),
at the very end of the addon chain (the transport guard), so no other addon's request hook sees
it. Once the request is sent (its response headers came, or it failed, or the proxy stops), the
flow's copy of the key is replaced by a placeholder naming the credential (`Redactor`), before
mitmproxy's own addons that save, show or print flows (Save, View, Dumper) see the flow: they
come after spendfuse in the chain (`-s` scripts load in ScriptLoader's place, and `spendfuse run`
puts the addon there too), and the redactor runs as spendfuse's own sub-addon."""

from dataclasses import dataclass, field

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


@dataclass
class Redactor:
    """Redacts the custody keys of sent requests in their flows: a sub-addon of `SpendFuse`, so
    its hooks run right after the fuse's, before mitmproxy's Save, View and Dumper."""

    name = "spendfuse_custody_redactor"
    # flow id -> the flow a key was put in, and where: until the request is sent
    _sent: dict[str, tuple[http.HTTPFlow, Injected]] = field(default_factory=dict)

    def sending(self, flow: http.HTTPFlow, injected: Injected) -> None:
        """A custody key was put in `flow`'s request, about to be sent."""
        self._sent[flow.id] = (flow, injected)

    def _redact(self, flow: http.HTTPFlow) -> None:
        found = self._sent.pop(flow.id, None)
        if found is not None:
            redact(found[0].request, found[1])

    # Each comes after the request was sent (or will never be): the key is no longer needed.
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._redact(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._redact(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._redact(flow)

    def done(self) -> None:
        """Before Save writes the flows still in flight at shutdown."""
        for flow, injected in self._sent.values():
            redact(flow.request, injected)
        self._sent.clear()
