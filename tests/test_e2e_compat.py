"""End to end through a real mitmdump with the openai SDK (its base URL per host, HTTPS_PROXY):
the OpenAI-compatible hosts, Azure OpenAI and operator-mapped hosts against the fake upstream
(`tests/support/fake_compat.py`), streamed and not. Each settles to what its provider bills by
the fake's own count: OpenRouter its reported cost; the others genai-prices' price of the fake's
counts (DeepSeek's cache hits as cache reads, xAI's reasoning on top of its output). Refusals
come in each host's envelope and never reach the upstream."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import genai_prices
import openai
import pytest
import yaml

from governance import money
from tests.support import fake_compat
from tests.test_compat_hosts import HOSTS as UNIT_HOSTS
from tests.test_compat_hosts import MODELS
from tests.test_e2e import rows

# host entry -> (base URL, model, genai-prices provider), from the unit tests' table.
HOSTS = {
    name: (
        f"https://{host}{(base if isinstance(base, str) else base[0]).rstrip('/')}",
        MODELS[name],
        provider,
    )
    for name, (provider, base, host) in UNIT_HOSTS.items()
}
# Hosts that report cache hits (Groq and Mistral report none).
CACHING = {"openrouter", "deepseek", "xai"}
AZURE = "https://myres.openai.azure.com/openai/v1"


@pytest.fixture(autouse=True)
def _compat_knobs():
    fake_compat.COMPAT.reasoning_tokens = 0
    yield
    fake_compat.COMPAT.reasoning_tokens = 0


def rules(tmp_path: Path, limit: str = "1", **extra: object) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump({"version": 1, "budgets": [{"name": "global", "limit_usd": limit}], **extra})
    )
    return path


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-host-key", max_retries=0)


def ask(c: openai.OpenAI, model: str, stream: bool, **kw) -> list:
    """The answer's chunks (one: the whole answer, when not streamed)."""
    kw = {"max_tokens": 50, **kw}
    got = c.chat.completions.create(
        model=model, stream=stream, messages=[{"role": "user", "content": "hi"}], **kw
    )
    return list(got) if stream else [got]


def provider_price(billed: dict, model: str, provider: str) -> Decimal:
    """genai-prices' price of what the fake provider billed."""
    usage = genai_prices.Usage(
        input_tokens=billed["input_tokens"],
        cache_read_tokens=billed["cache_read_tokens"],
        output_tokens=billed["output_tokens"],
    )
    return Decimal(genai_prices.calc_price(usage, model, provider_id=provider).total_price)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", list(HOSTS))
def test_each_host_settles_to_its_providers_bill(start, client_env, upstream, tmp_path, name, stream):
    base, model, provider = HOSTS[name]
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 1200, 30
    upstream.knobs.cached_tokens = 1024 if name in CACHING else 0
    fake_compat.COMPAT.reasoning_tokens = 200
    proxy = start(rules=rules(tmp_path))
    client_env(proxy)
    chunks = ask(client(base), model, stream)
    assert "".join(
        (c.choices[0].delta.content or "") if stream else c.choices[0].message.content
        for c in chunks
        if c.choices
    )
    [billed] = upstream.billed
    [row] = rows(tmp_path / "ledger.sqlite")
    if name == "openrouter":  # what OpenRouter says it charged, exactly
        want = upstream.bills[-1]["usd"]
        assert row["price_source"] == "reported:usage.cost"
        assert want != provider_price(billed, model, provider)  # so the reported cost is what won
    else:
        want = provider_price(billed, model, provider)
    assert row["state"] == "settled" and (row["cost_micro"], row["cost_submicro"]) == money.split(want)
    sent = upstream.bodies[-1]
    if stream:
        # Usage was asked for only where the host takes the field, and the client sees only the
        # chunks it asked for: none without choices.
        assert ("stream_options" in sent) == (name != "mistral")
        assert all(c.choices for c in chunks)


@pytest.mark.parametrize("name", list(HOSTS))
def test_a_refusal_comes_in_the_hosts_envelope_and_never_reaches_it(
    start, client_env, upstream, tmp_path, name
):
    base, model, _ = HOSTS[name]
    proxy = start(rules=rules(tmp_path, limit="0.000001"))
    client_env(proxy)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client(base), model, stream=True)
    err = refused.value
    assert err.status_code == 429 and err.body["type"] == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    assert "spendfuse" in err.message and "budget" in err.message
    assert upstream.total_hits == 0


def test_an_unknown_openrouter_variant_is_refused_as_unpriced(start, client_env, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path))
    client_env(proxy)
    with pytest.raises(openai.BadRequestError, match="claude-sonnet-4.5:nitro"):
        ask(client(HOSTS["openrouter"][0]), "anthropic/claude-sonnet-4.5:nitro", stream=False)
    assert upstream.total_hits == 0


# -- Azure OpenAI --------------------------------------------------------------------------------


def azure_client(api: str) -> openai.OpenAI:
    """The openai SDK on Azure: `AzureOpenAI` (classic deployments, `api-key`), or the plain
    client on the v1 API."""
    if api == "classic":
        endpoint = AZURE.removesuffix("/openai/v1")
        return openai.AzureOpenAI(
            azure_endpoint=endpoint, api_version="2024-10-21", api_key="k", max_retries=0
        )
    return client(AZURE)


@pytest.mark.parametrize("api", ["classic", "v1"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_azure_alias_settles_by_the_response_model(start, client_env, upstream, tmp_path, stream, api):
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 900, 40
    proxy = start(rules=rules(tmp_path, azure_deployments={"prod-4o": "gpt-4o"}))
    client_env(proxy)
    chunks = ask(azure_client(api), "prod-4o", stream)
    assert (
        upstream.hits[
            "/openai/deployments/prod-4o/chat/completions"
            if api == "classic"
            else "/openai/v1/chat/completions"
        ]
        == 1
    )
    [billed] = upstream.billed
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["model"] == "gpt-4o" and billed["model"] == "gpt-4o-2024-11-20"
    assert (row["cost_micro"], row["cost_submicro"]) == money.split(provider_price(billed, "gpt-4o", "azure"))
    if stream:
        # Azure's content-filter chunks reach the client untouched; the usage chunk spendfuse
        # asked for does not.
        extras = [c.model_extra or {} for c in chunks]
        assert "prompt_filter_results" in extras[0] and chunks[0].choices == []
        assert any("content_filter_offsets" in (ch.model_extra or {}) for c in chunks for ch in c.choices)
        assert all(c.usage is None for c in chunks)


def test_azure_without_an_alias_reserves_the_priciest_allowed_and_settles_by_the_response(
    start, client_env, upstream, tmp_path
):
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 900, 40
    # gpt-4o's worst case (1000 output tokens at $10/M) does not fit $0.008; gpt-4o-mini's does.
    bound = {"*": ["gpt-4o-mini", "gpt-4o"]}
    proxy = start(rules=rules(tmp_path, limit="0.008", azure_deployments=bound))
    client_env(proxy)
    with pytest.raises(openai.RateLimitError, match="spendfuse"):
        ask(client(AZURE), "cheap", stream=False, max_tokens=1000)
    assert upstream.total_hits == 0
    ask(client(AZURE), "cheap", stream=True, max_tokens=100)
    [billed] = upstream.billed
    assert billed["model"] == "gpt-4o-mini-2024-07-18"
    row = rows(tmp_path / "ledger.sqlite")[-1]
    assert row["model"] == "gpt-4o" and row["state"] == "settled"
    assert (row["cost_micro"], row["cost_submicro"]) == money.split(
        provider_price(billed, "gpt-4o-mini", "azure")
    )


@pytest.mark.parametrize("api", ["classic", "v1"])
def test_azure_with_nothing_bounding_the_deployment_is_refused(start, client_env, upstream, tmp_path, api):
    proxy = start(rules=rules(tmp_path))
    client_env(proxy)
    with pytest.raises(openai.BadRequestError, match="azure_deployments") as refused:
        ask(azure_client(api), "prod-4o", stream=False)
    assert refused.value.body["type"] == "invalid_request_error"
    assert upstream.total_hits == 0


# -- operator-mapped hosts -----------------------------------------------------------------------


def test_operator_hosts_price_with_their_own_prices_or_default_price(start, client_env, upstream, tmp_path):
    vllm = {"prices": {"qwen3-coder": {"input_mtok": 0.5, "output_mtok": 2}}}
    ollama = {"default_price": {"input_mtok": 0.1, "output_mtok": 0.3}}
    hosts = [
        {"name": f"my-{name}", "match": [f"{name}.internal"], "family": "openai", **priced}
        for name, priced in (("vllm", vllm), ("ollama", ollama))
    ]
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 1000, 20
    proxy = start(rules=rules(tmp_path, hosts=hosts))
    client_env(proxy)
    ask(client("https://vllm.internal/v1"), "qwen3-coder", stream=True)
    ask(client("https://ollama.internal/v1"), "llama3.2:3b", stream=False)
    vllm, ollama = rows(tmp_path / "ledger.sqlite")
    assert money.split(Decimal("0.00054")) == (vllm["cost_micro"], vllm["cost_submicro"])  # 1000*0.5 + 20*2
    assert money.split(Decimal("0.000106")) == (
        ollama["cost_micro"],
        ollama["cost_submicro"],
    )  # 1000*0.1 + 20*0.3
    # A model neither priced nor covered by a default is refused on the vLLM host.
    with pytest.raises(openai.BadRequestError, match="other-model"):
        ask(client("https://vllm.internal/v1"), "other-model", stream=False)
    assert upstream.total_hits == 2


# -- key custody ---------------------------------------------------------------------------------

REAL_OR, REAL_AZ, VIRTUAL = "sk-or-v1-REALcustody", "REALazureCUSTODYkey", "sk-virtual-agent"


def test_custody_keys_go_to_their_providers_hosts_and_azures_only_to_the_named_one(
    start, client_env, upstream, tmp_path
):
    from governance.scopes import secret_hash

    custody = {
        "version": 2,
        "budgets": [{"id": "all", "max_usd": 1}],
        "global": {"budgets": ["all"]},
        "keys": [{"id": "agent", "secret_sha256": secret_hash(VIRTUAL)}],
        "credentials": [
            {"id": "or", "provider": "openrouter", "env": "OR_REAL"},
            {"id": "az", "provider": "azure", "env": "AZ_REAL", "hosts": ["myres.openai.azure.com"]},
        ],
        "azure_deployments": {"prod-4o": "gpt-4o"},
    }
    path = tmp_path / "custody.yaml"
    path.write_text(yaml.safe_dump(custody))
    upstream.knobs.accepted_keys = frozenset({REAL_OR, REAL_AZ})
    proxy = start(rules=path, env={"OR_REAL": REAL_OR, "AZ_REAL": REAL_AZ})
    client_env(proxy)
    agent = {"api_key": VIRTUAL, "max_retries": 0}
    ask(openai.OpenAI(base_url=HOSTS["openrouter"][0], **agent), HOSTS["openrouter"][1], stream=True)
    ask(openai.OpenAI(base_url=AZURE, **agent), "prod-4o", stream=False)
    assert [presented for _, presented in upstream.auth] == [
        {"authorization": f"Bearer {REAL_OR}"},
        {"api-key": REAL_AZ},
    ]
    # Another Azure resource (one an agent could create) never gets the key.
    with pytest.raises(openai.PermissionDeniedError, match="no custody key"):
        ask(
            openai.OpenAI(base_url="https://other.openai.azure.com/openai/v1", **agent),
            "prod-4o",
            stream=False,
        )
    assert upstream.total_hits == 2
    assert [r["state"] for r in rows(tmp_path / "ledger.sqlite")] == ["settled", "settled", "refused"]
