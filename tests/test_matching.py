from governance.matching import lookup_model

TABLE = {"gpt-5": 1, "gpt-5-mini": 2, "GPT-4o": 3, "claude-opus-4": 4, "claude-opus-4-1": 5}


def test_exact_then_longest_prefix_at_a_boundary():
    assert lookup_model(TABLE, "gpt-5") == ("gpt-5", 1)
    assert lookup_model(TABLE, "gpt-5-2025-08-07") == ("gpt-5", 1)
    assert lookup_model(TABLE, "gpt-5-mini-2025-08-07") == ("gpt-5-mini", 2)
    assert lookup_model(TABLE, "gpt-4o") == ("GPT-4o", 3)
    assert lookup_model(TABLE, "claude-opus-4-1-20250805") == ("claude-opus-4-1", 5)
    assert lookup_model(TABLE, "claude-opus-4-9") == ("claude-opus-4", 4)
    assert lookup_model(TABLE, "claude-opus-4-1@20250805") == ("claude-opus-4-1", 5)


def test_new_names_do_not_inherit_by_accident():
    assert lookup_model(TABLE, "gpt-5.5-pro") is None
    assert lookup_model(TABLE, "gpt-50") is None
    assert lookup_model(TABLE, "gpt") is None
