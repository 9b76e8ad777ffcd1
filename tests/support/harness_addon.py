"""Test-only mitmproxy script, loaded AFTER spendfuse: writes the listening port to a file and
redirects every flow to the fake upstream (plain HTTP on loopback), as a deployment's real
upstream would be reached. Never used outside tests."""

import json

from mitmproxy import ctx, http


class Harness:
    def load(self, loader) -> None:
        loader.add_option("harness_portfile", str, "", "Write {\"port\": N} here once listening.")
        loader.add_option("harness_redirect", str, "", "host:port of the fake upstream.")

    def running(self) -> None:
        if not ctx.options.harness_portfile:
            return
        ps = ctx.master.addons.get("proxyserver")
        port = None
        for server in ps.servers:
            for addr in server.listen_addrs:
                port = addr[1]
        with open(ctx.options.harness_portfile + ".tmp", "w") as f:
            json.dump({"port": port}, f)
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
