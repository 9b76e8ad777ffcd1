"""`spendfuse simulate`: the command's table, JSON, progress bar and refusals of bad arguments."""

from __future__ import annotations

import json

from governance import cli
from tests.conftest import write_rules
from tests.test_recording import chat_flow, write


def _recording(tmp_path, n: int):
    answer = {"model": "gpt-4o", "usage": {"prompt_tokens": 100, "completion_tokens": 10}}
    return write(tmp_path / "f.mitm", [chat_flow(answer=answer) for _ in range(n)])


def test_the_report_is_a_table_by_default(tmp_path, capsys):
    flows = _recording(tmp_path, 3)
    rules = write_rules(tmp_path / "rules.yaml")
    assert cli.main(["simulate", str(flows), "--rules", str(rules), "--progress", "never"]) == 0
    out = capsys.readouterr().out
    assert "what the rules would have done" in out
    # 3 x (100 input + 10 output) at $1 / $10 per 1M tokens.
    assert "what the recording cost" in out and "$0.0006 " in out
    assert "admitted" in out and "refusals, by rule" not in out


def test_refusals_are_listed_by_rule_with_when_they_began(tmp_path, capsys):
    flows = _recording(tmp_path, 3)
    rules = write_rules(tmp_path / "rules.yaml", budgets=[{"name": "global", "limit_usd": 0.0003}])
    assert cli.main(["simulate", str(flows), "--rules", str(rules), "--progress", "always"]) == 0
    captured = capsys.readouterr()
    assert "refusals, by rule" in captured.out and "budget:global" in captured.out
    assert cli.main(["simulate", str(flows), "--rules", str(rules), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["admitted"] == 1 and report["refused"] == 2


def test_bad_arguments_are_refused(tmp_path, capsys):
    rules = write_rules(tmp_path / "rules.yaml")
    assert cli.main(["simulate", str(tmp_path / "missing.mitm"), "--rules", str(rules)]) == 1
    flows = _recording(tmp_path, 1)
    kept = tmp_path / "kept.sqlite"
    kept.write_text("")
    assert cli.main(["simulate", str(flows), "--rules", str(rules), "--ledger", str(kept)]) == 1
    assert "takes a new file" in capsys.readouterr().err
