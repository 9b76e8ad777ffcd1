"""A minimal HTTP/2 client for the tests: a CONNECT tunnel through the proxy, TLS offering only
`h2`, and several requests multiplexed on the one connection (the `h2` library frames them).
httpx cannot be used for this: through an HTTP proxy, httpcore offers `http/1.1` before `h2`,
and mitmproxy takes the client's first choice. Test-only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

from tests.support import rawclient


@dataclass
class H2Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False  # the stream ended cleanly (END_STREAM)
    reset: bool = False  # the proxy reset the stream

    def json(self) -> dict:
        return json.loads(self.body)


def post_all(proxy, host: str, requests: list[tuple[str, dict, dict[str, str]]]) -> list[H2Reply]:
    """Send each `(path, body, headers)` as its own stream on one h2 connection; wait for all."""
    sock, reply = rawclient.tunnel(proxy.port, f"{host}:443")
    assert reply.status == 200
    tls = rawclient.TLSPipe(sock, host, proxy.ca, alpn=["h2"])
    assert tls.tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    replies: dict[int, H2Reply] = {}
    for path, body, headers in requests:
        sid = conn.get_next_available_stream_id()
        payload = json.dumps(body).encode()
        head = [(":method", "POST"), (":path", path), (":authority", host), (":scheme", "https")]
        head += [("content-type", "application/json"), ("content-length", str(len(payload)))]
        head += [("authorization", "Bearer sk-test"), *headers.items()]
        conn.send_headers(sid, head)
        conn.send_data(sid, payload, end_stream=True)
        replies[sid] = H2Reply()
    tls.sendall(conn.data_to_send())
    try:
        while not all(r.ended or r.reset for r in replies.values()):
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                r = replies.get(getattr(event, "stream_id", 0))
                if isinstance(event, h2.events.ResponseReceived) and r is not None:
                    r.headers = dict(event.headers)
                    r.status = int(r.headers[":status"])
                elif isinstance(event, h2.events.DataReceived) and r is not None:
                    r.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and r is not None:
                    r.ended = True
                elif isinstance(event, h2.events.StreamReset) and r is not None:
                    r.reset = True
            tls.sendall(conn.data_to_send())
    finally:
        sock.close()
    return [replies[sid] for sid in sorted(replies)]


def data_events(body: bytes) -> list[str]:
    """The `data:` payloads of an SSE body."""
    return [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
