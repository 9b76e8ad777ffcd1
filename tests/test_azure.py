"""Azure OpenAI: deployment names read from the classic path or the v1 body, mapped to models by
the rules (`azure_deployments`), or reserved as the priciest model the rules allow and settled by
the model the response reports; content-filter chunks pass untouched; custody keys only to the
hosts a credential names. Expected costs come from genai-prices' calculator on hand-read counts."""

from __future__ import annotations

import json
import random
import uuid
from contextlib import ExitStack, closing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from governance import money, policy, wire
from governance.engine import Engine
from governance.errors import RequestParseError
from governance.families import azure
from governance.families.tap import StreamTap
from governance.ledger import Ledger
from governance.rulefile import RulesInvalid
from governance.types import Metering, RequestLine

FIX = Path(__file__).parent / "fixtures" / "azure"
NOW = datetime(2026, 11, 22, tzinfo=UTC)
HOST = "myres.openai.azure.com"
CLASSIC = "/openai/deployments/{}/chat/completions?api-version=2024-10-21"


RULES = {"version": 2, "budgets": [{"id": "b", "max_usd": 10}], "global": {"budgets": ["b"]}}


@pytest.fixture
def make(tmp_path: Path):
    """Engines under RULES plus the given rules, each on its own ledger, closed at the end."""
    with ExitStack() as opened:

        def _make(**data) -> Engine:
            led = opened.enter_context(closing(Ledger.open(tmp_path / f"{uuid.uuid4().hex}.sqlite")))
            return Engine(policy.parse({**RULES, **data}, Path(".")), led)

        yield _make


def read(e: Engine, deployment: str, *, key_id: str | None = None, v1: bool = False, **body):
    req = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 100, **body}
    if v1:
        path = "/openai/v1/chat/completions"
        req["model"] = deployment
    else:
        path = CLASSIC.format(deployment)
    ep = wire.detect("POST", HOST, path.split("?")[0], e.hosts)
    assert ep is not None and (ep.family, ep.api, ep.metering) == ("azure", "chat", Metering.METERED)
    return e.read_request(
        ep, req, principal="p", request_id=deployment, key_id=key_id, line=RequestLine(path), now=NOW
    )


def test_the_deployment_comes_from_the_classic_path_or_the_v1_body():
    assert azure.deployment_of(CLASSIC.format("prod%2D4o")) == "prod-4o"
    assert azure.deployment_of("/openai/v1/chat/completions") is None
    with pytest.raises(RequestParseError):
        azure.deployment_of("/openai/deployments/a%2Fb/chat/completions")
    parsed = azure.parse_request(
        "chat", {"messages": [], "model": "other"}, RequestLine(CLASSIC.format("d1"))
    )
    assert parsed.model == "d1"  # Azure ignores a body's model on the classic path


@pytest.mark.parametrize("v1", [False, True])
def test_a_mapped_deployment_is_reserved_as_its_model(make, v1):
    e = make(azure_deployments={"prod": "gpt-4o", f"{HOST}/Prod": "gpt-4o-mini"})
    r = read(e, "prod", v1=v1)
    assert (r.info.model, r.info.provider) == ("gpt-4o-mini", "azure")  # this resource's own wins
    other = make(azure_deployments={"prod": "gpt-4o"})
    assert read(other, "PROD", v1=v1).info.model == "gpt-4o"


def test_several_models_reserve_the_priciest_and_settle_by_the_response_model(make):
    e = make(azure_deployments={"*": ["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano"]})
    r = read(e, "anything", max_tokens=1000)
    assert r.info.model == "gpt-4o"
    d = e.admit(r.info, NOW)
    worst = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=r.info.input_tokens, output_tokens=1000),
        "gpt-4o",
        provider_id="azure",
    ).total_price
    assert d.allowed and d.reserved >= Decimal(worst)
    usage = azure.usage_from_body(
        "chat", {"model": "gpt-4o-mini-2024-07-18", "usage": {"prompt_tokens": 900, "completion_tokens": 80}}
    )
    e.finish(r.info, usage, NOW, outcome="usage")
    want = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=900, output_tokens=80), "gpt-4o-mini", provider_id="azure"
    )
    assert e.ledger.request("anything")["cost_micro"] == money.split(Decimal(want.total_price))[0]


def test_an_unmapped_deployment_is_bounded_by_the_keys_models_or_refused(make):
    keys = [
        {
            "id": "narrow",
            "listeners": ["9001"],
            "providers": [{"provider": "azure", "allowed_models": ["gpt-4o-mini", "o3"]}],
        },
        {"id": "glob", "listeners": ["9002"], "allowed_models": ["gpt-4o*"]},
        {"id": "any", "listeners": ["9003"]},
    ]
    e = make(keys=keys)
    assert read(e, "d", key_id="narrow", max_tokens=1000).info.model == "o3"
    for key_id in ("glob", "any", None):
        with pytest.raises(RequestParseError, match="azure_deployments"):
            read(e, "d", key_id=key_id)


def test_rules_refuse_an_unpriced_deployment_model_and_an_azure_key_without_hosts(tmp_path):
    with pytest.raises(RulesInvalid, match="no-such-model"):
        policy.parse({"azure_deployments": {"d": ["gpt-4o", "no-such-model"]}}, Path("."))
    with pytest.raises(RulesInvalid, match="must name the hosts"):
        policy.parse({"credentials": [{"id": "az", "provider": "azure", "env": "AZ"}]}, Path("."))
    with pytest.raises(RulesInvalid, match="exactly"):
        policy.parse(
            {
                "credentials": [
                    {"id": "az", "provider": "azure", "env": "AZ", "hosts": ["*.openai.azure.com"]}
                ]
            },
            Path("."),
        )


@pytest.mark.parametrize("seed", range(6))
def test_content_filter_chunks_pass_untouched_and_only_the_added_usage_chunk_is_dropped(seed):
    raw = (FIX / "chat_stream.sse").read_bytes()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), k=rng.randint(1, 30)))
    tap = StreamTap(azure.StreamUsage("chat"), drop=lambda ev: azure.added_event("chat", ev))
    pieces = [tap(raw[a:b]) for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)] + [tap(b"")]
    out = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in pieces)
    sent = [json.loads(x[6:]) for x in raw.decode().split("\n\n") if x.startswith("data: {")]
    got = [json.loads(x[6:]) for x in out.decode().split("\n\n") if x.startswith("data: {")]
    assert got == [c for c in sent if "usage" not in c or c["choices"] or c["usage"] is None]
    assert got[0]["prompt_filter_results"] and any(
        "content_filter_offsets" in c["choices"][0] for c in got if c["choices"]
    )
    assert (tap.usage.input_tokens, tap.usage.output_tokens, tap.usage.model) == (
        1200,
        300,
        "gpt-4o-2024-11-20",
    )
