"""What the proxy side is told to do: answer a request with a refusal, or let it pass.

Dry run is decided here, once: a refusal in dry run is logged and not carried out. An answer is
a refusal rendered in the envelope its endpoint's clients understand. Pure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from governance import wire
from governance.clients import ClientShapes, client_shape
from governance.types import Endpoint, Metering, Refusal

logger = logging.getLogger("spendfuse")


@dataclass(frozen=True)
class Answer:
    """A response to send instead of forwarding: the refusal in its provider's envelope."""

    status: int
    headers: dict[str, str]
    body: bytes


def enforced(refusal: Refusal | None, *, dry_run: bool, what: str) -> Refusal | None:
    """The refusal to carry out: `refusal`, or None in dry run (which logs what it would do)."""
    if refusal is not None and dry_run:
        logger.warning("spendfuse: dry run: would refuse %s: %s", what, refusal.message)
        return None
    return refusal


def answer(
    endpoint: Endpoint | None,
    host: str,
    path: str,
    refusal: Refusal,
    reference: str,
    *,
    headers: Callable[[str], list[str]] | None = None,
    clients: Sequence[ClientShapes] = (),
) -> Answer:
    """The answer to a refused request; `endpoint` None: not LLM traffic (a generic envelope).
    Given the request's `headers` (a `get_all`), a client in `clients` that needs its own shape
    gets it (`governance.clients`); a status the rules' `refusal_codes` set still wins."""
    ep = endpoint or unknown_endpoint(host, path)
    found = client_shape(clients, ep.envelope, refusal.kind, headers) if headers is not None else None
    if found is not None:
        refusal = replace(refusal, client=found[0], shape=found[1])
    status, headers_out, body = wire.render_error(ep, refusal, reference)
    return Answer(refusal.status or status, headers_out, body)


def unknown_endpoint(host: str, path: str) -> Endpoint:
    """The endpoint a refusal of traffic that is not a known LLM API is rendered for."""
    return Endpoint("unknown", "", Metering.UNMETERED, host, path)
