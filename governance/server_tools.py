"""Server-side tool loops: a request with server tools (web search, web fetch, file search, code
execution, MCP) or to a model that researches by design may run several sampling rounds on the
provider's side, each re-reading the context and generating output, and the usage of every
round adds up in the bill. One context window is no bound for that: each round is at most one
context window of input and one output cap of output, and a loop of `calls` tool calls has at
most `calls + 1` rounds (every round but the last makes at least one call).

The calls a request allows come from its own bound (OpenAI `max_tool_calls`, across every
built-in tool; Anthropic `max_uses`, per tool). A request with no bound is assumed to make
`estimate.server_tool_uses` calls per unbounded tool, and that bound is written into the
forwarded request wherever the API takes one, so the provider enforces what was reserved; the
rules can refuse such requests instead (`estimate.unbounded_tool_calls: refuse`)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from governance import refusals
from governance.matching import model_matches
from governance.pricing import context_window
from governance.tables import load_table
from governance.types import UNBOUNDED, Refusal, RequestInfo

#: The context window Anthropic's `context-1m` beta opens, whatever genai-prices says.
LONG_CONTEXT_TOKENS = 1_000_000

#: The most calls a request may declare that are read as a bound (larger is no bound at all).
MAX_DECLARED_CALLS = 10_000

# OpenAI Responses built-in tools that the provider runs on its side, in a loop of its own.
_OPENAI_LOOP_TOOLS = frozenset(
    {"web_search", "web_search_preview", "file_search", "code_interpreter", "mcp", "image_generation"}
)
# Anthropic server tools (type prefixes) and which of them take `max_uses`.
_ANTHROPIC_LOOP_TOOLS = ("web_search", "web_fetch", "code_execution", "mcp", "tool_search")
_ANTHROPIC_MAX_USES = ("web_search", "web_fetch")


@dataclass(frozen=True)
class ToolLoop:
    """The server tool loop a request may run."""

    calls: int  # the most tool calls, bounded or assumed
    assumed: bool  # some tool had no bound of its own: `calls` counts the rules' assumption
    enforced: bool  # every assumed bound can be written into the request (see `with_bound`)

    @property
    def rounds(self) -> int:
        """The most sampling rounds: one after each call, and the first."""
        return self.calls + 1


def _declared(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DECLARED_CALLS:
        return value
    return None


def _tools(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tools = body.get("tools")
    return [t for t in tools if isinstance(t, Mapping)] if isinstance(tools, list) else []


def _openai_loops(tool: Mapping[str, Any]) -> bool:
    kind = tool.get("type")
    if not isinstance(kind, str):
        return False
    return kind in _OPENAI_LOOP_TOOLS or kind.split("_20", 1)[0] in _OPENAI_LOOP_TOOLS


def _anthropic_kind(tool: Mapping[str, Any]) -> str | None:
    kind = tool.get("type")
    if isinstance(kind, str) and kind.startswith(_ANTHROPIC_LOOP_TOOLS):
        return kind
    return None


def tool_loop(
    family: str, api: str, body: Mapping[str, Any], model: str, *, assume: int, looping: list[str]
) -> ToolLoop | None:
    """The tool loop `body` allows, or None when it runs none. `assume`: the calls counted for
    a tool (or request) with no bound of its own. `looping`: globs of models that loop by design."""
    if family == "openai" and api == "responses":
        loops = any(_openai_loops(t) for t in _tools(body)) or any(model_matches(g, model) for g in looping)
        if not loops:
            return None
        declared = _declared(body.get("max_tool_calls"))
        if declared is not None:
            return ToolLoop(declared, assumed=False, enforced=True)
        return ToolLoop(assume, assumed=True, enforced=True)
    if family == "anthropic":
        calls, assumed, enforced, loops = 0, False, True, False
        for tool in _tools(body):
            kind = _anthropic_kind(tool)
            if kind is None:
                continue
            loops = True
            declared = _declared(tool.get("max_uses"))
            if declared is not None:
                calls += declared
            else:
                calls, assumed = calls + assume, True
                enforced = enforced and kind.startswith(_ANTHROPIC_MAX_USES)
        if body.get("mcp_servers"):  # the MCP connector: its calls take no bound
            calls, assumed, enforced, loops = calls + assume, True, False, True
        if not loops and any(model_matches(g, model) for g in looping):
            loops, calls, assumed, enforced = True, assume, True, False
        if loops and not enforced:
            # Nothing in the request holds the provider to the assumed calls: its own loop limit
            # does, so never count fewer (an operator may assume fewer calls than it allows).
            calls = max(calls, shipped().anthropic_loop_iterations)
        return ToolLoop(calls, assumed, enforced) if loops else None
    return None


def with_bound(family: str, api: str, body: Mapping[str, Any], assume: int) -> dict[str, Any] | None:
    """`body` with the assumed bound written where the request set none (OpenAI `max_tool_calls`;
    Anthropic `max_uses` on each web search and web fetch tool), or None if nothing changes."""
    if family == "openai" and api == "responses":
        if _declared(body.get("max_tool_calls")) is not None:
            return None
        return {**body, "max_tool_calls": assume}
    if family != "anthropic":
        return None
    if not isinstance(body.get("tools"), list):
        return None
    changed = False
    tools: list[Any] = []
    for tool in body["tools"]:
        kind = _anthropic_kind(tool) if isinstance(tool, Mapping) else None
        if kind and kind.startswith(_ANTHROPIC_MAX_USES) and _declared(tool.get("max_uses")) is None:
            tool, changed = {**tool, "max_uses": assume}, True
        tools.append(tool)
    return {**body, "tools": tools} if changed else None


class ServerToolTable(BaseModel):
    """`rules/server_tools.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    looping_models: list[str] = []
    anthropic_loop_iterations: int = 10
    """The sampling iterations Anthropic's server-side tool loop runs before it stops with
    `pause_turn`: the bound on calls of a tool no `max_uses` can limit."""


@functools.cache
def load(path: Path) -> ServerToolTable:
    """The table at `path`. Raises `PolicyError`: a proxy without it must not start."""
    return load_table(path, ServerToolTable, "server tool table")


def shipped() -> ServerToolTable:
    """The shipped `rules/server_tools.yaml`."""
    from governance import RULES_DIR

    return load(RULES_DIR / "server_tools.yaml")


def bound_input(info: RequestInfo, known: Mapping[str, int], *, refuse: bool) -> RequestInfo | Refusal:
    """Add the input the provider keeps on its side: the stored size of a previous response
    or conversation this ledger saw settle, and for anything it cannot count (an id it never
    saw, a stored prompt, a file by id, a server tool's results) the model's whole context
    window, or a refusal when the rules say so (`refuse`). `known`: the sizes this ledger saw
    settle of the context ids the request names. A server tool loop re-reads up to a whole
    context window in each of its rounds."""
    if info.tool_calls == UNBOUNDED:
        return refusals.unbounded_tool_calls(info.server_input or "a model that researches by design")
    if not info.server_context and info.server_input is None and info.tool_rounds == 1:
        return info
    reasons = [info.server_input] if info.server_input else []
    unseen = [i for i in info.server_context if i not in known]
    if unseen:
        reasons.append(f"{', '.join(unseen)} that this proxy never saw")
    input_tokens = info.input_tokens + max(known.values(), default=0)
    if info.tool_rounds > 1 and not reasons:
        reasons.append("a server-side tool loop")
    if reasons:
        why = "; ".join(reasons)
        window = context_window(info.provider, info.model)
        if window is not None and info.long_context:
            window = max(window, LONG_CONTEXT_TOKENS)
        if refuse or window is None:
            bound = (
                "the rules refuse such input"
                if window is not None
                else "the model's context window is unknown"
            )
            return refusals.unbounded_server_input(why, bound)
        # Each round of a server tool loop re-reads up to a whole context window.
        input_tokens = max(input_tokens, window) * info.tool_rounds
    return replace(info, input_tokens=input_tokens)
