from __future__ import annotations

import pytest

from governance.units import Unit, token_unit, unit_of

REQUEST = (1_200, 300)  # input and output tokens a request claims
USED = (1_000, 250)  # what the provider reported


@pytest.mark.parametrize(
    "unit,claimed",
    [(Unit.TOKENS_INPUT, 1_200), (Unit.TOKENS_OUTPUT, 300), (Unit.TOKENS_TOTAL, 1_500)],
)
def test_a_token_unit_counts_its_tokens(unit, claimed):
    assert unit.tokens(*REQUEST) == claimed


@pytest.mark.parametrize("unit", [Unit.USD, Unit.REQUESTS, Unit.IN_FLIGHT])
def test_other_units_count_no_tokens(unit):
    with pytest.raises(ValueError):
        unit.tokens(*REQUEST)


@pytest.mark.parametrize(
    "unit,amount,settled,released,at_expiry",
    [
        (Unit.USD, 90_000, 12_345, 0, 90_000),  # money: the cost; nothing when released
        (Unit.TOKENS_INPUT, 1_200, 1_000, 0, 1_200),  # tokens: the real count
        (Unit.TOKENS_OUTPUT, 300, 250, 0, 300),
        (Unit.TOKENS_TOTAL, 1_500, 1_250, 0, 1_500),
        (Unit.REQUESTS, 1, 1, 0, 1),  # a request counts once, unless it never ran
        (Unit.IN_FLIGHT, 1, 0, 0, 0),  # no longer in flight, whatever the end
    ],
)
def test_what_a_claim_counts_when_its_request_ends(unit, amount, settled, released, at_expiry):
    cost = 12_345 if unit is Unit.USD else 0
    assert unit.final_amount(amount, cost, USED, released=False) == settled
    assert unit.final_amount(amount, 0, None, released=True) == released
    assert unit.at_expiry(amount) == at_expiry


def test_tokens_without_usage_settle_at_their_reservation():
    assert Unit.TOKENS_TOTAL.final_amount(1_500, 0, None, released=False) == 1_500


def test_only_money_and_output_tokens_can_be_fitted_and_only_output_bounds_output():
    assert {u for u in Unit if u.fittable} == {Unit.USD, Unit.TOKENS_OUTPUT, Unit.TOKENS_TOTAL}
    assert Unit.TOKENS_OUTPUT.output_room(800, 300) == 800
    assert Unit.TOKENS_TOTAL.output_room(800, 300) == 500
    assert Unit.TOKENS_INPUT.output_room(800, 300) is None and Unit.USD.output_room(800, 300) is None


def test_refitted_amounts():
    assert Unit.USD.refitted(90_000, 40_000, *REQUEST) == 40_000
    assert Unit.TOKENS_TOTAL.refitted(9_999, 40_000, *REQUEST) == 1_500
    assert Unit.REQUESTS.refitted(1, 40_000, *REQUEST) == 1


def test_names_labels_and_suffixes():
    assert [u.value for u in Unit] == [
        "usd",
        "tokens:input",
        "tokens:output",
        "tokens:total",
        "requests",
        "in_flight",
    ]
    assert Unit.IN_FLIGHT.label == "requests in flight" and Unit.TOKENS_INPUT.label == "tokens input"
    assert Unit.USD.status_label == "USD" and Unit.IN_FLIGHT.status_label == "in flight"
    assert Unit.TOKENS_TOTAL.header_suffix == "tokens-total" and Unit.IN_FLIGHT.header_suffix == "in-flight"
    assert Unit.TOKENS_TOTAL.field_suffix == "tokens_total" and Unit.USD.field_suffix == "usd"
    assert Unit.TOKENS_OUTPUT.part == "tokens" and Unit.IN_FLIGHT.part == "in_flight"
    assert token_unit("output") is Unit.TOKENS_OUTPUT and unit_of("requests") is Unit.REQUESTS
    assert Unit.USD == "usd"  # stored and compared as its text
    with pytest.raises(ValueError):
        unit_of("tokens:cached")
