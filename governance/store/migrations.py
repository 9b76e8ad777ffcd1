"""The SQLite ledger's schema, as numbered migrations applied in order (`sqlite_utils`).

A migration is never edited once released: a change to the schema is a new one."""

from __future__ import annotations

import secrets

from sqlite_utils import Database, Migrations

from governance import money

migrations = Migrations("spendfuse")


@migrations()
def m001_initial(db: Database) -> None:
    db["requests"].create(
        {
            "id": str,  # the request id (mitmproxy flow id): settlement is idempotent on it
            "created_at": str,
            "settled_at": str,
            "principal": str,
            "provider": str,
            "api": str,
            "model": str,
            "stream": int,
            "est_input_tokens": int,
            "max_output_tokens": int,
            "input_tokens": int,
            "output_tokens": int,
            "cache_read_tokens": int,
            "cache_write_tokens": int,
            "reserved_micro": int,
            "cost_micro": int,
            "state": str,  # held | settled | released | expired | refused
            "decision": str,  # allowed | refused | dry_run
            "rule": str,
            "reason": str,
            "outcome": str,  # how the flow ended: usage | no_usage | upstream_error | ...
            "price_source": str,
        },
        pk="id",
        not_null={"created_at", "principal", "state", "decision", "reserved_micro"},
        defaults={"reserved_micro": 0},
    )
    db["requests"].create_index(["created_at"])
    db["requests"].create_index(["state", "created_at"])
    db["claims"].create(
        {"request_id": str, "scope": str, "window_start": str, "amount_micro": int, "state": str},
        pk=("request_id", "scope", "window_start"),
        not_null={"amount_micro", "state"},
        foreign_keys=[("request_id", "requests", "id")],
    )
    db["totals"].create(
        {"scope": str, "window_start": str, "settled_micro": int, "held_micro": int},
        pk=("scope", "window_start"),
        not_null={"settled_micro", "held_micro"},
        defaults={"settled_micro": 0, "held_micro": 0},
    )


@migrations()
def m002_output_caps(db: Database) -> None:
    # What the client asked for as its output cap, and what spendfuse wrote into the request
    # instead (output-cap injection), so a clamped request can always be told from its original.
    db["requests"].add_column("requested_output_tokens", int)
    db["requests"].add_column("injected_output_tokens", int)


@migrations()
def m003_contexts(db: Database) -> None:
    # The size of context the provider keeps on its side (a Responses answer, a conversation),
    # as the usage of the answer that ended it showed: a follow-up that names it is billed
    # that much input on top of its own.
    db["contexts"].create(
        {"id": str, "tokens": int, "updated_at": str}, pk="id", not_null={"tokens", "updated_at"}
    )


@migrations()
def m004_governance(db: Database) -> None:
    # Claims carry a unit (micro-USD, tokens, requests, requests in flight), so one counter
    # mechanism serves budgets and rate limits alike.
    db["claims"].add_column("unit", str, not_null_default="usd")
    # Per counter: the anchor its rolling windows run from (set at first use), moved to "now" by
    # an operator's reset; and the top-ups added to a budget that never resets.
    db["counters"].create(
        {"counter": str, "anchor_at": str, "topup_micro": int},
        pk="counter",
        not_null={"topup_micro"},
        defaults={"topup_micro": 0},
    )
    # Operator actions, with who and when: resets and top-ups.
    db["adjustments"].create(
        {"id": int, "at": str, "counter": str, "action": str, "amount_micro": int, "who": str, "note": str},
        pk="id",
        not_null={"at", "counter", "action", "who"},
    )
    # The counters a request was reserved against (and so charged at settlement).
    db["requests"].add_column("counters", str)
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["meta"].insert({"key": "salt", "value": secrets.token_hex(16)})


@migrations()
def m005_window_shapes(db: Database) -> None:
    # The window shape a counter was last used with, so a rules change that reshapes it can
    # carry the current window's spend over instead of starting from zero.
    db["counters"].add_column("shape", str)


@migrations()
def m006_exact_costs(db: Database) -> None:
    # The part of a micro-dollar below each settled amount (see governance.money).
    money.add_columns(db)


@migrations()
def m007_unit_neutral_amounts(db: Database) -> None:
    # A claim's amount and a window's totals are in the claim's unit (micro-USD for money, tokens
    # or requests for the others), so their columns no longer say "micro"; the rest below a
    # micro-dollar is called what it is. `requests.cost_micro` and `adjustments.amount_micro`
    # stay: they only ever hold money.
    for table, old, new in (
        ("claims", "amount_micro", "amount"),
        ("claims", "amount_submicro", "amount_rest"),
        ("totals", "settled_micro", "settled"),
        ("totals", "held_micro", "held"),
        ("totals", "settled_submicro", "settled_rest"),
    ):
        db.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")
