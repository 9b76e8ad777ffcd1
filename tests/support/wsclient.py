"""A WebSocket client that speaks Codex CLI's handshake to `wss://api.openai.com/v1/responses`
through the proxy (CONNECT, TLS with the proxy's CA): `OpenAI-Beta: responses_websockets=…`,
`originator: codex_exec`, a `codex_exec` user agent; `response.create` frames in, the
Responses events out as text frames."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import wsproto
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.support.rawclient import TLSPipe, tunnel

CODEX_HEADERS = [
    (b"openai-beta", b"responses_websockets=2026-02-06"),
    (b"originator", b"codex_exec"),
    (b"user-agent", b"codex_exec/0.169.0 (Linux; x86_64)"),
    (b"authorization", b"Bearer sk-test"),
]
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


class CodexSocket:
    """One socket. `status`: 101 when upgraded, else the proxy's answer (`rejected` its body)."""

    def __init__(self, proxy_port: int, ca: Path, *, timeout: float = 15, api_key: str = "sk-test") -> None:
        sock, reply = tunnel(proxy_port, "api.openai.com:443")
        assert reply.status == 200, reply
        sock.settimeout(timeout)
        self.sock = sock
        self.pipe = TLSPipe(sock, "api.openai.com", ca)
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.pending: list[Any] = []
        self.status = 0
        self.rejected = b""
        headers = [(k, v) for k, v in CODEX_HEADERS if k != b"authorization"]
        headers.append((b"authorization", f"Bearer {api_key}".encode()))
        self._send(Request(host="api.openai.com", target="/v1/responses", extra_headers=headers))
        while self.status == 0:
            for event in self._events():
                if isinstance(event, AcceptConnection):
                    self.status = 101
                elif isinstance(event, RejectConnection):
                    self.status = event.status_code
                    if not event.has_body:
                        break
                elif isinstance(event, RejectData):
                    self.rejected += event.data
                    if not event.body_finished:
                        continue
                else:
                    self.pending.append(event)
        if self.status != 101:
            while not self.rejected.endswith(b"}"):
                more = [e for e in self._events() if isinstance(e, RejectData)]
                self.rejected += b"".join(e.data for e in more)
                if any(e.body_finished for e in more):
                    break

    def _send(self, event: Any) -> None:
        self.pipe.sendall(self.ws.send(event))

    def _events(self) -> list[Any]:
        data = self.pipe.recv(65536)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def send(self, frame: dict[str, Any] | str) -> None:
        self._send(TextMessage(frame if isinstance(frame, str) else json.dumps(frame)))

    def recv(self) -> dict[str, Any]:
        """The next whole text message, parsed (raises on a close or a timeout)."""
        text = ""
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        return json.loads(text)
                elif isinstance(event, CloseConnection):
                    raise ConnectionError(f"closed: {event.code}")
            self.pending.extend(self._events())

    def until_done(self) -> list[dict[str, Any]]:
        """Every event up to the end of one response (its terminal event, or an error)."""
        events = [self.recv()]
        while events[-1]["type"] not in TERMINAL:
            events.append(self.recv())
        return events

    def create(self, **body: Any) -> list[dict[str, Any]]:
        self.send({"type": "response.create", **body})
        return self.until_done()

    def close(self) -> None:
        try:
            self._send(CloseConnection(code=1000))
        except (OSError, wsproto.utilities.LocalProtocolError):
            pass
        self.abort()

    def abort(self) -> None:
        """Go away without a close frame (the TCP connection just drops)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def prewarm(model: str = "gpt-4o") -> dict[str, Any]:
    """Codex's first frame: the request without input, not to be generated."""
    return {
        "type": "response.create",
        "model": model,
        "instructions": "You are Codex.",
        "generate": False,
        "input": [],
    }
