"""The agents themselves: Claude Code, Codex and Gemini CLI, installed from the npm registry as
tests/clients/package-lock.json pins them (scripts/install-clients), run as real processes
configured only by environment (HTTPS_PROXY and the CA), through a real mitmdump, against the fake
upstream. Each is served, and each stops at once on a refusal, printing spendfuse's message."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.proxy import REPO
from tests.test_e2e import rows

CLIENTS = REPO / "tests" / "clients" / "node_modules" / ".bin"


@pytest.fixture(scope="session")
def clients() -> Path:
    """The CLIs, installed from the committed lock (a no-op once installed)."""
    subprocess.run([str(REPO / "scripts" / "install-clients")], check=True, timeout=600)
    return CLIENTS


def _run(
    cli: list[str], proxy, tmp_path: Path, extra: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(
        HOME=str(home),
        HTTPS_PROXY=proxy.url,
        NODE_EXTRA_CA_CERTS=str(proxy.ca),  # Claude Code (Node)
        CODEX_CA_CERTIFICATE=str(proxy.ca),  # Codex
        ANTHROPIC_API_KEY="sk-ant-test-not-real",
        OPENAI_API_KEY="sk-test-not-real",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        NO_COLOR="1",
    )
    env.update(extra or {})
    t0 = time.monotonic()
    done = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - t0


def _claude(clients: Path) -> list[str]:
    return [str(clients / "claude"), "-p", "say hi", "--model", "claude-sonnet-4-5"]


def _codex(clients: Path) -> list[str]:
    return [str(clients / "codex"), "exec", "--skip-git-repo-check", "-m", "gpt-4o", "say hi"]


class TestClaudeCode:
    def test_is_served_and_settled(self, clients, start, upstream, tmp_path):
        proxy = start()
        done, _ = _run(_claude(clients), proxy, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "w0 w1 w2" in done.stdout  # the fake upstream's answer, streamed through
        [row] = [r for r in rows(tmp_path / "ledger.sqlite") if r["model"]]
        assert row["state"] == "settled" and row["outcome"].startswith("usage")
        assert (row["input_tokens"], row["output_tokens"]) == (11, 7)

    def test_stops_at_once_on_a_refusal_printing_spendfuses_message(self, clients, start, upstream, tmp_path):
        proxy = start(spendfuse_budget="0.0001")
        done, took = _run(_claude(clients), proxy, tmp_path)
        assert done.returncode != 0
        assert "spendfuse: budget 'global'" in done.stdout + done.stderr
        assert upstream.hits["/v1/messages"] == 0
        refused = [r for r in rows(tmp_path / "ledger.sqlite") if r["model"]]
        assert len(refused) == 1 and refused[0]["decision"] == "refused"  # one attempt, no retries
        assert took < 60


class TestCodex:
    def test_is_served_and_settled(self, clients, start, upstream, tmp_path):
        proxy = start(spendfuse_budget="10")  # Codex asks for the model's whole output window
        done, _ = _run(_codex(clients), proxy, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        billed = [r for r in rows(tmp_path / "ledger.sqlite") if r["model"] and r["cost_micro"]]
        assert [(r["state"], r["input_tokens"], r["output_tokens"]) for r in billed] == [("settled", 11, 7)]

    def test_stops_at_once_on_a_refusal_printing_spendfuses_message(self, clients, start, upstream, tmp_path):
        proxy = start(spendfuse_budget="0.0001")
        done, took = _run(_codex(clients), proxy, tmp_path)
        assert done.returncode != 0
        assert "spendfuse: budget 'global'" in done.stdout + done.stderr
        assert upstream.hits["WS response.create"] == 0
        assert took < 60


def _gemini(clients: Path) -> list[str]:
    return [str(clients / "gemini"), "-p", "say hi", "-m", "gemini-2.5-flash"]


#: Gemini CLI reads its key from the environment and trusts the folder it runs in only when told.
GEMINI_ENV = {"GEMINI_API_KEY": "test-not-real", "GEMINI_CLI_TRUST_WORKSPACE": "true"}


def _no_usage_statistics(tmp_path: Path) -> None:
    """Gemini CLI's own usage statistics go to Google's logging host, not to the model: off."""
    settings = tmp_path / "home" / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('{"privacy": {"usageStatisticsEnabled": false}}')


class TestGeminiCli:
    def test_is_served_and_settled(self, clients, start, upstream, tmp_path):
        proxy = start(spendfuse_budget="10")  # it asks for the model's whole output window
        _no_usage_statistics(tmp_path)
        done, _ = _run(_gemini(clients), proxy, tmp_path, GEMINI_ENV)
        assert done.returncode == 0, done.stdout + done.stderr
        assert 'part 0 [of] {answer} "0"part 1' in done.stdout  # the fake Gemini's answer, streamed
        billed = [r for r in rows(tmp_path / "ledger.sqlite") if r["model"] and r["cost_micro"]]
        assert billed and all(r["state"] == "settled" for r in billed)
        assert [(r["input_tokens"], r["output_tokens"]) for r in billed] == [(11, 7)] * len(billed)
        assert len(billed) == len(upstream.bills)  # each answer it was billed for, settled

    def test_stops_at_once_on_a_refusal_printing_spendfuses_message(self, clients, start, upstream, tmp_path):
        proxy = start(spendfuse_budget="0.0001")
        _no_usage_statistics(tmp_path)
        done, took = _run(_gemini(clients), proxy, tmp_path, GEMINI_ENV)
        assert done.returncode != 0
        assert "spendfuse: budget 'global'" in done.stdout + done.stderr, done.stdout + done.stderr
        refused = [r for r in rows(tmp_path / "ledger.sqlite") if r["model"]]
        assert len(refused) == 1 and refused[0]["decision"] == "refused"  # one attempt, no retries
        assert took < 60
