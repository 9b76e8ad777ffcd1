"""Test-only mitmproxy script, loaded after spendfuse: in `requestheaders` it asks mitmproxy to
stream every request body upstream as it arrives (`flow.request.stream`), as any co-loaded script
or option could. `stream_request_with=callable` streams through a pass-through function instead of
`True`. Never used outside tests."""

from mitmproxy import ctx, http


class StreamEveryRequest:
    def load(self, loader) -> None:
        loader.add_option("stream_request_with", str, "true", "true or callable")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.request.stream = (lambda chunk: chunk) if ctx.options.stream_request_with == "callable" else True


addons = [StreamEveryRequest()]
