"""Every refusal spendfuse makes, but the budget's and the multiplier cap's (they carry numbers
and live with their checks): the rule it names, its machine-readable code, its kind (which
`rules/refusal_shapes.yaml` maps to each provider's status and error type) and the message the
client sees. One place, so a rule's name and wording never drift between the modules that
refuse."""

from __future__ import annotations

from collections.abc import Sequence

from governance.errors import PricingError
from governance.families import FAMILIES
from governance.types import Endpoint, Refusal, RefusalKind


def _refusal(rule: str, code: str, kind: RefusalKind, message: str) -> Refusal:
    return Refusal(rule=rule, code=code, kind=kind, message=message)


def internal(what: str) -> Refusal:
    return _refusal(
        "internal_error",
        "spendfuse_internal_error",
        RefusalKind.UNAVAILABLE,
        f"spendfuse: refused because the proxy hit an internal error ({what}); the request was not "
        f"forwarded. See the proxy's log.",
    )


def ledger_unavailable(error: Exception) -> Refusal:
    return _refusal(
        "ledger",
        "ledger_unavailable",
        RefusalKind.UNAVAILABLE,
        f"spendfuse: refused because the spend ledger is unavailable ({error}); the request was not "
        f"forwarded.",
    )


def parse(message: str) -> Refusal:
    return _refusal(
        "request_parse",
        "invalid_request",
        RefusalKind.INVALID,
        f"spendfuse: cannot meter this request: {message}",
    )


def unpriced_model(error: PricingError) -> Refusal:
    return _refusal("pricing", "model_not_priced", RefusalKind.INVALID, f"spendfuse: refused: {error}")


def unpriced_tool_fees(tools: Sequence[str]) -> Refusal:
    return _refusal(
        "unpriced_tool",
        "tool_fees_not_metered",
        RefusalKind.INVALID,
        f"spendfuse: refused: {', '.join(tools)} is billed per use at a price this proxy does not meter. "
        f"An operator can let such tools through with `estimate.unpriced_tool_fees: allow`.",
    )


def unbounded_server_input(why: str, bound: str) -> Refusal:
    return _refusal(
        "server_input",
        "unbounded_server_input",
        RefusalKind.INVALID,
        f"spendfuse: refused: this request's input includes what the provider keeps on its side ({why}), "
        f"which cannot be counted before it runs, and {bound}.",
    )


def unbounded_tool_calls(tools: str) -> Refusal:
    return _refusal(
        "server_tools",
        "unbounded_tool_calls",
        RefusalKind.INVALID,
        f"spendfuse: refused: this request lets the provider run server tools in a loop ({tools}) "
        f"with no bound on their calls (set `max_tool_calls`, or `max_uses` on each tool), and the "
        f"rules refuse such requests.",
    )


def egress(host: str, port: int | None) -> Refusal:
    where = f"{host}:{port}" if port else host
    return _refusal(
        "egress",
        "egress_denied",
        RefusalKind.FORBIDDEN,
        f"spendfuse: {where} is not on this sandbox's egress allowlist, so the connection is refused. "
        f"An operator can add it under `egress.allow` in the rules.",
    )


def unmetered_endpoint(method: str, endpoint: Endpoint) -> Refusal:
    return _refusal(
        "unmetered_endpoint",
        "endpoint_not_metered",
        RefusalKind.FORBIDDEN,
        f"spendfuse: {method} {endpoint.host}{endpoint.path} ({endpoint.family}) is billable but not "
        f"metered by this proxy, so it is refused. An operator can let it through with `allow_unmetered` "
        f"in the rules.",
    )


def upgrade(tokens: Sequence[str]) -> Refusal:
    if any(t.split("/", 1)[0] == "websocket" for t in tokens):
        return _refusal(
            "websocket",
            "websocket_not_supported",
            RefusalKind.UPGRADE,
            "spendfuse: this WebSocket connection to an LLM API is not metered (only the Responses "
            "API's, under the rules' `websockets: meter`); use HTTP streaming (Codex CLI falls back "
            "to it at once).",
        )
    return _refusal(
        "upgrade",
        "upgrade_not_supported",
        RefusalKind.UPGRADE,
        f"spendfuse: protocol upgrades to LLM APIs ({', '.join(tokens)}) are not metered, so they are "
        f"refused; send plain HTTP requests.",
    )


def host_mismatch(reason: str) -> Refusal:
    return _refusal(
        "host_mismatch", "host_names_disagree", RefusalKind.FORBIDDEN, f"spendfuse: refused: {reason}."
    )


def raw_transport(protocol: str, host: str) -> Refusal:
    return _refusal(
        "raw_transport",
        "raw_transport_refused",
        RefusalKind.FORBIDDEN,
        f"spendfuse: a {protocol} connection to {host} is refused: bytes to an LLM API must be HTTP that "
        f"spendfuse can meter",
    )


def rewritten() -> Refusal:
    return _refusal(
        "rewritten",
        "request_rewritten",
        RefusalKind.FORBIDDEN,
        "spendfuse: refused: another addon rewrote this request after spendfuse decided on it (its target "
        "or its priced body changed), so it is not forwarded.",
    )


def unknown_llm_host(method: str, host: str, path: str, *, metering: bool = False) -> Refusal:
    """An LLM-shaped request to a host missing from the host table. The message says how to add
    the host, since the operator reading it is the one who can."""
    why = (
        f"is metered as OpenAI-compatible (`unknown_llm_hosts: meter`), but {path} is no OpenAI route "
        f"spendfuse meters"
        if metering
        else "is not in spendfuse's table of LLM hosts"
    )
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in host) or "my-llm"
    return _refusal(
        "unknown_llm_host",
        "unknown_llm_host",
        RefusalKind.FORBIDDEN,
        f"spendfuse: {method} {host}{path} looks like a call to an LLM API, and {host} {why}, so it is "
        f"refused. If it is an LLM API, an operator can add it under `hosts:` in the rules with its API "
        f"family and a price:\n"
        f"hosts:\n"
        f"  - name: {slug}\n"
        f'    match: ["{host}"]\n'
        f"    family: openai    # {' | '.join(FAMILIES)} (null: known, refused)\n"
        f"    base_path: /v1\n"
        f"    default_price: {{input_mtok: 1.0, output_mtok: 4.0}}\n"
        f"or set `unknown_llm_hosts: meter` (OpenAI-compatible, at `default_price`) or `pass`.",
    )


def method_override(method: str, claims: Sequence[str]) -> Refusal:
    return _refusal(
        "method_override",
        "method_override_refused",
        RefusalKind.FORBIDDEN,
        f"spendfuse: refused: this {method} request asks the server to run it as {', '.join(claims)} (a "
        f"method override header or parameter). On an LLM API a request is judged by the method it "
        f"asks for; send that method itself.",
    )


def read_with_body(method: str) -> Refusal:
    return _refusal(
        "method_override",
        "read_with_body_refused",
        RefusalKind.FORBIDDEN,
        f"spendfuse: refused: a {method} request to an LLM API carries a body. A read has no body; send "
        f"a request that runs something as POST.",
    )


def gateway_unrouted(method: str, target: str, why: str) -> Refusal:
    return _refusal(
        "gateway",
        "gateway_no_route",
        RefusalKind.NOT_FOUND,
        f"spendfuse: {method} {target} was not forwarded: {why}. The gateway serves the path "
        f"prefixes in rules/gateway.yaml (such as /openai/v1, /anthropic, /genai and /v1).",
    )


def runaway(limit: int) -> Refusal:
    """A stream cut because its output passed what its reservation covered."""
    return _refusal(
        "runaway_stream",
        "stream_over_reservation",
        RefusalKind.QUOTA,
        f"spendfuse: the stream was cut because its output passed the {limit} tokens its "
        f"reservation covered (the request's output cap); it was charged its reservation.",
    )
