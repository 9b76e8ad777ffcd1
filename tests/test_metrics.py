"""The metrics' bounds: label sets capped, exposure beyond loopback only with a token."""

from decimal import Decimal

import pytest

from governance.decisions import Record
from governance.metrics import Metrics
from governance.metrics_server import listen_address


def test_label_sets_are_capped_and_the_rest_counted_as_other():
    m = Metrics(max_series=3)
    for i in range(5):
        m(
            Record(
                "admitted",
                principal=f"apikey:{i}",
                provider="openai",
                model="gpt-4o",
                reserved=Decimal("0.5"),
            )
        )
    got = {
        labels["principal"]: value
        for family in m.registry.collect()
        if family.name == "spendfuse_requests"
        for s in family.samples
        if s.name == "spendfuse_requests_total"
        for labels, value in [(s.labels, s.value)]
    }
    assert got == {"apikey:0": 1, "apikey:1": 1, "apikey:2": 1, "_other": 2}
    assert m.registry.get_sample_value("spendfuse_reservations_open") == 5
    assert m.registry.get_sample_value("spendfuse_reservations_open_usd") == 2.5


@pytest.mark.parametrize(
    "value,token,expected",
    [
        ("9464", "", ("127.0.0.1", 9464)),
        ("localhost:9464", "", ("localhost", 9464)),
        ("[::1]:9464", "", ("::1", 9464)),
        ("0.0.0.0:9464", "t", ("0.0.0.0", 9464)),
        ("10.0.0.5:9464", "t", ("10.0.0.5", 9464)),
    ],
)
def test_listen_address(value, token, expected):
    assert listen_address(value, token) == expected


@pytest.mark.parametrize("value", ["0.0.0.0:9464", "10.0.0.5:9464", "metrics.internal:9464", "[::]:9464"])
def test_beyond_loopback_without_a_token_is_refused(value):
    with pytest.raises(ValueError, match="spendfuse_metrics_token"):
        listen_address(value, "")


@pytest.mark.parametrize("value", ["nine", "127.0.0.1:", "127.0.0.1:70000", "0"])
def test_a_malformed_address_is_refused(value):
    with pytest.raises(ValueError):
        listen_address(value, "t")
