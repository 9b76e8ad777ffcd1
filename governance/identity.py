"""Who is calling. Pure: the credentials a request carries, and the rules' keys, give a principal
(and the key it proved), or a refusal.

The principal comes from the first of:
1. proxy credentials (`HTTPS_PROXY=http://KEY:SECRET@host:port`), seen on the CONNECT and applied
   to every request of that connection;
2. a key header, `x-spendfuse-key` (or Bifrost's `x-bf-vk`) carrying the key's secret;
3. a virtual key: a key's secret where the client puts its provider API key (`Authorization:
   Bearer`, `x-api-key`, `x-goog-api-key`, `api-key`), recognised by its hash;
4. the listener the client arrived on (port or mitmproxy mode spec) bound to a key;
5. a salted hash of the upstream API key;
6. `default`.

Whatever source names the principal, `Identity.virtual_api_key` says whether the provider API key
the request carries is a virtual key: such a request is only forwarded with a custody key in its
place (`governance.injection`), so a virtual key never reaches a provider.

Once the rules define keys, a claimed key must prove itself: proxy credentials need the key's
secret (else 407), and a key header must carry a known secret (else the API's own 401). Without
keys, names are taken as given, as labels for the ledger. `require_key` refuses anyone who
proved no key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from governance.limits import Key
from governance.scopes import Scopes
from governance.types import Refusal, RefusalKind

#: Headers that carry a key's secret, in the order they are read. Both are stripped before forwarding.
KEY_HEADERS = ("x-spendfuse-key", "x-bf-vk")


@dataclass(frozen=True)
class Credentials:
    """What a request presents about who sends it."""

    proxy_user: str | None = None
    proxy_secret: str | None = None
    key_header: str | None = None
    key_header_name: str | None = None  # which of KEY_HEADERS carried it
    listeners: tuple[str, ...] = ()  # the port and the mode spec the client arrived on
    api_key: str | None = None


@dataclass(frozen=True)
class Identity:
    """The principal a request is recorded under, and the key it proved (None: no key)."""

    principal: str
    key: Key | None = None
    virtual_api_key: bool = False  # the provider API key it carries is a key's secret


def _salted(secret: str, salt: str) -> str:
    """A short salted hash: the same secret gives the same principal in one ledger, and the
    ledger never holds anything that could be matched against a leaked key list."""
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()[:16]


def api_key_principal(api_key: str, salt: str) -> str:
    """The principal of a client known only by its upstream API key."""
    return "apikey:" + _salted(api_key, salt)


def _refusal(kind: RefusalKind, code: str, message: str) -> Refusal:
    return Refusal(rule="identity", code=code, kind=kind, message=f"spendfuse: {message}")


def identify(creds: Credentials, scopes: Scopes, *, salt: str, require_key: bool) -> Identity | Refusal:
    """The caller's identity under the rules' keys, or the refusal of a claim that does not prove
    itself. See the module docstring for the order."""
    if scopes.has_keys:
        # Hashed only when keys are defined and the request carries a provider key.
        virtual = scopes.key_by_secret(creds.api_key) if creds.api_key else None
        is_virtual = virtual is not None
        if creds.proxy_user is not None:
            key = scopes.key_with_secret(creds.proxy_user, creds.proxy_secret or "")
            if key is None:
                return _refusal(
                    RefusalKind.PROXY_AUTH,
                    "proxy_auth_failed",
                    f"the proxy credentials for key '{creds.proxy_user}' are wrong "
                    "(unknown key or wrong secret).",
                )
            return Identity(f"key:{key.id}", key, is_virtual)
        if creds.key_header is not None:
            key = scopes.key_by_secret(creds.key_header.strip())
            if key is None:
                return _refusal(
                    RefusalKind.AUTH,
                    "invalid_key",
                    "the key in the x-spendfuse-key (or x-bf-vk) header is unknown.",
                )
            return Identity(f"key:{key.id}", key, is_virtual)
        if virtual is not None:
            return Identity(f"key:{virtual.id}", virtual, True)
        key = scopes.key_by_listener(creds.listeners)
        if key is not None:
            return Identity(f"key:{key.id}", key)
    elif not require_key:  # without keys, names are labels; with require_key nobody proves a key
        if creds.proxy_user:
            return Identity(f"proxy:{creds.proxy_user}")
        if creds.key_header and creds.key_header_name == "x-bf-vk":
            # A Bifrost virtual key is a secret: never a label in the ledger.
            return Identity("header:" + _salted(creds.key_header.strip(), salt))
        if creds.key_header:
            return Identity(f"header:{creds.key_header.strip()}")
    if require_key:
        return _refusal(
            RefusalKind.AUTH,
            "key_required",
            "this proxy requires a key: set HTTPS_PROXY=http://KEY:SECRET@host:port, or send the key's "
            "secret in the x-spendfuse-key header.",
        )
    if creds.api_key:
        return Identity(api_key_principal(creds.api_key, salt))
    return Identity("default")
