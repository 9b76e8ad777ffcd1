"""Test-only helpers for gateway mode: a gateway listener on a fresh port, and raw requests to
it, as an agent that speaks to the gateway directly would send them."""

from __future__ import annotations

import socket

from tests.support.ports import free_port
from tests.support.proxy import Proxy
from tests.support.rawclient import TIMEOUT, Reply, read_reply


def gateway() -> dict[str, str]:
    """`start(**gateway())`: options for a gateway listener on a fresh loopback port."""
    return {"spendfuse_gateway": f"127.0.0.1:{free_port()}"}


def raw(port: int, data: bytes) -> Reply | None:
    """Send `data` to the gateway and read one reply (None: the connection was closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        try:
            return read_reply(sock)
        except ConnectionError:
            return None


def gateway_port(proxy: Proxy) -> int:
    """The gateway listener's port."""
    return int(proxy.gateway_url.rsplit(":", 1)[1])
