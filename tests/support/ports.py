"""Test-only: loopback ports for listeners a test names before they start."""

from __future__ import annotations

import random
import socket


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for `bind(:0)` and outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = f.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port free now (mitmproxy refuses two listeners on 127.0.0.1:0), chosen below
    the kernel's ephemeral range: a port handed out for `:0` (the proxy's own listener, a client's
    socket) can then never be the one chosen here before its listener binds it."""
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")
