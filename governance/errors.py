"""The engine's own exceptions. Each maps to one fail-closed answer in the addon."""

from __future__ import annotations


class SpendfuseError(Exception):
    """Base class for every error the engine raises on purpose."""


class PolicyError(SpendfuseError):
    """The rules file (or an option overriding it) is invalid. The proxy must not start."""


class RequestParseError(SpendfuseError):
    """A request to a metered endpoint cannot be understood well enough to price it."""


class PricingError(SpendfuseError):
    """A model has no price and the rules set no `default_price`."""

    def __init__(self, model: str, provider: str) -> None:
        self.model = model
        self.provider = provider
        super().__init__(
            f"model {model!r} ({provider}) has no known price; add it under `prices:` in the rules "
            f"file, or set `default_price`"
        )


class LedgerUnavailable(SpendfuseError):
    """The ledger cannot be read or written. Requests are refused with 503 until it recovers."""
