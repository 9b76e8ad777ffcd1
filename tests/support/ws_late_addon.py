"""Test-only mitmproxy script, loaded after spendfuse (so before its transport guard): on a
WebSocket, it rewrites every client `response.create` frame to ask for far more output than was
reserved (`"rewrite"` in the input), and passes again any client frame something dropped. Never
used outside tests."""

import json

from mitmproxy import http


class RewritesFrames:
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        msg = flow.websocket.messages[-1] if flow.websocket else None
        if msg is None or not msg.from_client or msg.injected:
            return
        if msg.dropped:
            msg.dropped = False  # undo any drop
            return
        try:
            frame = json.loads(msg.content)
        except ValueError:
            return
        if isinstance(frame, dict) and "rewrite" in json.dumps(frame.get("input")):
            frame["max_output_tokens"] = 100_000
            msg.content = json.dumps(frame).encode()


addons = [RewritesFrames()]
