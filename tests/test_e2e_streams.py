"""End to end, streams that go wrong: a runaway stream (a provider streaming more output than the
request's cap allowed) is cut with an error event in its API's own stream format, alone, and
charged no more than its reservation; a client that hangs up mid-stream is charged what the
upstream generated."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import anthropic
import openai
import pytest

from tests.conftest import TEST_PRICES
from tests.support import rawclient
from tests.test_e2e import MILLION, chat, micro, rows

LIE = {"x-test-overrun-tokens": "400"}  # the fake provider streams 400 tokens past the cap


def _cut_row(tmp_path) -> dict:
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["state"] == "settled" and row["outcome"].startswith("cut: runaway"), row
    assert 0 < row["cost_micro"] == row["reserved_micro"], row  # its reservation, no more
    return row


class TestRunaway:
    def test_a_chat_stream_past_its_cap_is_cut_with_an_error_event(
        self, start, client_env, upstream, tmp_path
    ):
        proxy = start()
        client_env(proxy)
        upstream.knobs.chunk_delay_s = 0.005
        texts = []
        with pytest.raises(openai.APIError, match="spendfuse: the stream was cut") as raised:
            for c in chat(openai.OpenAI(max_retries=0), max_tokens=20, stream=True, extra_headers=LIE):
                texts += [c.choices[0].delta.content] if c.choices else []
        assert raised.value.body["spendfuse"]["rule"] == "runaway_stream"
        # The client got the output up to the event that passed the cap (one token each), no more.
        assert 20 <= len(texts) <= 21
        _cut_row(tmp_path)
        [stream] = upstream.streams
        assert not stream["finished"] and stream["events"] < stream["of"]  # the upstream was stopped

    def test_a_responses_stream_past_its_cap_ends_in_response_failed(
        self, start, client_env, upstream, tmp_path
    ):
        proxy = start()
        client_env(proxy)
        upstream.knobs.chunk_delay_s = 0.005
        seen = []
        with pytest.raises(openai.APIError, match="spendfuse: the stream was cut"):
            for event in openai.OpenAI(max_retries=0).responses.create(
                model="gpt-4o", input="hi", max_output_tokens=20, stream=True, extra_headers=LIE
            ):
                seen.append(event.type)
        assert seen[-1] == "response.failed"  # what Codex reads, before the error event the SDK raises
        assert seen.count("response.output_text.delta") <= 21
        _cut_row(tmp_path)

    def test_an_anthropic_stream_past_its_cap_ends_in_an_error_event(
        self, start, client_env, upstream, tmp_path
    ):
        proxy = start()
        client_env(proxy)
        upstream.knobs.chunk_delay_s = 0.005
        with pytest.raises(anthropic.APIStatusError, match="spendfuse: the stream was cut"):
            with anthropic.Anthropic(max_retries=0).messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=20,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=LIE,
            ) as stream:
                for _ in stream:
                    pass
        _cut_row(tmp_path)

    def test_only_the_runaway_is_cut_while_another_stream_runs(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        upstream.knobs.chunk_delay_s = 0.01
        upstream.knobs.chunks = 40  # the honest stream: 40 events over 0.4 s
        honest: list[str] = []

        def run_honest() -> None:
            for c in chat(openai.OpenAI(max_retries=0), max_tokens=500, stream=True):
                honest.extend([c.choices[0].delta.content] if c.choices else [])

        other = threading.Thread(target=run_honest)
        other.start()
        with pytest.raises(openai.APIError, match="cut"):
            list(chat(openai.OpenAI(max_retries=0), max_tokens=20, stream=True, extra_headers=LIE))
        other.join(10)
        assert honest == [f"w{i} " for i in range(40)]
        got = {
            ("cut" if r["outcome"].startswith("cut") else "honest"): r
            for r in rows(tmp_path / "ledger.sqlite")
        }
        assert got["cut"]["cost_micro"] == got["cut"]["reserved_micro"]
        # The honest one settled to the usage its provider reported: 11 in, 7 out.
        assert got["honest"]["outcome"].startswith("usage")
        assert got["honest"]["cost_micro"] == micro(Decimal(11) / MILLION + Decimal(70) / MILLION)


def _hang_up_after(proxy, path: str, body: dict, events: int, headers: dict | None = None) -> bytes:
    """A raw client: sends a streamed request through the proxy, reads `events` SSE events of
    the answer, and closes its connection (an agent killed mid-stream)."""
    sock, reply = rawclient.tunnel(proxy.port, f"{HOST[path]}:443")
    assert reply.status == 200
    tls = rawclient.TLSPipe(sock, HOST[path], proxy.ca, alpn=["http/1.1"])
    tls.sendall(rawclient.request_bytes("POST", path, HOST[path], body, headers))
    got = b""
    while got.count(b"\n\n") < events:
        chunk = tls.recv(65536)
        assert chunk, got
        got += chunk
    sock.close()
    return got


HOST = {"/v1/chat/completions": "api.openai.com", "/v1/messages": "api.anthropic.com"}
CHAT = {"model": "gpt-4o", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {**CHAT, "model": "claude-sonnet-4-5"}


def _settled(tmp_path) -> dict:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = rows(tmp_path / "ledger.sqlite", settled=False)
        if found and found[0]["state"] != "held":
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"still held: {found}")


class TestHangUp:
    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
    def test_a_client_that_hangs_up_is_charged_what_the_upstream_billed(
        self, start, upstream, tmp_path, path
    ):
        """The client reads half the stream and closes. spendfuse reads the upstream on to its
        end, so the usage it reports there settles it: the provider's own bill, not the
        reservation (mitmproxy alone would close the upstream with the client)."""
        proxy = start()
        upstream.knobs.chunks, upstream.knobs.chunk_delay_s = 20, 0.05
        upstream.knobs.completion_tokens = 60
        _hang_up_after(proxy, path, CHAT if path.endswith("completions") else MESSAGES, 8)
        row = _settled(tmp_path)
        [stream] = upstream.streams
        assert stream["finished"], stream  # the upstream was read to its end
        price = TEST_PRICES[row["model"]]
        bill = (11 * Decimal(str(price["input_mtok"])) + 60 * Decimal(str(price["output_mtok"]))) / MILLION
        assert row["outcome"].startswith("usage"), row
        assert row["cost_micro"] == micro(bill) < row["reserved_micro"]

    def test_an_abandoned_runaway_is_stopped_and_charged_its_reservation(self, start, upstream, tmp_path):
        """Reading on is bounded: an abandoned stream that passes its reservation is closed
        upstream at once and charged its reservation, no more."""
        proxy = start()
        upstream.knobs.chunk_delay_s = 0.02
        _hang_up_after(proxy, "/v1/chat/completions", {**CHAT, "max_tokens": 20}, 5, LIE)
        row = _settled(tmp_path)
        assert row["outcome"].startswith("error: the client went away, and then its output passed"), row
        assert row["cost_micro"] == row["reserved_micro"]
        [stream] = upstream.streams
        assert not stream["finished"] and stream["events"] < stream["of"], stream
