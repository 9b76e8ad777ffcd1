"""Test-only mitmproxy script, loaded AFTER spendfuse: writes the listening port to a file,
redirects every flow to the fake upstream (plain HTTP on loopback), as a deployment's real
upstream would be reached, and copies every ERROR that spendfuse (or mitmproxy's addon manager,
which reports an exception escaping a hook) logs into a file the tests check. Never used
outside tests."""

import json
import logging

from mitmproxy import ctx, http

# Loggers whose errors fail a test that does not expect them (tests/conftest.py).
WATCHED = ("spendfuse", "governance", "mitmproxy.addonmanager", "mitmproxy.addons.script")


class _ErrorFile(logging.Handler):
    """Appends `logger: message` for each ERROR of a watched logger to a file."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.path = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.path or not record.name.startswith(WATCHED):
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{record.name}: {record.getMessage()}\n".replace("\n", " ").rstrip() + "\n")


class Harness:
    def __init__(self) -> None:
        self.errors = _ErrorFile()
        logging.getLogger().addHandler(self.errors)

    def load(self, loader) -> None:
        loader.add_option("harness_portfile", str, "", 'Write {"port": N} here once listening.')
        loader.add_option("harness_redirect", str, "", "host:port of the fake upstream.")
        loader.add_option("harness_errors", str, "", "Append ERROR records of spendfuse's loggers here.")

    def configure(self, updated) -> None:
        self.errors.path = ctx.options.harness_errors

    def running(self) -> None:
        if not ctx.options.harness_portfile:
            return
        ps = ctx.master.addons.get("proxyserver")
        # Every listener's port by its mode spec; "port" is the first listener's (the proxy's).
        ports = {server.mode.full_spec: addr[1] for server in ps.servers for addr in server.listen_addrs}
        port = next(iter(ports.values()), None)
        with open(ctx.options.harness_portfile + ".tmp", "w") as f:
            json.dump({"port": port, "ports": ports}, f)
        import os

        os.replace(ctx.options.harness_portfile + ".tmp", ctx.options.harness_portfile)

    def request(self, flow: http.HTTPFlow) -> None:
        if not ctx.options.harness_redirect or flow.response is not None:
            return
        host, port = ctx.options.harness_redirect.rsplit(":", 1)
        original = flow.request.host_header
        flow.request.scheme = "http"
        flow.request.host = host
        flow.request.port = int(port)
        flow.request.host_header = original


addons = [Harness()]
