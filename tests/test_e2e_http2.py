"""End to end over HTTP/2 between the client and the proxy (as Rust and Go clients may speak it),
through a real mitmdump, against the fake upstream: streamed and not, admitted and refused, and a
runaway stream beside another on the same h2 connection. Each settles as it does over HTTP/1.1."""

from __future__ import annotations

import json

from tests.support.h2client import data_events, post_all
from tests.test_e2e import rows
from tests.test_e2e_streams import CHAT, LIE

CHAT_PATH = "/v1/chat/completions"


class TestHttp2:
    def test_an_answer_and_a_stream_on_one_connection_settle_to_their_usage(self, start, upstream, tmp_path):
        proxy = start()
        upstream.knobs.chunks = 3
        plain, streamed = post_all(
            proxy, "api.openai.com", [(CHAT_PATH, {**CHAT, "stream": False}, {}), (CHAT_PATH, CHAT, {})]
        )
        assert plain.status == 200 and plain.ended
        assert plain.json()["choices"][0]["message"]["content"] == "hello"
        assert streamed.status == 200 and streamed.ended
        events = data_events(streamed.body)
        # The stream the client asked for (no usage chunk it did not ask for), then [DONE].
        assert len(events) == 4 and events[-1] == "[DONE]"
        got = rows(tmp_path / "ledger.sqlite")
        assert [(r["state"], r["output_tokens"], r["cost_micro"]) for r in got] == [("settled", 7, 81)] * 2

    def test_a_refusal_comes_in_the_providers_envelope(self, start, upstream, tmp_path):
        proxy = start(spendfuse_budget="0.0005")  # below one request's reservation (1021 µ$)
        [refused] = post_all(proxy, "api.openai.com", [(CHAT_PATH, CHAT, {})])
        assert refused.status in (400, 429) and refused.headers["x-should-retry"] == "false"
        assert refused.json()["error"]["message"].startswith("spendfuse")
        assert upstream.total_hits == 0
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["decision"] == "refused" and not row["cost_micro"]

    def test_a_runaway_is_cut_and_its_sibling_stream_runs_on(self, start, upstream, tmp_path):
        proxy = start()
        upstream.knobs.chunk_delay_s, upstream.knobs.chunks = 0.01, 40
        runaway, honest = post_all(
            proxy,
            "api.openai.com",
            [(CHAT_PATH, {**CHAT, "max_tokens": 20}, LIE), (CHAT_PATH, {**CHAT, "max_tokens": 500}, {})],
        )
        cut = data_events(runaway.body)
        assert json.loads(cut[-1])["error"]["message"].startswith("spendfuse: the stream was cut")
        assert len(cut) <= 22
        assert honest.ended and len(data_events(honest.body)) == 41  # 40 deltas and [DONE]
        got = {
            ("cut" if r["outcome"].startswith("cut") else "honest"): r
            for r in rows(tmp_path / "ledger.sqlite")
        }
        assert got["cut"]["cost_micro"] == got["cut"]["reserved_micro"]
        assert got["honest"]["outcome"].startswith("usage") and got["honest"]["cost_micro"] == 81
