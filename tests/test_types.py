from decimal import Decimal

import pytest

from governance.types import Usage, from_micro, to_micro, usd


def test_money_rounds_up_to_whole_micro_usd():
    assert to_micro(Decimal("0.000081")) == 81
    assert to_micro(Decimal("0.0000001")) == 1
    assert from_micro(81) == Decimal("0.000081")
    assert usd(Decimal("1")) == "$1.00" and usd(Decimal("0.000081")) == "$0.000081" and usd(None) == "n/a"


def test_usage_is_validated():
    with pytest.raises(ValueError):
        Usage(input_tokens=-1)
    with pytest.raises(ValueError):
        Usage(input_tokens=10, cache_read_tokens=8, cache_write_tokens=5)


def test_a_request_line_gives_every_value_of_a_header_in_any_case():
    from governance.types import RequestLine

    line = RequestLine(
        "/v1beta/models/gemini-2.5-pro:generateContent", (("x-a", "1"), ("x-b", "2"), ("x-a", "3"))
    )
    assert line.get_all("X-A") == ["1", "3"] and line.get_all("x-c") == []
