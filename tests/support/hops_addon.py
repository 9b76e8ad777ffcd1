"""Bench-only reference addon: the two ledger-thread round trips that DESIGN requires of
spendfuse (reserve before forwarding; settle committed before the flow ends), with nothing done
in them. `scripts/bench` runs it to show how much of spendfuse's overhead is those hand-offs
themselves rather than the work inside them. Never used outside the bench."""

from mitmproxy import http

from governance.ledger_thread import LedgerThread


def _nothing() -> None:
    return None


class LedgerHops:
    def __init__(self) -> None:
        self.thread = LedgerThread(name="bench-hops")

    async def request(self, flow: http.HTTPFlow) -> None:
        await self.thread.call(_nothing)

    async def response(self, flow: http.HTTPFlow) -> None:
        await self.thread.call(_nothing)

    def done(self) -> None:
        self.thread.close()


addons = [LedgerHops()]
