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


def test_model_names_cover_snapshots_and_vendor_prefixes_only():
    from governance.matching import model_names

    assert model_names("gpt-4o-2024-08-06") == ("gpt-4o-2024-08-06", "gpt-4o")
    assert model_names("claude-sonnet-4-5-20250929")[-1] == "claude-sonnet-4-5"
    assert model_names("claude-3-5-sonnet@20240620")[-1] == "claude-3-5-sonnet"
    assert (
        model_names("gpt-4-0613")[-1] == "gpt-4" and model_names("gpt-3.5-turbo-0125")[-1] == "gpt-3.5-turbo"
    )
    assert model_names("anthropic/claude-opus-4") == ("anthropic/claude-opus-4", "claude-opus-4")
    for distinct in ("gpt-4o-mini", "gpt-4o", "o4-mini", "gpt-4-32k", "gemini-2.0-flash-001"):
        assert model_names(distinct) == (distinct,)
    assert model_names("gpt-4o-mini-2099") == ("gpt-4o-mini-2099",)  # no month 20: not a snapshot
