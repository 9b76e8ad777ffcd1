"""OpenAI-compatible hosts (OpenRouter, Groq, Mistral, DeepSeek, xAI): their usage fixtures read
by the openai family, whole and streamed (split at random byte boundaries), billed by each host's
`usage:` rule, and settled by the engine at the cost each provider documents. The expected counts
are read off the fixtures by hand; the expected costs come from genai-prices' own calculator on
those counts (or OpenRouter's reported cost)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from governance import money, policy, usage_rules, wire
from governance.engine import Engine
from governance.errors import RequestParseError
from governance.families import openai
from governance.families.tap import SseStream
from governance.hostrules import shipped_table
from governance.ledger import Ledger
from governance.types import Endpoint, Metering, Usage

FIX = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 11, 22, tzinfo=UTC)

# entry -> (genai-prices provider, base path, host)
HOSTS = {
    "openrouter": ("openrouter", "/api/v1", "openrouter.ai"),
    "groq": ("groq", "/openai/v1", "api.groq.com"),
    "mistral": ("mistral", "/v1", "api.mistral.ai"),
    "deepseek": ("deepseek", ("/", "/v1"), "api.deepseek.com"),
    "xai": ("x-ai", "/v1", "api.x.ai"),
}

# What each fixture reports, read by hand, for chat.json then chat_stream.sse:
# (input, output, cache read, reasoning, reported cost).
REPORTED = {
    "openrouter": ((1500, 200, 1000, 0, Decimal("0.0050715")), (2100, 90, 1000, 0, Decimal("0.00171"))),
    "groq": ((820, 150, 0, 0, None), (640, 75, 0, 0, None)),
    "mistral": ((1300, 250, 0, 0, None), (700, 60, 0, 0, None)),
    "deepseek": ((3000, 500, 2048, 320, None), (1800, 40, 1536, 0, None)),
    "xai": ((900, 120, 256, 700, None), (500, 30, 0, 410, None)),
}
BODY = {name: body for name, (body, _) in REPORTED.items()}
STREAM = {name: stream for name, (_, stream) in REPORTED.items()}


def counts(u: Usage) -> tuple:
    return (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.reasoning_tokens, u.reported_cost)


@pytest.mark.parametrize("name", list(HOSTS))
def test_the_shipped_entry_meters_the_host_with_its_provider(name):
    provider, base, host = HOSTS[name]
    entry = shipped_table().lookup(host)
    assert entry is not None and entry.name == name
    assert (entry.family, entry.provider, entry.base_path, entry.envelope) == (
        "openai",
        provider,
        base,
        "openai",
    )
    # The provider id exists in the installed genai-prices data.
    assert provider in {p.id for p in genai_prices.data_snapshot.get_snapshot().providers}
    for prefix in [base] if isinstance(base, str) else base:
        found = wire.detect("POST", host, prefix.rstrip("/") + "/chat/completions")
        assert (found.family, found.api, found.metering, found.entry) == (
            "openai",
            "chat",
            Metering.METERED,
            name,
        )


def test_usage_rules_are_the_hosts_documented_differences():
    rules = {e.name: e.usage for e in shipped_table().entries if e.usage is not None}
    assert rules == {
        "openrouter": usage_rules.UsageRules(cost="reported"),
        "mistral": usage_rules.UsageRules(stream="sent", cap_field="max_tokens"),
        "xai": usage_rules.UsageRules(reasoning="separate"),
    }


@pytest.mark.parametrize("name", list(HOSTS))
def test_body_usage(name):
    usage = openai.usage_from_body("chat", json.loads((FIX / name / "chat.json").read_text()))
    assert usage is not None and counts(usage) == BODY[name]


@pytest.mark.parametrize("name", list(HOSTS))
@pytest.mark.parametrize("seed", range(8))
def test_stream_usage_split_at_random_bytes(name, seed):
    raw = (FIX / name / "chat_stream.sse").read_bytes()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), k=min(len(raw) - 1, rng.randint(1, 40))))
    reader = openai.stream_reader("chat")
    assert isinstance(reader, SseStream)
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        reader.feed(raw[a:b])
    reader.close()
    assert reader.usage is not None and counts(reader.usage) == STREAM[name]


def test_deepseek_cache_hits_and_openai_cached_tokens():
    both = {
        "prompt_tokens": 10,
        "completion_tokens": 1,
        "prompt_cache_hit_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 6},
    }
    assert openai.usage_from_body("chat", {"usage": both}).cache_read_tokens == 6
    hits = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_cache_hit_tokens": 4}
    assert openai.usage_from_body("chat", {"usage": hits}).cache_read_tokens == 4


@pytest.mark.parametrize("cost", [True, "0.1", -0.5, float("nan"), float("inf"), None, [1]], ids=repr)
def test_a_reported_cost_that_is_not_a_usd_amount_is_ignored(cost):
    usage = openai.usage_from_body(
        "chat", {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": cost}}
    )
    assert usage.reported_cost is None


def test_billed_adds_separate_reasoning_and_keeps_included():
    u = Usage(900, 120, 256, reasoning_tokens=700)
    assert usage_rules.billed(usage_rules.UsageRules(reasoning="separate"), u).output_tokens == 820
    assert usage_rules.billed(usage_rules.OPENAI, u).output_tokens == 120


# -- the engine, end to end without a proxy ----------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path):
    led = Ledger.open(tmp_path / "l.sqlite")
    yield Engine(policy.parse({"budgets": [{"limit_usd": 10}]}, Path(".")), led)
    led.close()


def endpoint(name: str) -> Endpoint:
    _, base, host = HOSTS[name]
    path = (base if isinstance(base, str) else base[-1]).rstrip("/") + "/chat/completions"
    return Endpoint("openai", "chat", Metering.METERED, host, path, "openai", name)


MODELS = {
    "openrouter": "anthropic/claude-sonnet-4.5",
    "groq": "llama-3.3-70b-versatile",
    "mistral": "mistral-large-latest",
    "deepseek": "deepseek-reasoner",
    "xai": "grok-4-0709",
}


def expected_cost(name: str) -> Decimal:
    """What the provider bills for chat.json: OpenRouter its reported cost; the others their
    genai-prices price of the counts, xAI's reasoning on top of its output."""
    total_in, out, read, reasoning, reported = BODY[name]
    if reported is not None:
        return reported
    if name == "xai":
        out += reasoning
    usage = genai_prices.Usage(input_tokens=total_in, output_tokens=out, cache_read_tokens=read)
    return Decimal(genai_prices.calc_price(usage, MODELS[name], provider_id=HOSTS[name][0]).total_price)


@pytest.mark.parametrize("name", list(HOSTS))
def test_settles_each_host_at_its_providers_bill(engine, name):
    req = {"model": MODELS[name], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
    read = engine.read_request(endpoint(name), req, principal="p", request_id=name)
    assert read.info.provider == HOSTS[name][0]
    assert engine.admit(read.info, NOW).allowed
    usage = openai.usage_from_body("chat", json.loads((FIX / name / "chat.json").read_text()))
    engine.finish(read.info, usage, NOW, outcome="usage")
    row = engine.ledger.request(name)
    want = money.split(expected_cost(name))
    assert (row["state"], row["cost_micro"]) == ("settled", want[0])
    assert (row["price_source"] == "reported:usage.cost") == (name == "openrouter")


@pytest.mark.parametrize(("name", "injects"), [(n, n != "mistral") for n in HOSTS])
def test_stream_usage_is_switched_on_except_where_the_host_rejects_it(engine, name, injects):
    req = {
        "model": MODELS[name],
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "stream": True,
    }
    read = engine.read_request(endpoint(name), req, principal="p", request_id=name)
    if injects:
        assert read.forward_body == {**req, "stream_options": {"include_usage": True}}
        assert read.info.hides_added_events
    else:
        assert read.forward_body is None and not read.info.hides_added_events


def test_an_openrouter_variant_genai_prices_does_not_know_is_refused_and_free_is_free(engine):
    nitro = {
        "model": "anthropic/claude-sonnet-4.5:nitro",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }
    d = engine.admit(
        engine.read_request(endpoint("openrouter"), nitro, principal="p", request_id="n").info, NOW
    )
    assert not d.allowed and "claude-sonnet-4.5:nitro" in d.refusal.message
    free = {**nitro, "model": "meta-llama/llama-3.3-70b-instruct:free"}
    d = engine.admit(
        engine.read_request(endpoint("openrouter"), free, principal="p", request_id="f").info, NOW
    )
    assert d.allowed and d.reserved == 0


@pytest.mark.parametrize(("name", "field"), [("mistral", "max_tokens"), ("groq", "max_completion_tokens")])
def test_an_injected_output_cap_goes_in_the_field_the_host_takes(tmp_path, name, field):
    rules = {
        "budgets": [{"limit_usd": 10}],
        "clamp_output": {"floor_tokens": 10},
        "model_limits": {MODELS[name]: 500},
    }
    led = Ledger.open(tmp_path / "c.sqlite")
    try:
        e = Engine(policy.parse(rules, Path(".")), led)
        req = {"model": MODELS[name], "messages": [{"role": "user", "content": "hi"}]}
        read = e.read_request(endpoint(name), req, principal="p", request_id=name)
        decision = e.admit(read.info, NOW)
        assert decision.allowed and decision.output_cap == 500
        sent = e.forward_body(read, decision, "openai")
    finally:
        led.close()
    other = ({"max_tokens", "max_completion_tokens"} - {field}).pop()
    assert sent[field] == 500 and other not in sent


def test_xai_responses_count_reasoning_inside_output_tokens():
    body = {
        "model": "grok-4-0709",
        "usage": {
            "input_tokens": 100,
            "output_tokens": 900,
            "output_tokens_details": {"reasoning_tokens": 700},
        },
    }
    usage = openai.usage_from_body("responses", body)
    xai = usage_rules.UsageRules(reasoning="separate")
    assert usage_rules.billed(xai, usage).output_tokens == 900


def test_openrouter_fallbacks_reserve_the_priciest_and_plugins_are_unpriced(engine):
    req = {
        "model": "openai/gpt-4o-mini",
        "models": ["anthropic/claude-sonnet-4.5", "meta-llama/llama-3.3-70b-instruct:free"],
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
    }
    read = engine.read_request(endpoint("openrouter"), req, principal="p", request_id="fb")
    assert read.info.model == "anthropic/claude-sonnet-4.5"
    with pytest.raises(RequestParseError, match="no-such/model"):
        engine.read_request(
            endpoint("openrouter"), {**req, "models": ["no-such/model"]}, principal="p", request_id="x"
        )
    with pytest.raises(RequestParseError, match="models"):
        engine.read_request(
            endpoint("openrouter"),
            {**req, "models": "anthropic/claude-sonnet-4.5"},
            principal="p",
            request_id="y",
        )
    web = {**req, "models": [], "plugins": [{"id": "web", "max_results": 5}]}
    d = engine.admit(
        engine.read_request(endpoint("openrouter"), web, principal="p", request_id="w").info, NOW
    )
    assert not d.allowed and "plugin web" in d.refusal.message
