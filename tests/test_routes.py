"""Route patterns, base paths and mounts (`governance.routes`), and how a host entry uses them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from governance import wire
from governance.hostrules import HostRule, host_table
from governance.routes import BasePath, Routes, check_path
from governance.types import Metering

ROUTES = Routes.build(
    {
        "/models/{model}:generateContent": "generate",
        "/models/{model}:streamGenerateContent": "stream",
        "/model/{model*}/invoke": "invoke",
        "/models/special:generatecontent": "literal",
    },
    {"/models/{model}:countTokens": "count"},
)


@pytest.mark.parametrize(
    ("route", "found"),
    [
        ("/models/gemini-2.5-pro:generatecontent", (False, "generate")),
        ("/models/gemini-2.5-pro:streamgeneratecontent", (False, "stream")),
        ("/models/gemini-2.5-pro:counttokens", (True, "count")),
        # A literal route wins over the pattern that also covers it.
        ("/models/special:generatecontent", (False, "literal")),
        # `{name}` is one part of one segment: never a `/`, never empty.
        ("/models/a/b:generatecontent", None),
        ("/models/:generatecontent", None),
        ("/models/gemini:generatecontent/more", None),
        # `{name*}` spans segments (an ARN's percent-encoded `/` is decoded before matching).
        ("/model/anthropic.claude-v1:0/invoke", (False, "invoke")),
        ("/model/arn:aws:bedrock:us-east-1:1:application-inference-profile/abc/invoke", (False, "invoke")),
        ("/model//invoke", None),
        ("/model/x/invoke-with-response-stream", None),
    ],
)
def test_a_route_is_found_by_literal_then_by_the_most_specific_pattern(route, found):
    assert ROUTES.find(route) == found


def test_the_longer_pattern_wins_where_two_match():
    routes = Routes.build({"/{a}/chat/completions": "chat", "/{a}/{b}": "any"}, {})
    assert routes.find("/x/chat/completions") == (False, "chat")  # `{b}` is one segment
    assert routes.find("/x/y") == (False, "any")
    nested = Routes.build({"/deployments/{d*}": "any", "/deployments/{d}/chat/completions": "chat"}, {})
    assert nested.find("/deployments/gpt/chat/completions") == (False, "chat")
    assert nested.find("/deployments/gpt/other") == (False, "any")


def test_literal_routes_are_listed_longest_first_without_patterns():
    routes = Routes.build(
        {"/responses": "responses", "/models/{m}:x": "p"}, {"/responses/input_tokens": "it"}
    )
    assert routes.literal() == [(True, "/responses/input_tokens", "it"), (False, "/responses", "responses")]


def test_a_base_path_takes_lists_and_placeholders_and_tries_the_longest_first():
    base = BasePath.build(["/v1beta", "/v1beta/openai", "/v1"])
    assert base.under("/v1beta/openai/chat/completions") == "/chat/completions"
    assert base.under("/v1beta/models/x:generatecontent") == "/models/x:generatecontent"
    assert base.under("/v1") == "/"
    assert base.under("/v1x/models") is None
    vertex = BasePath.build("/v1/projects/{project}/locations/{location}/publishers/google")
    assert (
        vertex.under("/v1/projects/p-1/locations/us-central1/publishers/google/models/m:x") == "/models/m:x"
    )
    assert vertex.under("/v1/projects/p/locations/l/publishers/anthropic/models/m:x") is None
    assert vertex.under("/v1/projects/a/b/locations/l/publishers/google/models/m") is None
    assert BasePath.build("/").under("/anything") == "/anything"


@pytest.mark.parametrize("bad", ["v1", "/models/{Model}", "/models/{model", "/models/model}", "/a/{}/b"])
def test_a_malformed_path_is_refused(bad):
    with pytest.raises(ValueError):
        check_path(bad)


def _table_with(**entry):
    return host_table([HostRule.model_validate({"name": "corp", "match": ["llm.corp.example"], **entry})])


def test_a_mount_serves_another_family_on_the_same_host_and_answers_in_its_envelope():
    table = _table_with(
        family="openai",
        base_path="/v1",
        mounts=[{"family": "anthropic", "base_path": "/claude/{tenant}"}],
    )
    entry = table.lookup("llm.corp.example")
    messages = wire.detect_on(entry, "POST", "llm.corp.example", "/claude/T1/messages", table)
    assert (messages.family, messages.api, messages.metering, messages.envelope) == (
        "anthropic",
        "messages",
        Metering.METERED,
        "anthropic",
    )
    chat = wire.detect_on(entry, "POST", "llm.corp.example", "/v1/chat/completions", table)
    assert (chat.family, chat.api, chat.envelope) == ("openai", "chat", "openai")
    # A billable path under the mount with no route is refused in the mount's envelope.
    other = wire.detect_on(entry, "POST", "llm.corp.example", "/claude/T1/batches", table)
    assert (other.metering, other.envelope) == (Metering.UNMETERED, "anthropic")
    # Only a POST runs a route; a read of it is a free read.
    read = wire.detect_on(entry, "GET", "llm.corp.example", "/claude/T1/messages", table)
    assert (read.metering, read.api) == (Metering.FREE, "read")


def test_a_percent_encoded_path_is_routed_as_the_upstream_decodes_it():
    table = _table_with(family="openai", base_path=["/v1", "/openai/{version}"])
    entry = table.lookup("llm.corp.example")
    for path in ("/openai/v2/chat%2Fcompletions", "/OPENAI/x/./chat//completions", "/v1/Chat/Completions"):
        endpoint = wire.detect_on(entry, "POST", "llm.corp.example", path, table)
        assert (endpoint.api, endpoint.metering) == ("chat", Metering.METERED), path


def test_rules_refuse_a_mount_of_an_unknown_family_and_a_relative_base_path():
    with pytest.raises(ValidationError):
        _table_with(family="openai", mounts=[{"family": "nosuch", "base_path": "/x"}])
    with pytest.raises(ValidationError):
        _table_with(family="openai", base_path="v1")
    with pytest.raises(ValidationError):
        _table_with(family="openai", base_path=[])
