"""The operator's reads of a ledger (`spendfuse status`, `spendfuse report`): the SQL lives
here, in the dialect SQLite and PostgreSQL share (`?` marks parameters; a store's `query` adapts
them), so the commands only format rows. Each row is a dict; money sums are exact
(`money.summed(row, "cost")`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from governance import money
from governance.store import WindowTotals, counters
from governance.types import Claim

_COST = money.sum_sql("cost_micro", "cost_submicro", "cost")


class LedgerReports:
    """Reads for the operator commands, over a store's `query`."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts (`?` marks a parameter)."""
        raise NotImplementedError

    # -- reads the engine and tests make too, in either store's dialect --------------------------

    def salt(self) -> str:
        """This ledger's random salt, for hashing upstream API keys into principals."""
        return str(self.query("SELECT value FROM meta WHERE key = 'salt'")[0]["value"])

    def resolve_window(self, claim: Claim, now: datetime) -> Claim:
        """`claim` with its current window and effective limit, read-only (for `spendfuse status`)."""
        rows = self.query("SELECT anchor_at, topup_micro FROM counters WHERE counter = ?", (claim.scope,))
        anchor_text, topup = (rows[0]["anchor_at"], rows[0]["topup_micro"]) if rows else (None, 0)
        if anchor_text is None:
            anchor_text = counters.first_anchor(claim, now)  # not used yet: its first window would start now
        return counters.resolve(claim, anchor_text, topup, now)

    def window_totals(self, scope: str, window_start: str) -> WindowTotals:
        """A window's spend and holds (nothing for a window never used)."""
        rows = self.query(
            "SELECT settled, held, settled_rest FROM totals WHERE scope = ? AND window_start = ?",
            (scope, window_start),
        )
        return (
            WindowTotals(rows[0]["settled"], rows[0]["held"], rows[0]["settled_rest"])
            if rows
            else WindowTotals(0, 0)
        )

    def request(self, request_id: str) -> dict[str, Any] | None:
        """A request's row, or None."""
        rows = self.query("SELECT * FROM requests WHERE id = ?", (request_id,))
        return rows[0] if rows else None

    # -- the operator's reports -----------------------------------------------------------------

    def requests_by_state(self) -> list[dict[str, Any]]:
        """Per request state: `state`, `n`, and the summed cost."""
        return self.query(f"SELECT state, count(*) AS n, {_COST} FROM requests GROUP BY state ORDER BY state")

    def _costed(self, since: str | None) -> tuple[str, list[str]]:
        """The WHERE clause of requests with a cost (created at `since` or later), and its params."""
        return "WHERE cost_micro IS NOT NULL" + (" AND created_at >= ?" if since else ""), [
            since
        ] if since else []

    def spend_by_model(self, since: str | None = None) -> list[dict[str, Any]]:
        """Per model: `model`, `n`, input tokens `tin`, output tokens `tout`, and the summed cost."""
        where, params = self._costed(since)
        return self.query(
            f"SELECT coalesce(model, '?') AS model, count(*) AS n, sum(coalesce(input_tokens, 0)) AS tin, "
            f"sum(coalesce(output_tokens, 0)) AS tout, {_COST} FROM requests {where} GROUP BY model",
            params,
        )

    def spend_by_day(self, since: str | None = None) -> list[dict[str, Any]]:
        """Per UTC day: `day`, `n`, and the summed cost."""
        where, params = self._costed(since)
        return self.query(
            f"SELECT substr(created_at, 1, 10) AS day, count(*) AS n, {_COST} FROM requests {where} "
            "GROUP BY day ORDER BY day",
            params,
        )

    def spend_by_principal_and_day(self, since: str | None = None) -> list[dict[str, Any]]:
        """Per principal and UTC day: `principal`, `day`, `n`, and the summed cost."""
        where, params = self._costed(since)
        return self.query(
            f"SELECT coalesce(principal, '?') AS principal, substr(created_at, 1, 10) AS day, count(*) AS n, "
            f"{_COST} FROM requests {where} GROUP BY principal, day ORDER BY day, principal",
            params,
        )

    def budget_claims_over_time(self, since: str | None = None) -> list[dict[str, Any]]:
        """Every settled USD claim, oldest first: `scope` (the budget's counter), `window_start`,
        `at` (when its request was made) and its `amount` pair (micro-USD and the rest)."""
        return self.query(
            "SELECT c.scope AS scope, c.window_start AS window_start, r.created_at AS at, "
            "c.amount AS amount, c.amount_rest AS amount_rest FROM claims c "
            "JOIN requests r ON r.id = c.request_id WHERE c.state = 'settled' AND c.unit = 'usd' "
            + ("AND r.created_at >= ? " if since else "")
            + "ORDER BY r.created_at, c.scope",
            [since] if since else [],
        )

    def refusals_by_rule(self, since: str | None = None) -> list[dict[str, Any]]:
        """Per rule: `rule`, `n` refusals, most first."""
        return self.query(
            "SELECT coalesce(rule, '?') AS rule, count(*) AS n FROM requests WHERE decision = 'refused' "
            + ("AND created_at >= ? " if since else "")
            + "GROUP BY rule ORDER BY n DESC",
            [since] if since else [],
        )

    def spend_by_rules_table(self, since: str | None = None) -> list[dict[str, Any]]:
        """Spend priced from the rules' fee and regional tables: `source`, `model`, `n`, `cost`."""
        where, params = self._costed(since)
        return self.query(
            f"SELECT price_source AS source, coalesce(model, '?') AS model, count(*) AS n, "
            f"sum(cost_micro) AS cost FROM requests {where} AND (price_source LIKE '%fees.yaml:%' "
            f"OR price_source LIKE '%regional:%') GROUP BY price_source, model ORDER BY cost DESC",
            params,
        )

    def input_estimates(self, since: str | None = None) -> list[dict[str, Any]]:
        """Settled requests' input estimate `est` against the `real` input, with their `model`."""
        return self.query(
            "SELECT coalesce(model, '?') AS model, est_input_tokens AS est, input_tokens AS real "
            "FROM requests WHERE state = 'settled' AND est_input_tokens > 0 AND input_tokens IS NOT NULL"
            + (" AND created_at >= ?" if since else ""),
            [since] if since else [],
        )
