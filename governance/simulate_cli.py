"""`spendfuse simulate FLOWS --rules FILE`: what a rules file would have done to a recording.

The flow file is read with mitmproxy's own reader (`governance.mitm.recording`) and every HTTP
flow is run through the rules against a temporary ledger (`governance.simulation`): no network,
nothing written but that ledger, which is deleted afterwards unless `--ledger` keeps it. A
progress bar is drawn on a terminal (stderr); the report is a table, or JSON with `--format json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from governance import policy
from governance.engine import Engine
from governance.simulation import Report, Simulation
from governance.store.opening import open_store
from governance.types import usd


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="run a rules file over a recorded flow file (mitmdump -w)")
    p.add_argument("flows", help="a flow file written by mitmdump -w (or mitmweb)")
    p.add_argument("--rules", required=True, help="the rules file to try")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--ledger", help="keep the simulated ledger in this (new) SQLite file")
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="the progress bar on stderr: auto draws it on a terminal",
    )
    p.set_defaults(fn=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    # The mitmproxy layer reads the file; imported here so the other commands never load it.
    from governance.mitm.recording import Reading

    path = Path(args.flows)
    if not path.is_file():
        print(f"spendfuse: no flow file at {str(path)!r}", file=sys.stderr)
        return 1
    rules = policy.load(args.rules)
    with tempfile.TemporaryDirectory(prefix="spendfuse-simulate-") as tmp:
        ledger_path = args.ledger or str(Path(tmp) / "ledger.sqlite")
        if args.ledger and Path(args.ledger).exists():
            print(f"spendfuse: {args.ledger!r} exists; --ledger takes a new file", file=sys.stderr)
            return 1
        ledger = open_store(ledger_path)
        try:
            engine = Engine(rules, ledger, salt=ledger.salt())
            reading = Reading(path)
            simulation = Simulation(engine)
            with _progress(args.progress, path.stat().st_size) as advance:
                for record in reading.records():
                    simulation.feed(record)
                    advance(reading.read_bytes)
                report = simulation.finish()
        finally:
            ledger.close()
    out = report.as_json() | {"other_flows": reading.other, "rules": str(args.rules), "flows_file": str(path)}
    if args.format == "json":
        print(json.dumps(out, indent=2))
    else:
        _print_table(report, out)
    return 0


class _progress:
    """A rich progress bar over the file's bytes, or nothing (not a terminal, or `never`)."""

    def __init__(self, when: str, total: int) -> None:
        shown = when == "always" or (when == "auto" and sys.stderr.isatty())
        self.bar = (
            Progress(
                TextColumn("simulating"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            if shown
            else None
        )
        self.total = total
        self.task: Any = None

    def __enter__(self):  # noqa: ANN204 - returns the advance callable
        if self.bar is None:
            return lambda done: None
        self.bar.__enter__()
        self.task = self.bar.add_task("flows", total=self.total)
        return lambda done: self.bar.update(self.task, completed=done)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _print_table(report: Report, out: dict[str, Any]) -> None:
    console = Console()
    summary = Table(title="what the rules would have done", show_header=False)
    summary.add_column("", style="bold")
    summary.add_column("", justify="right")
    for label, value in [
        ("HTTP flows read", str(report.flows)),
        ("other flows (not HTTP)", str(out["other_flows"])),
        ("unreadable flows", str(len(report.unreadable))),
        ("metered requests", str(report.metered)),
        ("admitted", str(report.admitted)),
        ("refused", str(len(report.refused_ids))),
        ("not metered (free, passed)", str(report.not_metered)),
        ("what the recording cost", usd(report.recorded_cost)),
        ("spent under these rules", usd(report.spent)),
        ("reserved for the requests billed", usd(report.reserved_billed)),
        ("billed for them", usd(report.billed)),
        ("admitted with no recorded answer (charged their hold)", str(report.charged_unanswered)),
        ("requests whose recorded usage could not be priced", str(report.unpriced)),
    ]:
        summary.add_row(label, value)
    console.print(summary)
    if report.refusals:
        runs_out = Table(title="refusals, by rule: when each first refused")
        for column in ("rule", "first refused (UTC)", "refused", "message"):
            runs_out.add_column(column)
        for r in sorted(report.refusals.values(), key=lambda r: r.first):
            runs_out.add_row(r.rule, r.first.isoformat(timespec="seconds"), str(r.refused), r.message)
        console.print(runs_out)
    if report.unreadable:
        bad = Table(title="flows that could not be read")
        bad.add_column("flow")
        bad.add_column("why")
        for u in report.unreadable:
            bad.add_row(u.flow_id, u.reason)
        console.print(bad)
