"""A deliberately low-level HTTP client for the bypass suite: it opens CONNECT tunnels by hand,
speaks TLS with whatever SNI it likes (splitting or altering its ClientHello if asked), and
sends requests whose Host and framing it chooses, as an agent trying to get around a proxy
would. Test-only."""

from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = 5.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def _read_head(sock: socket.socket | ssl.SSLSocket | TLSPipe) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_reply(sock: socket.socket | ssl.SSLSocket | TLSPipe) -> Reply:
    head, rest = _read_head(sock)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        want = int(headers["content-length"])
        while len(rest) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return Reply(status, headers, rest[:want])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return Reply(status, headers, rest)


def tunnel(proxy_port: int, target: str, host_header: str | None = None) -> tuple[socket.socket, Reply]:
    """A TCP connection to the proxy and a CONNECT to `target` (host:port) on it."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {host_header or target}\r\n\r\n".encode())
    head, _ = _read_head(sock)
    lines = head.decode("latin-1").split("\r\n")
    return sock, Reply(int(lines[0].split()[1]), {}, b"")


class TLSPipe:
    """TLS over an existing socket through memory BIOs, so the ClientHello's bytes can be sent
    however the caller likes: split into tiny writes, or altered."""

    def __init__(
        self,
        sock: socket.socket,
        sni: str,
        cafile: Path,
        *,
        first_write: int | None = None,
        record_version: int | None = None,
        alpn: list[str] | None = None,
    ) -> None:
        context = ssl.create_default_context(cafile=str(cafile))
        if alpn:
            context.set_alpn_protocols(alpn)
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = self.outgoing.read()
        if record_version is not None:
            hello = hello[:1] + record_version.to_bytes(2, "big") + hello[3:]
        if first_write is not None:
            sock.sendall(hello[:first_write])
            time.sleep(0.2)  # a separate TCP segment, seen by the proxy on its own
            sock.sendall(hello[first_write:])
        else:
            sock.sendall(hello)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the TLS handshake") from None
                self.incoming.write(data)
        self._flush()

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def recv(self, n: int) -> bytes:
        while True:
            try:
                return self.tls.read(n)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""


def request_bytes(
    method: str,
    path: str,
    host: str,
    body: dict | None = None,
    headers: dict[str, str] | None = None,
    extra_lines: list[str] | None = None,
) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    lines += extra_lines or []
    if body is not None:
        lines += ["content-type: application/json", f"content-length: {len(payload)}"]
    lines.append("authorization: Bearer sk-test")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def chat_body(model: str = "gpt-4o") -> dict:
    return {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
