"""The provider token-counter client: asks a provider's free input counter, through this proxy,
with the caller's own credentials (or the custody key its request is sent with), when a refusal
or a price tier hinges on the estimate."""

import logging
import uuid
from dataclasses import replace
from pathlib import Path

from mitmproxy import ctx, http
from mitmproxy.proxy import mode_specs

from governance import families
from governance.engine import Engine
from governance.identity import Identity
from governance.injection import Plan
from governance.mitm.state import State
from governance.reading import ReadRequest

logger = logging.getLogger("spendfuse")

# Meant for spendfuse alone: never forwarded to anyone.
# The proxy's own request to a provider's token counter, on behalf of an admitted caller.
INTERNAL_HEADER = "x-spendfuse-internal"


class CounterClient:
    """Asks the counter. While a count is asked for, the caller it is asked for is known by a
    one-time token (in `state.internal`), so the counter's request passes identity as they did."""

    def __init__(self, state: State) -> None:
        self.state = state

    def caller(self, flow: http.HTTPFlow) -> tuple[Identity, Plan | None] | None:
        """The caller a counter request of this proxy's own is made for, and the custody plan
        of the caller's request (the counter is asked with the same custody key), or None."""
        return self.state.internal.get(flow.request.headers.get(INTERNAL_HEADER, ""))

    async def count_input(
        self,
        flow: http.HTTPFlow,
        engine: Engine,
        read: ReadRequest,
        counter: tuple[str, dict],
        who: Identity,
        family: str,
        plan: Plan | None = None,
    ) -> ReadRequest:
        """`read` with the provider's own count of its input (with the rules' counter margin)
        when the counter answers one; otherwise `read`: never a guess lower than the estimate.
        The counter's request goes through this proxy like any other (a free endpoint, screened
        and routed as usual)."""
        # The family names the counter's path for this request's path (Google's `:countTokens`
        # replaces the request's method); `counter` is its body for the request's own route.
        assert read.body is not None
        found = families.FAMILIES[family].counter_request(read.info.api, flow.request.path, read.body)
        if found is None:
            return read
        path, body = found
        counted = await self._ask(flow, path, body, (who, plan), family)
        if counted is None:
            return read
        logger.info(
            "spendfuse: %s near a limit or a price tier: the provider counts %d input tokens (estimated %d)",
            read.info.request_id,
            counted,
            read.info.input_tokens,
        )
        return replace(read, info=engine.with_counted_input(read.info, counted))

    async def _ask(
        self, flow: http.HTTPFlow, path: str, body: dict, caller: tuple[Identity, Plan | None], family: str
    ) -> int | None:
        """POST `body` to `path` on the flow's own target, through this proxy, with the flow's
        credentials. The count, or None on any failure."""
        import httpx

        port = own_port()
        if port is None:
            return None
        headers = {k: v for k, v in flow.request.headers.items() if k.lower() in families.COUNTER_HEADERS}
        # The counter's request is the caller's: it passes identity (require_key, key access)
        # as the caller did, is sent with the caller's custody key, and the token ends with this call.
        token = uuid.uuid4().hex
        headers[INTERNAL_HEADER] = token
        self.state.internal[token] = caller
        url = f"{flow.request.scheme}://{flow.request.host}:{flow.request.port}{path}"
        ca = Path(ctx.options.confdir).expanduser() / "mitmproxy-ca-cert.pem"
        try:
            async with httpx.AsyncClient(
                proxy=f"http://127.0.0.1:{port}", verify=str(ca), timeout=10
            ) as client:
                answer = await client.post(url, json=body, headers=headers)
            answered = answer.json() if answer.status_code == 200 else None
            counted = families.FAMILIES[family].read_counter_response(answer.status_code, answered)
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            logger.warning("spendfuse: the provider's token counter failed (%s); keeping the estimate", e)
            return None
        finally:
            self.state.internal.pop(token, None)
        if counted is None:
            logger.warning(
                "spendfuse: the provider's token counter answered %s; keeping the estimate",
                answer.status_code,
            )
        return counted


def own_port() -> int | None:
    """The port of this proxy's regular (HTTP proxy) listener, or None."""
    proxyserver = ctx.master.addons.get("proxyserver")
    for server in getattr(proxyserver, "servers", ()):
        if isinstance(server.mode, mode_specs.RegularMode):
            for address in server.listen_addrs:
                return int(address[1])
    return None
