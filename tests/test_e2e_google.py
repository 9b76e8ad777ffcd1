"""Google end to end: a real mitmdump with spendfuse, raw HTTP clients speaking the Gemini API,
Vertex AI and Gemini CLI's Code Assist through HTTPS_PROXY, and the fake Google upstream, which
bills with its own count at Google's published prices. Allowed traffic settles to what the
provider billed; refusals come in Google's envelope; countTokens is free."""

from __future__ import annotations

import json
import ssl
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from governance import money
from tests.conftest import write_rules
from tests.test_e2e import micro, rows

GEMINI = "https://generativelanguage.googleapis.com"
TEXT = "word " * 900  # about 900 tokens: the fake bills 900 input tokens for it
# gemini-2.5-flash: $0.30/M input, $0.03/M cached input, $2.50/M output (thoughts included).
MODEL = "gemini-2.5-flash"
CONFIG = {"maxOutputTokens": 200, "thinkingConfig": {"thinkingBudget": 100}}


def body(**config: object) -> dict:
    return {
        "contents": [{"role": "user", "parts": [{"text": TEXT}]}],
        "generationConfig": {**CONFIG, **config},
    }


def google_rules(tmp_path: Path, cap: str = "1") -> Path:
    return write_rules(tmp_path / "r.yaml", prices={}, budgets=[{"name": "global", "limit_usd": cap}])


def client(proxy, **headers: str) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    return httpx.Client(
        proxy=proxy.url, verify=ctx, timeout=20, headers={"x-goog-api-key": "AIza-test", **headers}
    )


def settled(tmp_path: Path) -> list[dict]:
    return [r for r in rows(tmp_path / "ledger.sqlite") if r["state"] == "settled"]


def bill(upstream) -> list[int]:
    return [micro(b["usd"]) for b in upstream.bills]


@pytest.fixture
def knobs(upstream):
    k = upstream.knobs
    k.prompt_tokens, k.cached_tokens, k.completion_tokens, k.thought_tokens = 900, 300, 120, 50
    return k


def test_generate_content_settles_to_the_bill_with_thoughts_as_output(start, upstream, knobs, tmp_path):
    proxy = start(rules=google_rules(tmp_path))
    with client(proxy) as c:
        r = c.post(f"{GEMINI}/v1beta/models/{MODEL}:generateContent", json=body())
    assert r.status_code == 200 and r.json()["usageMetadata"]["thoughtsTokenCount"] == 50
    # (600 x $0.30 + 300 x $0.03 + (120 + 50) x $2.50) / 1M = $0.000614
    assert bill(upstream) == [614]
    [row] = settled(tmp_path)
    assert (row["model"], row["cost_micro"]) == (MODEL, 614)


@pytest.mark.parametrize("query", ["?alt=sse", ""], ids=["sse", "json-array"])
def test_a_stream_reaches_the_client_as_sent_and_settles_to_the_bill(start, upstream, knobs, tmp_path, query):
    knobs.chunks, knobs.chunk_delay_s = 3, 0.3
    proxy = start(rules=google_rules(tmp_path))
    got, first_at = b"", None
    with client(proxy) as c:
        url = f"{GEMINI}/v1beta/models/{MODEL}:streamGenerateContent{query}"
        begun = time.monotonic()
        with c.stream("POST", url, json=body()) as r:
            assert r.status_code == 200
            for piece in r.iter_raw():
                if first_at is None and b"part 0" in got + piece:
                    first_at = time.monotonic() - begun
                got += piece
        ended = time.monotonic() - begun
    # Streamed, not buffered: the first chunk came about 0.6 s before the last.
    assert first_at is not None and ended - first_at > 0.4
    if query:
        events = [json.loads(line[6:]) for line in got.decode().splitlines() if line.startswith("data: ")]
    else:
        events = json.loads(got)
    assert [e["candidates"][0]["content"]["parts"][0]["text"][:6] for e in events] == [
        "part 0",
        "part 1",
        "part 2",
    ]
    assert bill(upstream) == [614]
    [row] = settled(tmp_path)
    assert row["cost_micro"] == 614


def test_a_cut_stream_is_charged_its_reservation(start, upstream, knobs, tmp_path):
    knobs.chunks, knobs.break_stream_after = 3, 1  # cumulative usage in chunk 0, then cut
    proxy = start(rules=google_rules(tmp_path))
    with client(proxy) as c, pytest.raises(httpx.HTTPError):
        c.post(f"{GEMINI}/v1beta/models/{MODEL}:streamGenerateContent", json=body()).read()
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["cost_micro"] == row["reserved_micro"] > 614


def test_the_budget_admits_what_fits_and_gemini_cli_gets_a_400_it_stops_on(start, upstream, knobs, tmp_path):
    # Each answer costs $0.000614; each reservation covers 300 output tokens and the estimated input.
    proxy = start(rules=google_rules(tmp_path, cap="0.003"))
    statuses = []
    with client(proxy, **{"user-agent": "GeminiCLI/0.61.0 (linux; x64)"}) as c:
        for _ in range(8):
            r = c.post(f"{GEMINI}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", json=body())
            statuses.append(r.status_code)
            if r.status_code != 200:
                break
    assert statuses == [200] * 4 + [400]
    error = r.json()["error"]
    assert (error["code"], error["status"]) == (400, "FAILED_PRECONDITION")
    assert "spendfuse" in error["message"] and r.headers["x-spendfuse-refused"]
    assert len(upstream.bills) == 4 and sum(b["usd"] for b in upstream.bills) <= Decimal("0.003")
    assert [r["cost_micro"] for r in settled(tmp_path)] == [614] * 4


def test_count_tokens_is_free(start, upstream, knobs, tmp_path):
    proxy = start(rules=google_rules(tmp_path))
    with client(proxy) as c:
        r = c.post(f"{GEMINI}/v1beta/models/{MODEL}:countTokens", json={"contents": body()["contents"]})
    assert r.status_code == 200 and r.json() == {"totalTokens": 900}
    assert upstream.hits[f"/v1beta/models/{MODEL}:countTokens"] == 1
    assert rows(tmp_path / "ledger.sqlite") == [] or all(
        r["cost_micro"] == 0 for r in rows(tmp_path / "ledger.sqlite")
    )


def test_code_assist_wrapped_requests_settle_by_the_model_in_the_body(start, upstream, knobs, tmp_path):
    proxy = start(rules=google_rules(tmp_path))
    wrapped = {"model": MODEL, "project": "p-1", "user_prompt_id": "u-1", "request": body()}
    with client(proxy, authorization="Bearer ya29.oauth") as c:
        streamed = c.post(
            "https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse", json=wrapped
        )
        whole = c.post("https://cloudcode-pa.googleapis.com/v1internal:generateContent", json=wrapped)
        setup = c.post("https://cloudcode-pa.googleapis.com/v1internal:loadCodeAssist", json={"metadata": {}})
    assert streamed.status_code == whole.status_code == 200
    assert whole.json()["response"]["usageMetadata"]["promptTokenCount"] == 900
    assert setup.status_code == 404  # a free set-up call passed to the (fake) upstream, not refused
    assert bill(upstream) == [614, 614]
    assert [(r["model"], r["cost_micro"]) for r in settled(tmp_path)] == [(MODEL, 614)] * 2


@pytest.mark.parametrize(
    ("host", "location"),
    [("us-central1-aiplatform.googleapis.com", "us-central1"), ("aiplatform.googleapis.com", "global")],
)
def test_vertex_keeps_the_clients_oauth_token_and_settles(start, upstream, knobs, tmp_path, host, location):
    proxy = start(rules=google_rules(tmp_path))
    path = f"/v1/projects/p-1/locations/{location}/publishers/google/models/{MODEL}:streamGenerateContent"
    with client(proxy, authorization="Bearer ya29.vertex") as c:
        r = c.post(f"https://{host}{path}?alt=sse", json=body())
    assert r.status_code == 200
    [(what, creds)] = upstream.auth
    assert what == path and creds["authorization"] == "Bearer ya29.vertex"
    [row] = settled(tmp_path)
    assert row["cost_micro"] == 614


def test_the_openai_compatible_endpoint_is_metered_as_openai_at_googles_price(
    start, upstream, knobs, tmp_path
):
    proxy = start(rules=google_rules(tmp_path))
    chat = {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": TEXT}]}
    with client(proxy, authorization="Bearer AIza-test") as c:
        r = c.post(f"{GEMINI}/v1beta/openai/chat/completions", json=chat)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 900
    [row] = settled(tmp_path)
    # OpenAI's usage: 900 prompt (300 cached) + 120 completion, at gemini-2.5-flash's price.
    assert (row["provider"], row["model"], row["cost_micro"]) == ("google", MODEL, micro(Decimal("0.000489")))


REAL_GOOGLE = "AIzaSy-REALgoogleCUSTODY01"


def test_a_virtual_key_in_the_header_or_the_query_reaches_google_as_the_custody_key(
    start, upstream, knobs, tmp_path
):
    from governance.scopes import secret_hash
    from tests.test_e2e_governance import rules

    upstream.knobs.accepted_keys = frozenset({REAL_GOOGLE})
    custody = rules(
        tmp_path / "r.yaml",
        budgets=[{"id": "all", "max_usd": 1}],
        **{"global": {"budgets": ["all"]}},
        keys=[{"id": "agent", "secret_sha256": secret_hash("sk-virtual-g")}],
        credentials=[{"id": "g", "provider": "google", "env": "G_REAL"}],
    )
    proxy = start(rules=custody, env={"G_REAL": REAL_GOOGLE})
    url = f"{GEMINI}/v1beta/models/{MODEL}:generateContent"
    with client(proxy, **{"x-goog-api-key": "sk-virtual-g"}) as c:
        by_header = c.post(url, json=body())
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=20) as c:
        by_query = c.post(url + "?key=sk-virtual-g", json=body())
        counted = c.post(url.replace(":generateContent", ":countTokens") + "?key=sk-virtual-g", json=body())
    assert by_header.status_code == by_query.status_code == counted.status_code == 200
    assert [presented for _, presented in upstream.auth] == [{"x-goog-api-key": REAL_GOOGLE}] * 3
    for r in (by_header, by_query, counted):
        assert REAL_GOOGLE not in r.text and REAL_GOOGLE not in str(r.headers)
    rows_ = rows(tmp_path / "ledger.sqlite")
    assert [(r["principal"], r["cost_micro"]) for r in rows_ if r["state"] == "settled"] == [
        ("key:agent", 614)
    ] * 2


@pytest.mark.parametrize("counter_works", [True, False])
def test_near_the_limit_googles_own_count_is_reserved(start, upstream, knobs, tmp_path, counter_works):
    """The estimate's wide margins for CJK text do not fit the room left, Google's count does:
    the proxy asks `:countTokens` with the client's key and the request's input; if the counter
    fails, the estimate stands and the request is refused."""
    text = "你好世界，这是一段中文文本。" * 1500
    knobs.prompt_tokens, knobs.cached_tokens = 20000, 0  # Google's own count, which it also bills
    knobs.count_status = 200 if counter_works else 503
    # Room for 20,000 input tokens and 20% more ($0.30/M), and 300 output tokens ($2.50/M).
    budget = Decimal(20000 * 12 // 10 * 30 + 300 * 250) / 100 / 1_000_000
    proxy = start(rules=google_rules(tmp_path, cap=str(budget)))
    request = {"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": CONFIG}
    with client(proxy) as c:
        r = c.post(f"{GEMINI}/v1beta/models/{MODEL}:generateContent", json=request)
    assert r.status_code == (200 if counter_works else 400)
    assert upstream.hits[f"/v1beta/models/{MODEL}:countTokens"] == 1
    assert upstream.hits[f"/v1beta/models/{MODEL}:generateContent"] == (1 if counter_works else 0)
    counted = upstream.bodies[0]["generateContentRequest"]
    assert counted["model"] == f"models/{MODEL}" and counted["contents"] == request["contents"]
    assert "generationConfig" not in counted
    assert [h.get("x-goog-api-key") for h in upstream.headers] == ["AIza-test"] * len(upstream.headers)
    [row] = rows(tmp_path / "ledger.sqlite")
    if counter_works:
        assert row["state"] == "settled" and row["est_input_tokens"] == -(-20000 * 102 // 100)
    else:
        assert row["state"] == "refused" and row["est_input_tokens"] > 20000 * 12 // 10


def test_code_assist_without_a_cap_gets_the_largest_that_fits_inside_its_wrapped_request(
    start, upstream, knobs, tmp_path
):
    """Gemini CLI sends no maxOutputTokens and dynamic thinking: the model's limit (65,536 per
    candidate) is reserved, and where the budget cannot afford it, the largest cap that fits is
    written into the wrapped request's generationConfig, keeping the client's other settings."""
    knobs.output_at_cap = True  # the answer uses the whole cap: it costs what was reserved
    rules_file = write_rules(
        tmp_path / "r.yaml",
        prices={},
        budgets=[{"name": "global", "limit_usd": "0.05"}],
        model_limits={MODEL: 65536},
        clamp_output={"floor_tokens": 1024},
    )
    proxy = start(rules=rules_file)
    config = {"temperature": 0, "thinkingConfig": {"includeThoughts": True, "thinkingBudget": -1}}
    wrapped = {"model": MODEL, "project": "p-1", "request": {**body(), "generationConfig": config}}
    with client(proxy, authorization="Bearer ya29.oauth") as c:
        r = c.post("https://cloudcode-pa.googleapis.com/v1internal:generateContent", json=wrapped)
    assert r.status_code == 200
    sent = upstream.bodies[-1]["request"]["generationConfig"]
    cap = sent.pop("maxOutputTokens")
    assert sent == config and 1024 <= cap < 65536
    [row] = settled(tmp_path)
    # The whole cap was generated and billed, and it fit the budget: the clamp was the bound.
    cost = money.to_usd(row["cost_micro"], row["cost_submicro"])
    assert cost == upstream.bills[0]["usd"] <= Decimal("0.05")
