"""The metrics endpoint: `GET /metrics` in Prometheus' text format, on a thread of its own (a
scrape never waits on the event loop, nor the loop on a scrape). With a token, a scrape must
send `Authorization: Bearer TOKEN` (else 401); spendfuse refuses to listen beyond loopback
without one (`listen_address`)."""

from __future__ import annotations

import hmac
import ipaddress
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

DEFAULT_HOST = "127.0.0.1"


def listen_address(value: str, token: str) -> tuple[str, int]:
    """`(host, port)` from `PORT`, `HOST:PORT` or `[IPv6]:PORT` (loopback when no host is given).
    Raises `ValueError` for a malformed value, and for a host beyond loopback without a token."""
    text = value.strip()
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected PORT or HOST:PORT, not {value!r}")
    if not is_loopback(host) and not token:
        raise ValueError(
            f"{host} is not loopback: set spendfuse_metrics_token (SPENDFUSE_METRICS_TOKEN) so that "
            "scrapes must authenticate, or listen on 127.0.0.1"
        )
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve beyond this machine


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not news


class MetricsServer:
    """Serves `registry` at `/metrics` on `host:port` until `stop`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, token: str = "") -> None:
        self._registry = registry
        self._token = f"Bearer {token}".encode() if token else None
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(host, port, self._app, server_class=server_class, handler_class=_Quiet)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="spendfuse metrics", daemon=True
        )
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"spendfuse metrics are at GET /metrics\n"]
        if self._token is not None:
            given = environ.get("HTTP_AUTHORIZATION", "").encode()
            if not hmac.compare_digest(given, self._token):
                start_response(
                    "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
                )
                return [b"spendfuse metrics: a bearer token is required\n"]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [generate_latest(self._registry)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
