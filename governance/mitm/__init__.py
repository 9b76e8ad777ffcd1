"""spendfuse's mitmproxy side: the only code that imports mitmproxy.

Small addons and helpers with one job each; every decision is the engine's (`governance.engine`):

- `fuse`: the fuse hooks (`SpendFuse`): flows in, verdicts carried out;
- `guard`: the transport guard, last in the chain: raw relays and rewritten requests;
- `runtime`: configuration, the ledger thread, the rules watcher and the reaper;
- `watcher`: the rules file watcher; `counter`: the provider token-counter client;
- `options`: spendfuse's options; `state`: the per-flow and per-connection state they share;
- `translate`: flows to plain facts; `launcher`: the fail-closed `spendfuse run` and the CA.
"""

from governance.mitm.fuse import SpendFuse
from governance.mitm.guard import TransportGuard

__all__ = ["SpendFuse", "TransportGuard"]
