"""What the addons remember between hooks: one state object per flow and one per client
connection, shared by the fuse hooks and the transport guard (no table keyed by id per fact)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mitmproxy import http

from governance.engine import Engine
from governance.gate import Action, Verdict
from governance.identity import Identity
from governance.injection import Plan
from governance.types import Decision, Endpoint, Metering, RequestInfo
from governance.verdicts import Answer
from governance.wire.tap import StreamTap


@dataclass
class Pending:
    """An allowed flow's reservation, kept off `flow.metadata` (which is copied and serialised)."""

    info: RequestInfo
    endpoint: Endpoint
    flow: http.HTTPFlow
    engine: Engine  # the one that reserved it: a reconfigured proxy settles in the same ledger
    tap: StreamTap | None = None
    decision: Decision | None = None


@dataclass(frozen=True)
class Decided:
    """What spendfuse decided a forwarded request was, for the check at the end of the chain:
    the LLM endpoint it was for (host entry, API, metering; None: not LLM traffic), when metered
    the fingerprint of what it was priced from, and whom it was recorded under."""

    endpoint: tuple[str, str, Metering] | None
    body: int | None
    principal: str

    def still(self, verdict: Verdict) -> bool:
        """Whether a fresh verdict on the request is what was decided. Traffic passed as not LLM
        must still be neither LLM traffic nor refused (egress); LLM traffic must still be for the
        same host entry, API and metering (a free count turned into a billed call is not). The
        destination itself may change: a relay or a test harness sends it elsewhere."""
        ep = verdict.endpoint
        if self.endpoint is None:
            return ep is None and verdict.action is not Action.REFUSE
        return ep is not None and (ep.entry, ep.api, ep.metering) == self.endpoint


def decided_endpoint(endpoint: Endpoint) -> tuple[str, str, Metering]:
    return endpoint.entry, endpoint.api, endpoint.metering


@dataclass
class FlowState:
    """One flow, from its request until its response or error."""

    request_id: str | None = None  # the ledger's id for it, once one was needed
    pending: Pending | None = None  # its reservation, until settled
    answered: Answer | None = None  # the refusal it was answered with
    decided: Decided | None = None  # until the guard re-checks it at the end of the chain
    unadmitted_websocket: bool = False  # a WebSocket to an LLM host, being closed
    custody: Plan | None = None  # what to do with its provider credentials, at the end of the chain


@dataclass
class ConnState:
    """One client connection: what its CONNECT said."""

    proxy_user: tuple[str, str | None] | None = None  # CONNECT's proxy credentials
    connect_target: str | None = None  # the host it CONNECTed to


@dataclass
class State:
    flows: dict[str, FlowState] = field(default_factory=dict)
    conns: dict[str, ConnState] = field(default_factory=dict)
    # token -> the caller, and its request's custody plan, while the provider's counter is asked
    internal: dict[str, tuple[Identity, Plan | None]] = field(default_factory=dict)

    def flow(self, flow_id: str) -> FlowState:
        """The flow's state, created on first use."""
        fs = self.flows.get(flow_id)
        if fs is None:
            fs = self.flows[flow_id] = FlowState()
        return fs

    def end(self, flow_id: str) -> FlowState:
        """The flow's state, forgotten: its flow has ended."""
        return self.flows.pop(flow_id, None) or FlowState()

    def conn(self, conn_id: str) -> ConnState:
        cs = self.conns.get(conn_id)
        if cs is None:
            cs = self.conns[conn_id] = ConnState()
        return cs

    def connect_target(self, conn_id: str) -> str | None:
        cs = self.conns.get(conn_id)
        return cs.connect_target if cs is not None else None

    def pending(self, flow_id: str) -> Pending | None:
        fs = self.flows.get(flow_id)
        return fs.pending if fs is not None else None

    def take_pending(self) -> list[Pending]:
        """Every reservation still in flight, forgotten (at shutdown)."""
        taken = [fs.pending for fs in self.flows.values() if fs.pending is not None]
        for fs in self.flows.values():
            fs.pending = None
        return taken
