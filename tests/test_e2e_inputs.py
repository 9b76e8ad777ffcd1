"""End to end: inputs the request body understates. PDFs billed per page, text that looks like
media, and the tool-use prompt Anthropic adds. A real mitmdump, the official SDKs, and a fake
upstream that bills input as the provider documents it with its own count
(`Knobs.bill_as_provider`); under a cap, what the upstream really billed never passes it."""

from __future__ import annotations

import base64
import random

import anthropic
import openai
import pytest

from tests.support.pdfs import build_pdf
from tests.test_e2e import rows

CAP = 50_000  # µ$: $0.05


def start_metered(start, client_env, upstream, budget: str = "0.05"):
    proxy = start(spendfuse_budget=budget)
    client_env(proxy)
    upstream.knobs.bill_as_provider, upstream.knobs.completion_tokens = True, 10
    return proxy


def billed_micro(upstream, input_price: int, output_price: int) -> int:
    """µ$ of everything the upstream billed (prices in $ per million tokens)."""
    return sum(b["input_tokens"] * input_price + b["output_tokens"] * output_price for b in upstream.billed)


def check_ledger(tmp_path, real: int) -> list[dict]:
    ledger = rows(tmp_path / "ledger.sqlite")
    settled = [r for r in ledger if r["state"] == "settled"]
    assert sum(r["cost_micro"] or 0 for r in ledger) == real
    assert settled and all(r["input_tokens"] <= r["est_input_tokens"] for r in settled)
    return ledger


def claude_pdf(data: bytes) -> list[dict]:
    source = {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(data).decode()}
    return [
        {
            "role": "user",
            "content": [{"type": "document", "source": source}, {"type": "text", "text": "sum up"}],
        }
    ]


def openai_pdf(data: bytes) -> list[dict]:
    url = "data:application/pdf;base64," + base64.b64encode(data).decode()
    part = {"type": "input_file", "filename": "report.pdf", "file_data": url}
    return [{"role": "user", "content": [part, {"type": "input_text", "text": "sum up"}]}]


class TestDocuments:
    def test_a_hundred_page_pdf_is_refused_and_small_ones_stay_under_the_cap_anthropic(
        self, start, client_env, upstream, tmp_path
    ):
        """100 blank pages in a few KB bill 100 x (3,000 + 1,600) tokens: refused under $0.05. Three
        pages bill about $0.028 at $2/M: one fits, a second would pass the cap."""
        start_metered(start, client_env, upstream)
        client = anthropic.Anthropic(max_retries=0)
        hundred = build_pdf(100)
        assert len(hundred) < 16_000
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=claude_pdf(hundred))
        assert upstream.hits["/v1/messages"] == 0
        served = 0
        with pytest.raises(anthropic.RateLimitError):
            for _ in range(10):
                client.messages.create(
                    model="claude-sonnet-4-5", max_tokens=10, messages=claude_pdf(build_pdf(3))
                )
                served += 1
        real = billed_micro(upstream, 2, 20)  # claude-sonnet-4-5 at the tests' prices
        assert served == 1 and upstream.billed[0]["input_tokens"] >= 3 * 4600
        assert real <= CAP < 2 * real
        check_ledger(tmp_path, real)

    def test_a_hundred_page_pdf_is_refused_and_small_ones_stay_under_the_cap_openai(
        self, start, client_env, upstream, tmp_path
    ):
        """gpt-4o bills a page's text and an image of it (up to 3,000 + 1,445 tokens)."""
        start_metered(start, client_env, upstream)
        client = openai.OpenAI(max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="gpt-4o", input=openai_pdf(build_pdf(100)), max_output_tokens=10)
        assert upstream.total_hits == 0
        served = 0
        with pytest.raises(openai.RateLimitError):
            for _ in range(10):
                client.responses.create(model="gpt-4o", input=openai_pdf(build_pdf(3)), max_output_tokens=10)
                served += 1
        real = billed_micro(upstream, 1, 10)
        per_request = real // served
        assert served >= 2 and upstream.billed[0]["input_tokens"] >= 3 * 4445
        assert real <= CAP < real + per_request
        check_ledger(tmp_path, real)

    def test_an_unreadable_pdf_is_reserved_at_the_context_window(self, start, client_env, upstream, tmp_path):
        """A truncated PDF cannot be counted: it is bounded by the model's context window, which a
        $0.05 cap cannot afford."""
        from governance.pricing import context_window

        start_metered(start, client_env, upstream)
        with pytest.raises(anthropic.RateLimitError):
            anthropic.Anthropic(max_retries=0).messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=claude_pdf(build_pdf(3)[:-120])
            )
        # The free counter may be asked (it answers 400, as Anthropic does); nothing billable ran.
        assert upstream.hits["/v1/messages"] == 0
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["state"] == "refused" and row["est_input_tokens"] == context_window(
            "anthropic", "claude-sonnet-4-5"
        )


def data_url_text(size: int) -> str:
    return "data:image/png;base64," + base64.b64encode(random.Random(size).randbytes(size)).decode()


class TestTextThatLooksLikeMedia:
    def test_openai_text_parts_are_billed_as_text(self, start, client_env, upstream, tmp_path):
        """40 KB of base64 in a text part bill about 27k tokens, not one image: one request fits a
        $0.05 cap at $1/M, a second would pass it."""
        start_metered(start, client_env, upstream)
        client = openai.OpenAI(max_retries=0)
        content = [{"type": "text", "text": data_url_text(30_000)}, {"type": "text", "text": "what is this?"}]
        served = 0
        with pytest.raises(openai.RateLimitError):
            for _ in range(5):
                client.chat.completions.create(
                    model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": content}]
                )
                served += 1
        real = billed_micro(upstream, 1, 10)
        assert served == 1 and upstream.billed[0]["input_tokens"] > 25_000
        assert real <= CAP < 2 * real
        check_ledger(tmp_path, real)

    def test_an_anthropic_system_prompt_is_billed_as_text(self, start, client_env, upstream, tmp_path):
        start_metered(start, client_env, upstream)
        client = anthropic.Anthropic(max_retries=0)
        served = 0
        with pytest.raises(anthropic.RateLimitError):
            for _ in range(5):
                client.messages.create(
                    model="claude-sonnet-4-5",
                    max_tokens=10,
                    system=data_url_text(15_000),
                    messages=[{"role": "user", "content": "hi"}],
                )
                served += 1
        real = billed_micro(upstream, 2, 20)
        assert served == 1 and real <= CAP < 2 * real
        check_ledger(tmp_path, real)


class TestProviderPrompt:
    @pytest.mark.parametrize("tool_choice", [{"type": "auto"}, {"type": "any"}])
    def test_anthropics_tool_use_prompt_is_reserved(self, start, client_env, upstream, tmp_path, tool_choice):
        """Anthropic bills its tool-use system prompt and its bash tool's tokens on every request
        with tools: each reservation covers them, and the spend stops at the cap."""
        start_metered(start, client_env, upstream, budget="0.005")
        client = anthropic.Anthropic(max_retries=0)
        tools = [
            {"name": "weather", "description": "Weather for a city", "input_schema": {"type": "object"}},
            {"type": "bash_20250124", "name": "bash"},
        ]
        with pytest.raises(anthropic.RateLimitError):
            for _ in range(20):
                client.messages.create(
                    model="claude-sonnet-4-5",
                    max_tokens=10,
                    tools=tools,
                    tool_choice=tool_choice,
                    messages=[{"role": "user", "content": "hi"}],
                )
        assert all(b["input_tokens"] > 313 + 245 for b in upstream.billed)
        real = billed_micro(upstream, 2, 20)
        assert 2 <= len(upstream.billed) and real <= 5_000
        check_ledger(tmp_path, real)
