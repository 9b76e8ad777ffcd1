"""Test-only mitmproxy script, loaded after spendfuse: in `responseheaders` it streams every
response itself (`flow.response.stream`), as any co-loaded script could: `True`, or with
`stream_response_with=callable` a pass-through function of its own. Never used outside tests."""

from mitmproxy import ctx, http


class StreamEveryResponse:
    def load(self, loader) -> None:
        loader.add_option("stream_response_with", str, "true", "true or callable")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        if ctx.options.stream_response_with == "callable":
            flow.response.stream = lambda chunk: chunk
        else:
            flow.response.stream = True


addons = [StreamEveryResponse()]
