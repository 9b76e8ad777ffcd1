"""Test-only mitmproxy script: in `running` it adds, at the very end of the addon chain (after
spendfuse's transport guard), an addon that streams every request body upstream. Never used
outside tests."""

from mitmproxy import ctx, http


class StreamsEveryRequest:
    name = "test_late_streamer"

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.request.stream = True


class AddsLate:
    def running(self) -> None:
        if ctx.master.addons.get(StreamsEveryRequest.name) is None:
            ctx.master.addons.add(StreamsEveryRequest())


addons = [AddsLate()]
