"""Carrying out an admission: a metered request is read, admitted (asking the provider's token
counter when a refusal hinges on it), and forwarded with the body the engine prepared, or
answered with the engine's refusal."""

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

from mitmproxy import http

from governance import decisions, refusals
from governance.decisions import Settled
from governance.engine import Engine
from governance.errors import RequestParseError
from governance.identity import Identity
from governance.injection import Plan
from governance.mitm import marks, translate
from governance.mitm.state import Decided, Pending, decided_endpoint
from governance.reading import ReadRequest
from governance.store import RequestRecord
from governance.types import Endpoint, Refusal

if TYPE_CHECKING:
    from governance.mitm.fuse import SpendFuse

logger = logging.getLogger("spendfuse")

# Bodies larger than this are parsed and tokenized off the event loop.
_OFFLOAD_BYTES = 64 * 1024
# So are bodies that carry a PDF (base64 of `%PDF-`): a small one can take pypdf a second to read.
_PDF_BASE64 = b"JVBERi0"


class Admission:
    """The metered path of `SpendFuse.request`. From an allowed decision on, the reservation is
    settled by the fuse's `response` or `error`, or released here if the flow cannot be forwarded."""

    def __init__(self, fuse: "SpendFuse") -> None:
        self.fuse = fuse

    async def _read(
        self, flow: http.HTTPFlow, endpoint: Endpoint, engine: Engine, who: Identity
    ) -> ReadRequest:
        """The request understood by the engine; large bodies (and PDFs) off the event loop."""
        request_id = translate.request_id(flow, self.fuse.state)
        key_id = who.key.id if who.key else None

        def read() -> ReadRequest:
            body, betas = translate.request_body(flow, endpoint.family)
            return engine.read_request(
                endpoint,
                body,
                principal=who.principal,
                request_id=request_id,
                betas=betas,
                key_id=key_id,
                line=translate.request_line(flow),
            )

        raw = flow.request.raw_content or b""
        # A compressed body's decoded size is not known until it is decoded.
        if len(raw) > _OFFLOAD_BYTES or _PDF_BASE64 in raw or "content-encoding" in flow.request.headers:
            return await asyncio.to_thread(read)
        return read()

    async def _understood(
        self, flow: http.HTTPFlow, endpoint: Endpoint, engine: Engine, who: Identity, has_api_key: bool
    ) -> tuple[ReadRequest, bytes | None, Plan] | None:
        """The request read, the body to forward (None: as it is) and the custody plan; or None
        once it was refused (a body that cannot be read, no custody key for it, a stray key)."""
        try:
            read = await self._read(flow, endpoint, engine, who)
            # Everything that can fail about the forwarded bytes fails before reserving.
            prepared = engine.encoded_forward_body(read)
            tls = flow.request.scheme == "https"
            plan = engine.custody(endpoint, read.info.model, who, has_api_key=has_api_key, tls=tls)
        except RequestParseError as e:
            plan = refusals.parse(str(e))
        if isinstance(plan, Refusal):
            rec = RequestRecord(
                translate.request_id(flow, self.fuse.state),
                who.principal,
                provider=endpoint.family,
                api=endpoint.api,
            )
            await self.fuse.refuse_early(flow, endpoint, rec, plan)
            return None
        return read, prepared, plan

    async def admit(
        self, flow: http.HTTPFlow, endpoint: Endpoint, engine: Engine, who: Identity, *, has_api_key: bool
    ) -> None:
        """Read, admit and forward (or answer) a metered request sent by `who` (`has_api_key`: it
        carries a provider credential of its own)."""
        understood = await self._understood(flow, endpoint, engine, who, has_api_key)
        if understood is None:
            return
        read, prepared, plan = understood
        counter = engine.counter_request(read, endpoint.family)
        decision = await self.fuse.on_ledger(
            functools.partial(engine.admit, read.info, translate.now(), count_may_help=counter is not None)
        )
        if decision.hinges_on_count:
            assert counter is not None
            read = await self.fuse.counter.count_input(
                flow, engine, read, counter, who, endpoint.family, plan
            )
            decision = await self.fuse.on_ledger(engine.admit, read.info, translate.now())
        if not decision.allowed:
            assert decision.refusal is not None
            self.fuse.answer(flow, endpoint, decision.refusal, read.info)
            return
        # Allowed: from here on the reservation must be settled by `response` or `error`, or
        # released here if the flow cannot be forwarded after all.
        marks.decided(flow, decisions.admitted(read.info, decision), self.fuse.runtime.observers)
        try:
            forward = engine.forward_bytes(read, decision, endpoint.family, prepared)
            if forward is not None:
                # The rewritten body goes as plain JSON: mitmproxy cannot re-encode every coding
                # a client may stack (`zstd, gzip`), and its provider reads plain JSON as well.
                flow.request.headers.pop("content-encoding", None)
                flow.request.content = forward
            # Read usage from plain bytes; the stream tap still decodes if an upstream compresses.
            flow.request.headers["accept-encoding"] = "identity"
            if decision.output_cap is not None:
                flow.metadata[marks.KEY]["injected_output_tokens"] = decision.output_cap
            fs = self.fuse.state.flow(flow.id)
            fs.custody = plan
            fs.pending = Pending(read.info, endpoint, flow, engine, decision=decision)
            fs.decided = Decided(
                decided_endpoint(endpoint), translate.priced_fingerprint(flow), who.principal
            )
        except Exception as e:
            request_id = read.info.request_id
            logger.exception("spendfuse: %s could not be forwarded after its reservation", request_id)
            what = type(e).__name__
            outcome = f"not forwarded: {what}"
            await self.fuse.on_ledger(
                functools.partial(engine.release, request_id, translate.now(), outcome=outcome)
            )
            released = decisions.settled(read.info, decision.reserved, Settled("released", outcome))
            marks.decided(flow, released, self.fuse.runtime.observers)
            self.fuse.fail(flow, endpoint, refusals.internal(what), read.info)
