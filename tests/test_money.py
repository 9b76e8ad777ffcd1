from __future__ import annotations

import sqlite3
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from governance import money


def test_split_keeps_whole_micro_dollars_and_the_rest_in_atto_usd():
    assert money.split(Decimal("0.0000013")) == (1, 300_000_000_000)
    assert money.split(Decimal("0.000081")) == (81, 0)
    assert money.split(Decimal(0)) == (0, 0)
    # $0.075 per million tokens: 0.075 µ$ a token, 75 nano-USD.
    assert money.split(Decimal("0.075") / 1_000_000) == (0, 75_000_000_000)
    assert money.split(Decimal("12345.678901234567890123")) == (12_345_678_901, 234_567_890_123)


def test_a_cost_finer_than_an_atto_dollar_rounds_up_never_down():
    assert money.split(Decimal("1E-19")) == (0, 1)
    assert money.split(Decimal("0.000001000000000000000001")) == (1, 1)  # 1 µ$ + 10^-24 $


@pytest.mark.parametrize("bad", [Decimal(-1), Decimal("-1E-20"), Decimal("NaN"), Decimal("Infinity")])
def test_a_negative_or_unknown_cost_is_refused(bad):
    with pytest.raises(ValueError):
        money.split(bad)


@given(st.decimals(min_value=0, max_value=10**6, places=18))
def test_split_and_to_usd_are_exact_inverses(usd):
    micro, rest = money.split(usd)
    assert 0 <= rest < money.SUBMICRO_PER_MICRO
    assert money.to_usd(micro, rest) == usd


@given(st.decimals(min_value=0, max_value=10**6, places=24))
def test_split_is_never_below_the_cost_and_at_most_an_atto_dollar_above(usd):
    recorded = money.to_usd(*money.split(usd))
    assert usd <= recorded < usd + Decimal("1E-18")


def test_used_micro_rounds_a_rest_up():
    assert money.used_micro(5, 0, 3) == 8
    assert money.used_micro(5, 1, 3) == 9


@given(st.lists(st.tuples(st.integers(-(10**9), 10**9), st.integers(0, 10**12 - 1)), max_size=30))
def test_the_sql_carry_and_sum_are_exact(parts):
    """`add_sql` carries whole micro-dollars out of the rest; `sum_sql` adds rests without
    overflow; both agree with Python's exact arithmetic."""
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    conn.execute("CREATE TABLE t (micro INTEGER NOT NULL, sub INTEGER NOT NULL)")
    conn.execute("CREATE TABLE rows (micro INTEGER NOT NULL, sub INTEGER NOT NULL)")
    conn.execute("INSERT INTO t VALUES (0, 0)")
    for micro, sub in parts:
        conn.execute(f"UPDATE t SET {money.add_sql('micro', 'sub')}", (micro, sub, sub))
        conn.execute("INSERT INTO rows VALUES (?, ?)", (micro, sub))
    exact = sum((money.to_usd(m, s) for m, s in parts), Decimal(0))
    micro, sub = conn.execute("SELECT micro, sub FROM t").fetchone()
    assert 0 <= sub < money.SUBMICRO_PER_MICRO and money.to_usd(micro, sub) == exact
    row = conn.execute(f"SELECT {money.sum_sql('micro', 'sub', 'x')} FROM rows").fetchone()
    assert money.summed(row, "x") == exact
