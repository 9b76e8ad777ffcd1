"""End to end: a real mitmdump with spendfuse, the official openai and anthropic SDKs configured
only through HTTPS_PROXY and SSL_CERT_FILE, and a fake upstream on loopback."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from governance.ledger import Ledger
from tests.conftest import write_rules
from tests.support.fake_upstream import claude_like_tokens
from tests.support.proxy import BIN, REPO

MILLION = Decimal(1_000_000)


def micro(usd: Decimal) -> int:
    return int((usd * MILLION).to_integral_value(rounding="ROUND_CEILING"))


def rows(db: Path, *, settled: bool = True) -> list[dict]:
    """The ledger's request rows. A stream's last bytes reach the client just before the
    proxy's `response` hook settles it, so by default wait (briefly) until no hold is left."""
    deadline = time.monotonic() + 10
    while True:
        ledger = Ledger.open(db)
        try:
            found = ledger.query("SELECT * FROM requests ORDER BY created_at")
        finally:
            ledger.close()
        if not settled or all(r["state"] != "held" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def chat(client: openai.OpenAI, **kw):
    return client.chat.completions.create(
        model=kw.pop("model", "gpt-4o"), messages=[{"role": "user", "content": "hi"}], **kw
    )


class TestAllowed:
    def test_openai_chat_not_streamed(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        resp = chat(openai.OpenAI(), max_tokens=100)
        assert resp.choices[0].message.content == "hello"
        assert upstream.hits["/v1/chat/completions"] == 1
        # Transparent: the upstream got the request as sent (no usage option forced on non-streams).
        assert "stream_options" not in upstream.bodies[0]
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["state"] == "settled" and row["decision"] == "allowed"
        assert (row["input_tokens"], row["output_tokens"]) == (11, 7)
        assert row["cost_micro"] == micro(Decimal(11) * 1 / MILLION + Decimal(7) * 10 / MILLION)  # $0.000081
        assert row["price_source"] == "override:gpt-4o"
        assert row["principal"].startswith("apikey:") and "sk-test" not in row["principal"]

    def test_openai_chat_streamed_chunk_by_chunk(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        upstream.knobs.chunk_delay_s = 0.3
        upstream.knobs.chunks = 4
        t0 = time.monotonic()
        arrivals = []
        texts = []
        for chunk in chat(openai.OpenAI(), max_tokens=100, stream=True):
            arrivals.append(time.monotonic() - t0)
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
        assert texts == ["w0 ", "w1 ", "w2 ", "w3 "]
        # Streamed, not buffered: the first chunk arrived long before the stream ended.
        assert arrivals[0] < arrivals[-1] - 0.8
        # The client left include_usage out; spendfuse switched it on to read usage.
        assert upstream.bodies[0]["stream_options"] == {"include_usage": True}
        [row] = rows(tmp_path / "ledger.sqlite")
        # The SDK may hang up right after [DONE]; usage was read as it passed either way.
        assert row["state"] == "settled" and row["outcome"].startswith("usage")
        assert row["cost_micro"] == 81

    @pytest.mark.parametrize("legacy", [False, True])
    def test_a_client_sees_exactly_the_stream_it_asked_for(
        self, start, client_env, upstream, tmp_path, legacy
    ):
        """spendfuse switches include_usage on to read usage; the usage-only chunk that adds
        (`choices: []`) is taken out of what a client that did not ask for it receives, and left
        in for one that did."""
        proxy = start()
        client_env(proxy)
        upstream.knobs.chunks = 3
        client = openai.OpenAI()

        def stream(**kw):
            if legacy:
                return client.completions.create(
                    model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=100, stream=True, **kw
                )
            return chat(client, max_tokens=100, stream=True, **kw)

        plain = list(stream())
        assert len(plain) == 3 and all(c.choices for c in plain)  # every chunk has choices[0]
        asked = list(stream(stream_options={"include_usage": True}))
        assert len(asked) == 4 and asked[-1].choices == [] and asked[-1].usage.completion_tokens == 7
        # Both were settled to the usage the provider reported, and neither was retried (a
        # stream cut short by a stray chunk terminator leaves its keep-alive connection broken).
        got = rows(tmp_path / "ledger.sqlite")
        assert [(r["state"], r["output_tokens"]) for r in got] == [("settled", 7)] * 2

    @pytest.mark.parametrize("streamed_with", ["true", "callable"])
    def test_a_stream_another_addon_takes_over_still_settles_to_its_usage(
        self, start, client_env, upstream, tmp_path, streamed_with
    ):
        """A co-loaded script that streams the response itself does not blind the usage tap:
        the stream settles to its usage (81 µ$), not to its whole reservation."""
        addon = REPO / "tests" / "support" / "stream_response_addon.py"
        proxy = start(scripts=(addon,), stream_response_with=streamed_with)
        client_env(proxy)
        upstream.knobs.chunks = 3
        texts = [
            c.choices[0].delta.content
            for c in chat(openai.OpenAI(), max_tokens=100, stream=True)
            if c.choices
        ]
        assert texts == ["w0 ", "w1 ", "w2 "]
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["state"] == "settled" and row["outcome"].startswith("usage"), row
        assert row["cost_micro"] == 81

    def test_openai_responses_streamed(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 1000, 200
        events = [
            e.type
            for e in openai.OpenAI().responses.create(
                model="gpt-4o", input="hi", max_output_tokens=500, stream=True
            )
        ]
        assert events[-1] == "response.completed"
        assert "stream_options" not in upstream.bodies[0]  # the Responses API rejects it
        [row] = rows(tmp_path / "ledger.sqlite")
        assert (row["input_tokens"], row["output_tokens"], row["cost_micro"]) == (1000, 200, 1000 + 2000)

    def test_codex_like_traffic_is_served_under_the_shipped_rules(
        self, start, client_env, upstream, tmp_path
    ):
        """Responses, streamed, no output cap, a current model, the shipped default rules and a cap
        its model's maximum output would overshoot: served with an injected cap, until the budget
        is really spent."""
        from governance import DEFAULT_RULES

        proxy = start(rules=DEFAULT_RULES, spendfuse_budget="0.05")
        client_env(proxy)
        # The provider bills about the input the estimate saw, and whatever output the cap allows.
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 10, 1500
        client = openai.OpenAI(max_retries=0)
        served = 0
        while served < 20:
            try:
                events = [
                    e.type
                    for e in client.responses.create(model="gpt-5.1-codex", input="fix it", stream=True)
                ]
            except openai.RateLimitError:
                break
            assert events[-1] == "response.completed"
            served += 1
        caps = [b["max_output_tokens"] for b in upstream.bodies]
        assert served >= 2 and len(caps) == served
        assert caps == sorted(caps, reverse=True) and caps[-1] >= 1024  # lowered as the budget drains
        settled = rows(tmp_path / "ledger.sqlite")
        spent = sum(r["cost_micro"] for r in settled if r["state"] == "settled")
        assert spent + sum(r["reserved_micro"] for r in settled if r["state"] == "held") <= 50_000
        assert settled[-1]["state"] == "refused" and settled[-1]["rule"] == "budget:global"
        assert all(r["requested_output_tokens"] is None for r in settled)
        assert [r["injected_output_tokens"] for r in settled if r["state"] == "settled"] == caps

    def test_server_side_history_stays_under_the_cap(self, start, client_env, upstream, tmp_path):
        """Responses with `previous_response_id`: the provider bills the whole history again. The
        real cost of everything that reached the upstream stays under the cap."""
        cap_usd = Decimal("0.1")
        proxy = start(spendfuse_budget=str(cap_usd))
        client_env(proxy)
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 10, 2000
        upstream.contexts["resp_elsewhere"] = 120_000  # a conversation begun without the proxy
        client = openai.OpenAI(max_retries=0)
        previous = None
        refused = 0
        for _ in range(8):
            kw = {"previous_response_id": previous} if previous else {}
            try:
                answer = client.responses.create(model="gpt-4o", input="go on", max_output_tokens=2000, **kw)
                previous = answer.id
            except openai.RateLimitError:
                refused += 1
        with pytest.raises(openai.RateLimitError):  # history it never saw: the context window
            client.responses.create(
                model="gpt-4o", input="hi", max_output_tokens=10, previous_response_id="resp_elsewhere"
            )
        # gpt-4o at the tests' prices: $1/M input, $10/M output.
        real = sum(b["input_tokens"] * 1 + b["output_tokens"] * 10 for b in upstream.billed)
        assert refused >= 1 and len(upstream.billed) >= 3
        assert real <= micro(cap_usd)
        ledger = rows(tmp_path / "ledger.sqlite")
        assert sum(r["cost_micro"] or 0 for r in ledger) == real
        follow_ups = [r for r in ledger if r["state"] == "settled"][1:]
        assert all(r["input_tokens"] <= r["est_input_tokens"] for r in follow_ups)

    def test_priority_tier_stays_under_the_cap(self, start, client_env, upstream, tmp_path):
        """Priority costs twice the standard price: reserved at it, settled at it, and a sequence of
        requests stops within one worst case of the cap, never over it."""
        cap = 100_000  # µ$
        proxy = start(spendfuse_budget="0.1", rules=write_rules(tmp_path / "r.yaml", prices={}))
        client_env(proxy)
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 10, 2000
        client = openai.OpenAI(max_retries=0)
        with pytest.raises(openai.RateLimitError):
            for _ in range(10):
                r = chat(client, model="gpt-5", max_completion_tokens=2000, service_tier="priority")
                assert r.service_tier == "priority"
        settled = [r for r in rows(tmp_path / "ledger.sqlite") if r["state"] == "settled"]
        spent = sum(r["cost_micro"] for r in settled)
        # gpt-5 priority: $2.50/M input, $20/M output.
        assert {r["cost_micro"] for r in settled} == {micro(Decimal(10 * 2.5 + 2000 * 20) / MILLION)}
        worst = settled[0]["reserved_micro"]
        assert spent <= cap and cap - spent < worst and len(settled) == 2

    def test_web_search_fees_stay_under_the_cap(self, start, client_env, upstream, tmp_path):
        cap = 1_000_000  # search results are input the provider adds: reserved at the context window
        proxy = start(spendfuse_budget="1", rules=write_rules(tmp_path / "r.yaml", prices={}))
        client_env(proxy)
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens, upstream.knobs.web_searches = (
            10,
            100,
            5,
        )
        client = anthropic.Anthropic(max_retries=0)
        tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
        with pytest.raises(anthropic.RateLimitError):
            for _ in range(40):
                client.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=100,
                    tools=tools,
                    messages=[{"role": "user", "content": "look it up"}],
                )
        settled = [r for r in rows(tmp_path / "ledger.sqlite") if r["state"] == "settled"]
        spent = sum(r["cost_micro"] for r in settled)
        # claude-haiku-4-5: $1/M input, $5/M output, $10 per 1,000 searches; 3 searches each.
        cost, reserved = 10 * 1 + 100 * 5 + 30_000, settled[0]["reserved_micro"]
        assert {r["cost_micro"] for r in settled} == {cost}
        assert {r["reserved_micro"] for r in settled} == {reserved}
        # One after another, each admitted while its reservation fits the room left: exactly this many.
        assert len(settled) == (cap - reserved) // cost + 1
        assert spent <= cap and cap - spent < reserved

    @pytest.mark.parametrize(
        "text", ["🎉🚀👍🏽❤️🔥✨🙏😂 " * 200, "Привет, как дела? Это русский текст. " * 200]
    )
    def test_claude_text_that_cl100k_undercounts_stays_under_the_cap(
        self, start, client_env, upstream, tmp_path, text
    ):
        """The provider's tokenizer splits emoji and Cyrillic finer than cl100k (the fake counts
        them about 1.5 and 1.3 times cl100k, at or above what an audit measured, with a tokenizer of
        its own): the estimate's script margins keep every reservation above the bill."""
        proxy = start(spendfuse_budget="0.2")
        client_env(proxy)
        upstream.knobs.claude_ratio, upstream.knobs.completion_tokens = 1.0, 50
        client = anthropic.Anthropic(max_retries=0)
        with pytest.raises(anthropic.RateLimitError):
            for _ in range(100):
                client.messages.create(
                    model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": text}]
                )
        settled = [r for r in rows(tmp_path / "ledger.sqlite") if r["state"] == "settled"]
        assert settled and all(r["input_tokens"] <= r["est_input_tokens"] for r in settled)
        assert sum(r["cost_micro"] for r in settled) <= 200_000

    @pytest.mark.parametrize("counter_works", [True, False])
    def test_near_the_limit_the_providers_own_count_is_reserved(
        self, start, client_env, upstream, tmp_path, counter_works
    ):
        """An estimate with wide margins does not fit the room left, the exact count does: the
        proxy asks the provider's free counter with the client's credentials. If the counter
        fails, the estimate stands and the request is refused, never guessed low."""
        text = "你好世界，这是一段中文文本。" * 1500  # the estimate's margins for CJK make it wide
        counted = claude_like_tokens(text)  # what this provider counts and bills, by its own tokenizer
        # Room for the exact count (at $2/M input, $20/M output) and 20% more, not for the estimate.
        budget = Decimal(counted * 2 * 12 // 10 + 10 * 20) / MILLION
        proxy = start(spendfuse_budget=str(budget))
        client_env(proxy)
        upstream.knobs.claude_ratio, upstream.knobs.completion_tokens = 1.0, 10
        upstream.knobs.count_status = 200 if counter_works else 503
        client = anthropic.Anthropic(max_retries=0)
        message = [{"role": "user", "content": text}]
        if counter_works:
            client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=message)
        else:
            with pytest.raises(anthropic.RateLimitError):
                client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=message)
        assert upstream.hits["/v1/messages/count_tokens"] == 1
        assert upstream.hits["/v1/messages"] == (1 if counter_works else 0)
        creds = [{k: h.get(k) for k in ("authorization", "x-api-key")} for h in upstream.headers]
        assert "sk-ant-test-not-real" in str(creds[0])  # the counter was asked with the client's own key
        assert all(c == creds[0] for c in creds)
        [row] = [r for r in rows(tmp_path / "ledger.sqlite") if r["api"] == "messages"]
        if counter_works:
            # The count is itself an estimate: reserved with the rules' 2% margin, rounded up.
            assert row["state"] == "settled" and row["est_input_tokens"] == -(
                -row["input_tokens"] * 102 // 100
            )
            assert row["cost_micro"] <= micro(budget)
        else:
            assert row["state"] == "refused" and row["est_input_tokens"] > counted

    def test_high_detail_images_by_url_stay_under_the_cap(self, start, client_env, upstream, tmp_path):
        """gpt-4o-mini bills 2,833 + 5,667 per tile for a high-detail image: 8 images by URL, whose
        size nobody knows before the provider fetches them, are reserved at the most they can cost."""
        images = [
            {"type": "image_url", "image_url": {"url": f"https://img.example/{i}.png", "detail": "high"}}
            for i in range(8)
        ]
        message = [{"role": "user", "content": [{"type": "text", "text": "compare"}, *images]}]
        small = start(spendfuse_budget="0.005", rules=write_rules(tmp_path / "r.yaml", prices={}))
        client_env(small)
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(max_retries=0).chat.completions.create(
                model="gpt-4o-mini", max_tokens=10, messages=message
            )
        assert upstream.total_hits == 0
        small.stop()
        big = start(
            spendfuse_budget="1",
            rules=write_rules(tmp_path / "r2.yaml", prices={}),
            db=tmp_path / "l2.sqlite",
        )
        client_env(big)
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 8 * (2833 + 5667 * 8) + 20, 10
        openai.OpenAI(max_retries=0).chat.completions.create(
            model="gpt-4o-mini", max_tokens=10, messages=message
        )
        [row] = rows(tmp_path / "l2.sqlite")
        assert row["input_tokens"] <= row["est_input_tokens"] and row["cost_micro"] <= row["reserved_micro"]

    def test_a_long_context_tier_is_reserved_when_the_estimate_reaches_it(
        self, start, client_env, upstream, tmp_path
    ):
        """claude-sonnet-4-5 reprices every token once the input passes 200k: an estimate whose
        upper end passes it reserves at the tier throughout, so the bill never exceeds it."""
        from governance import tokens

        text = "The ledger settles every reservation to the provider's usage. " * 17_500
        counted = tokens.count_text(text, "claude-sonnet-4-5")
        assert 182_000 < counted < 200_000  # the estimate's upper end (x1.10) passes 200k
        proxy = start(spendfuse_budget="2", rules=write_rules(tmp_path / "r.yaml", prices={}))
        client_env(proxy)
        # Claude's tokenizer counts English prose about 16% above OpenAI's: billed past the cliff.
        upstream.knobs.claude_ratio, upstream.knobs.completion_tokens = 1.0, 100
        anthropic.Anthropic(max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": text}]
        )
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["input_tokens"] > 200_000 and row["input_tokens"] <= row["est_input_tokens"]
        # $6/M input and $22.50/M output at the tier, for every token.
        assert row["cost_micro"] == micro(Decimal(row["input_tokens"] * 6 + 100 * Decimal("22.5")) / MILLION)
        assert row["cost_micro"] <= row["reserved_micro"]

    def test_openai_legacy_completions(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        resp = openai.OpenAI().completions.create(model="gpt-4o", prompt="say hi")
        assert resp.choices[0].text == "hello"
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["max_output_tokens"] == 16  # the API's default output cap
        assert row["cost_micro"] == 81

    def test_anthropic_not_streamed_with_cache(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        k = upstream.knobs
        k.prompt_tokens, k.cached_tokens, k.cache_write_tokens, k.completion_tokens = 20, 10_000, 3_000, 400
        msg = anthropic.Anthropic().messages.create(
            model="claude-sonnet-4-5", max_tokens=1000, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.content[0].text == "hello"
        [row] = rows(tmp_path / "ledger.sqlite")
        # Anthropic's input_tokens excludes cache: the billed input is 20 + 10,000 + 3,000.
        assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
            13_020,
            10_000,
            3_000,
        )
        expected = (
            Decimal(20) * 2
            + Decimal(10_000) * Decimal("0.2")
            + Decimal(3_000) * Decimal("2.5")
            + Decimal(400) * 20
        ) / MILLION
        assert row["cost_micro"] == micro(expected)

    def test_anthropic_streamed(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        upstream.knobs.chunk_delay_s = 0.2
        t0 = time.monotonic()
        first = None
        with anthropic.Anthropic().messages.stream(
            model="claude-sonnet-4-5", max_tokens=1000, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            for _text in stream.text_stream:
                first = first if first is not None else time.monotonic() - t0
            final = stream.get_final_message()
        total = time.monotonic() - t0
        assert final.usage.output_tokens == 7
        assert first is not None and first < total - 0.5
        [row] = rows(tmp_path / "ledger.sqlite")
        assert (row["input_tokens"], row["output_tokens"]) == (11, 7)
        assert row["cost_micro"] == micro((Decimal(11) * 2 + Decimal(7) * 20) / MILLION)

    def test_count_tokens_and_model_list_pass_free(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        count = anthropic.Anthropic().messages.count_tokens(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
        )
        assert count.input_tokens == 11
        assert [m.id for m in openai.OpenAI().models.list()] == ["gpt-4o"]
        assert upstream.hits["/v1/messages/count_tokens"] == 1
        assert rows(tmp_path / "ledger.sqlite") == []


class TestRefused:
    def test_budget_refusal_stops_the_openai_sdk_after_one_attempt(
        self, start, client_env, upstream, tmp_path
    ):
        proxy = start(spendfuse_budget="0.005")
        client_env(proxy)
        with pytest.raises(openai.RateLimitError) as exc:
            chat(openai.OpenAI(), max_tokens=1000)  # worst case > $0.01: over the $0.005 cap
        err = exc.value
        assert err.code == "insufficient_quota" and err.type == "insufficient_quota"
        assert err.response.headers["x-should-retry"] == "false"
        assert "retry-after" not in err.response.headers
        assert err.response.headers["x-spendfuse-refused"] == "budget:global"
        for words in (
            "limit $0.005",
            "spent $0.00",
            "reserved by requests in flight $0.00",
            "remaining $0.005",
            "never resets",
        ):
            assert words in err.message
        assert upstream.total_hits == 0
        # Exactly one attempt reached the proxy: the SDK did not retry.
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["decision"] == "refused" and row["rule"] == "budget:global"

    def test_codex_is_refused_with_the_400_it_shows(self, start, client_env, upstream, tmp_path):
        """Codex hides the message of any 429; it is recognised by its `originator` header and
        gets a 400 invalid_request_error, which it prints after one attempt."""
        proxy = start(spendfuse_budget="0.005")
        client_env(proxy)
        codex = openai.OpenAI(default_headers={"originator": "codex_exec"})
        with pytest.raises(openai.BadRequestError) as exc:
            chat(codex, max_tokens=1000)
        err = exc.value
        assert err.status_code == 400 and err.type == "invalid_request_error"
        assert err.code == "insufficient_quota" and "limit $0.005" in err.message
        assert err.response.headers["x-spendfuse-client"] == "codex"
        assert upstream.total_hits == 0
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["decision"] == "refused" and row["rule"] == "budget:global"

    def test_budget_refusal_stops_the_anthropic_sdk_after_one_attempt(
        self, start, client_env, upstream, tmp_path
    ):
        proxy = start(spendfuse_budget="0.01")
        client_env(proxy)
        with pytest.raises(anthropic.RateLimitError) as exc:  # worst case $0.16 > $0.01
            anthropic.Anthropic().messages.create(
                model="claude-sonnet-4-5", max_tokens=8000, messages=[{"role": "user", "content": "hi"}]
            )
        body = exc.value.body
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        assert body["error"]["details"]["error_code"] == "enforced_spend_limit_reached"
        assert exc.value.response.headers["x-should-retry"] == "false"
        assert upstream.total_hits == 0
        assert len(rows(tmp_path / "ledger.sqlite")) == 1

    def test_spend_accumulates_until_the_cap_refuses(self, start, client_env, upstream, tmp_path):
        # Each call reserves ~$0.01 and costs $0.008111 (11 input at $1/M, 810 output at $10/M).
        upstream.knobs.completion_tokens = 810
        proxy = start(spendfuse_budget="0.03")
        client_env(proxy)
        client = openai.OpenAI()
        served = 0
        with pytest.raises(openai.RateLimitError):
            for _ in range(10):
                chat(client, max_tokens=1000)
                served += 1
        spent = sum(r["cost_micro"] or 0 for r in rows(tmp_path / "ledger.sqlite"))
        assert served == upstream.total_hits == 3
        assert spent == 3 * 8_111 <= 30_000

    def test_multiplier_cap(self, start, client_env, upstream, tmp_path):
        proxy = start(spendfuse_max_multiplier="2")
        client_env(proxy)
        with pytest.raises(anthropic.BadRequestError) as exc:
            anthropic.Anthropic().messages.create(
                model="claude-opus-4-1-20250805", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            )
        message = exc.value.body["error"]["message"]
        assert (
            "'claude-opus-4-1-20250805'" in message
            and "multiplier 5" in message
            and "maximum of 2" in message
        )
        assert exc.value.body["error"]["details"]["error_code"] == "model_multiplier_cap_exceeded"
        with pytest.raises(openai.BadRequestError) as exc2:
            chat(openai.OpenAI(), model="gpt-5", max_tokens=10)  # not in this test's table, no default
        assert exc2.value.code == "model_multiplier_cap_exceeded"
        assert "no multiplier" in exc2.value.message
        chat(openai.OpenAI(), model="gpt-4o", max_tokens=10)  # 0.78 <= 2
        assert upstream.total_hits == 1

    def test_unpriced_model_is_refused_by_name(self, start, client_env, upstream):
        proxy = start()
        client_env(proxy)
        with pytest.raises(openai.BadRequestError) as exc:
            chat(openai.OpenAI(), model="gpt-nonexistent-9", max_tokens=10)
        assert exc.value.code == "model_not_priced" and "gpt-nonexistent-9" in exc.value.message
        assert upstream.total_hits == 0

    def test_unmetered_endpoint_is_refused_unless_allowed(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        with pytest.raises(openai.PermissionDeniedError) as exc:
            openai.OpenAI().embeddings.create(model="text-embedding-3-small", input="hi")
        assert "/v1/embeddings" in exc.value.message and exc.value.code == "endpoint_not_metered"
        assert upstream.total_hits == 0
        rules = write_rules(
            tmp_path / "open.yaml", allow_unmetered=[{"host": "api.openai.com", "path": "/v1/embeddings"}]
        )
        proxy2 = start(rules=rules, db=tmp_path / "l2.sqlite")
        client_env(proxy2)
        with pytest.raises(openai.NotFoundError):  # reached the fake upstream, which has no such route
            openai.OpenAI(max_retries=0).embeddings.create(model="text-embedding-3-small", input="hi")
        assert upstream.hits["/v1/embeddings"] == 1

    def test_websocket_upgrade_is_refused_with_426(self, start, upstream, tmp_path):
        # `websockets: refuse`; the default meters this socket (tests/test_e2e_websocket.py).
        proxy = start(rules=write_rules(tmp_path / "rules.yaml", websockets="refuse"))
        with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca))) as c:
            r = c.get(
                "https://api.openai.com/v1/responses",
                headers={
                    "upgrade": "websocket",
                    "connection": "Upgrade",
                    "sec-websocket-version": "13",
                    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            )
        assert r.status_code == 426
        assert r.json()["error"]["code"] == "websocket_not_supported"
        assert upstream.total_hits == 0

    def test_unparseable_body_is_400(self, start, upstream):
        proxy = start()
        with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca))) as c:
            r = c.post(
                "https://api.openai.com/v1/chat/completions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            )
            r2 = c.post("https://API.OpenAI.com//v1/chat/completions/?x=1", json={"messages": []})
        assert r.status_code == 400 and r.headers["x-should-retry"] == "false"
        assert "not JSON" in r.json()["error"]["message"]
        assert r2.status_code == 400 and "no model" in r2.json()["error"]["message"]
        assert upstream.total_hits == 0


class TestSettlement:
    def test_upstream_error_releases_the_reservation(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        upstream.knobs.status = 500
        with pytest.raises(openai.InternalServerError):
            chat(openai.OpenAI(max_retries=0), max_tokens=100)
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["state"] == "released" and row["cost_micro"] == 0

    def test_broken_stream_without_usage_charges_the_reservation(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        upstream.knobs.break_stream_after = 2
        with pytest.raises((httpx.HTTPError, openai.APIError)):  # the stream breaks mid-way
            list(chat(openai.OpenAI(max_retries=0), max_tokens=100, stream=True))
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["state"] == "settled" and row["outcome"].startswith("error")
        assert row["cost_micro"] == row["reserved_micro"] > 0

    def test_stream_without_usage_charges_the_reservation(self, start, client_env, upstream, tmp_path):
        proxy = start()
        client_env(proxy)
        upstream.knobs.omit_usage = True
        list(chat(openai.OpenAI(), max_tokens=100, stream=True))
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["outcome"] == "no_usage" and row["cost_micro"] == row["reserved_micro"]


class TestModes:
    def test_dry_run_refuses_nothing_and_records_what_it_would(self, start, client_env, upstream, tmp_path):
        proxy = start(spendfuse_budget="0.001", spendfuse_dry_run="true")
        client_env(proxy)
        chat(openai.OpenAI(), max_tokens=1000)
        assert upstream.total_hits == 1
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["decision"] == "dry_run" and row["rule"] == "budget:global" and row["cost_micro"] == 81
        assert "would refuse" in proxy.output()

    def test_launcher_enforces_and_redirect_script_still_works(self, start, client_env, upstream):
        proxy = start(launcher=True, spendfuse_budget="0.005")
        client_env(proxy)
        with pytest.raises(openai.RateLimitError):
            chat(openai.OpenAI(), max_tokens=1000)
        chat(openai.OpenAI(), max_tokens=10)
        assert upstream.total_hits == 1

    @pytest.mark.parametrize(
        "bad",
        [
            ["--set", "spendfuse_budget=abc"],
            ["--set", "spendfuse_max_multiplier=-1"],
            ["--set", "spendfuse_dry_run=perhaps"],
            ["--set", "spendfuse_websockets=sometimes"],
            ["--set", "spendfuse_log_format=xml"],
            ["--set", "spendfuse_metrics=0.0.0.0:9464"],  # exposed without a token
            ["--set", "spendfuse_metrics=nine"],
            ["--set", "spendfuse_log_format=json", "--set", "spendfuse_log_file=/nonexistent/dir/d.jsonl"],
            ["--set", "spendfuse_budgte=5"],  # misspelled
            ["--set", "spendfuse_rules=does-not-exist.yaml"],
            ["--set", "stream_large_bodies=1m"],
        ],
    )
    def test_launcher_exits_nonzero_on_a_bad_option(self, bad, tmp_path, confdir):
        r = subprocess.run(
            [
                str(BIN / "spendfuse"),
                "run",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                "0",
                "--set",
                f"confdir={confdir}",
                "--set",
                f"spendfuse_db={tmp_path / 'l.sqlite'}",
                *bad,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert r.returncode != 0, r.stdout + r.stderr
        assert "spendfuse" in (r.stdout + r.stderr)

    def test_addon_script_exits_nonzero_on_a_misspelled_option(self, tmp_path, confdir):
        r = subprocess.run(
            [
                str(BIN / "mitmdump"),
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                "0",
                "--set",
                f"confdir={confdir}",
                "-s",
                str(REPO / "addon.py"),
                "--set",
                f"spendfuse_db={tmp_path / 'l.sqlite'}",
                "--set",
                "spendfuse_max_multipler=2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert r.returncode != 0
        assert "spendfuse_max_multipler" in r.stdout + r.stderr

    def test_health_probe(self, start):
        proxy = start()
        with httpx.Client(proxy=proxy.url) as c:
            r = c.get("http://spendfuse.invalid/healthz")
        assert r.status_code == 200 and json.loads(r.text)["status"] == "ok"
