"""Test-only mitmproxy script that stands in for DNS: every upstream connection to a name (or
IP literal) in `dns_map` goes to the address it maps to, while the SNI and the Host header stay
what the client sent, so the TLS fake upstream sees exactly what a real provider would.
`dns_map` is `name=host:port,...`; the name `*` maps everything else. Never used outside tests."""

from mitmproxy import ctx


class DnsStandIn:
    def load(self, loader) -> None:
        loader.add_option("dns_map", str, "", "name=host:port,...: where upstream connections go")

    def server_connect(self, data) -> None:
        mapping = {}
        for item in filter(None, ctx.options.dns_map.split(",")):
            name, _, target = item.partition("=")
            host, _, port = target.rpartition(":")
            mapping[name.strip().lower()] = (host, int(port))
        address = data.server.address
        if not address:
            return
        target = mapping.get(str(address[0]).lower().rstrip(".")) or mapping.get("*")
        if target is not None:
            if data.server.sni is None and not _is_ip(str(address[0])):
                data.server.sni = str(address[0])
            data.server.address = target


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


addons = [DnsStandIn()]
