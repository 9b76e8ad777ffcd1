"""The seed scenario end to end (shared/seeds/000: the eval harness's per-run cap through a
gateway with a virtual key). The agent, a process of its own, has OPENAI_API_KEY=sk-proxy and a
base URL (or, separately, HTTPS_PROXY); spendfuse holds the real key; the run's budget comes from
EVAL_MODEL_MAX_BUDGET (default $1) at the harness's prices ($2.50 / $10 per 1M). The run is
served until the cap, then refused, and stops printing spendfuse's message. Once with the rules
written natively (`rules/eval-harness.yaml`), once through `import-bifrost` of the equivalent
Bifrost config (`tests/fixtures/seed/bifrost-eval-harness.json`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from governance import RULES_DIR
from tests.support.gateway import gateway
from tests.support.proxy import BIN, Proxy
from tests.test_e2e import rows

REAL = "sk-proj-REALevalHarnessKEY0042"
VIRTUAL = "sk-proxy"
AGENT = Path(__file__).parent / "support" / "eval_agent.py"
BIFROST = Path(__file__).parent / "fixtures" / "seed" / "bifrost-eval-harness.json"
IN_PRICE, OUT_PRICE = Decimal("2.50"), Decimal("10")  # USD per 1M tokens: the oracle's own book


def native_rules(tmp_path: Path, budget: str | None) -> tuple[Path, dict[str, str]]:
    """The shipped rules, with the start script's environment: SPENDFUSE_BUDGET from the run's
    EVAL_MODEL_MAX_BUDGET (default $1), the real key in the proxy's own OPENAI_API_KEY."""
    return RULES_DIR / "eval-harness.yaml", {"SPENDFUSE_BUDGET": budget or "1", "OPENAI_API_KEY": REAL}


def bifrost_rules(tmp_path: Path, budget: str | None) -> tuple[Path, dict[str, str]]:
    """The Bifrost config, with the budget the harness's start script renders into it, imported."""
    config = json.loads(BIFROST.read_text())
    config["governance"]["budgets"][0]["max_limit"] = float(budget or "1")
    source = tmp_path / "bifrost.json"
    source.write_text(json.dumps(config))
    done = subprocess.run(
        [str(BIN / "spendfuse"), "import-bifrost", str(source)],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENAI_API_KEY": REAL},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert REAL not in done.stdout + done.stderr  # the import names the variable, never the key
    path = tmp_path / "imported.yaml"
    path.write_text(done.stdout)
    return path, {"OPENAI_API_KEY": REAL}


RULES = {"native": native_rules, "bifrost": bifrost_rules}


def run_agent(proxy: Proxy, mode: str, max_tokens: int = 2000) -> tuple[int, int, str, dict[str, str]]:
    """The agent's run: `(exit code, answers it got, what it printed on stderr, its environment)`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith(("_PROXY", "_BASE_URL", "API_KEY"))}
    env["OPENAI_API_KEY"] = VIRTUAL
    if mode == "gateway":
        env["OPENAI_BASE_URL"] = proxy.gateway_url + "/openai/v1"
    else:
        env["HTTPS_PROXY"] = proxy.url
        env["SSL_CERT_FILE"] = str(proxy.ca)
    done = subprocess.run(
        [sys.executable, str(AGENT), str(max_tokens)], capture_output=True, text=True, env=env, timeout=300
    )
    return done.returncode, int(done.stdout.strip() or -1), done.stderr.strip(), env


def bill(upstream) -> Decimal:  # type: ignore[no-untyped-def]
    """What the fake provider billed, by its own count and the harness's prices."""
    return sum(
        (b["input_tokens"] * IN_PRICE + b["output_tokens"] * OUT_PRICE) / 10**6 for b in upstream.billed
    ) or Decimal(0)


@pytest.mark.parametrize("mode", ["gateway", "proxy"])
@pytest.mark.parametrize("written", list(RULES))
def test_the_run_is_served_to_its_cap_then_stops_with_spendfuses_message(
    start, upstream, tmp_path, mode, written
):
    # Each answer costs the provider's bill (11 in, 7 out: 97.5 µ$), but each request reserves
    # its worst case (2,000 output tokens: about $0.02): a $0.021 cap serves requests until the
    # spend leaves less than one worst case, then refuses.
    upstream.knobs.accepted_keys = frozenset({REAL})
    rules, env = RULES[written](tmp_path, "0.021")
    proxy = start(rules=rules, env=env, **gateway())
    code, served, message, agent_env = run_agent(proxy, mode)

    assert code == 1, message  # refused, and the run stopped
    assert message.startswith("429 ") and "spendfuse" in message and "budget" in message
    assert "limit $0.021" in message
    assert 2 <= served == len(upstream.billed)
    # Spend never passed the cap, and the refusal was due: what was left fit no worst case.
    ledger = rows(tmp_path / "ledger.sqlite")
    settled = [r for r in ledger if r["state"] == "settled"]
    assert len(settled) == served and [r["state"] for r in ledger].count("refused") == 1
    recorded = sum(Decimal(r["cost_micro"]) + Decimal(r["cost_submicro"]) / 10**12 for r in settled) / 10**6
    assert recorded == bill(upstream) <= Decimal("0.021")
    # The refusal was due: what was left (the cap less the provider's bill) fit no worst case.
    remaining, needs = (
        Decimal(m) for m in re.findall(r"(?:remaining|needs up to) \$([0-9]+(?:\.[0-9]+)?)", message)
    )
    assert remaining == (Decimal("0.021") - bill(upstream)).quantize(Decimal("0.000001")) < needs
    # The provider got the real key and nothing else; the agent never had it.
    assert {frozenset(keys.values()) for _, keys in upstream.auth} == {frozenset({f"Bearer {REAL}"})}
    assert REAL not in json.dumps(agent_env)
    assert REAL not in proxy.output()
    assert not any(REAL.encode() in p.read_bytes() for p in tmp_path.glob("ledger.sqlite*"))


@pytest.mark.parametrize("written", list(RULES))
def test_without_eval_model_max_budget_the_run_gets_one_dollar(start, upstream, tmp_path, written):
    upstream.knobs.accepted_keys = frozenset({REAL})
    rules, env = RULES[written](tmp_path, None)
    proxy = start(rules=rules, env=env, **gateway())
    # 100,000 output tokens at $10 per 1M is a $1.00 worst case, over the $1 cap with any input.
    code, served, message, _ = run_agent(proxy, "gateway", max_tokens=100_000)
    assert (code, served) == (1, 0) and "limit $1.00" in message
    assert upstream.billed == []
