"""`governance.wire`: detection by real host and path, and envelopes for unmetered hosts."""

from __future__ import annotations

import json

import pytest

from governance import wire
from governance.types import Metering, Refusal, RefusalKind


@pytest.mark.parametrize(
    "method,host,path,family,api,metering",
    [
        ("POST", "api.openai.com", "/v1/chat/completions", "openai", "chat", Metering.METERED),
        ("POST", "API.OPENAI.COM.", "//v1//chat/completions/?x=1", "openai", "chat", Metering.METERED),
        ("POST", "api.openai.com:443", "/V1/Chat/Completions", "openai", "chat", Metering.METERED),
        ("POST", "api.openai.com", "/v1/foo/../chat/completions", "openai", "chat", Metering.METERED),
        ("POST", "api.openai.com", "/v1/chat%2Fcompletions", "openai", "chat", Metering.METERED),
        ("POST", "api.openai.com", "/v1/responses", "openai", "responses", Metering.METERED),
        ("POST", "eu.api.openai.com", "/v1/responses", "openai", "responses", Metering.METERED),
        ("POST", "us.api.openai.com", "/v1/chat/completions", "openai", "chat", Metering.METERED),
        ("POST", "api.openai.com", "/v1/responses/input_tokens", "openai", "input_tokens", Metering.FREE),
        ("POST", "api.openai.com", "/v1/completions", "openai", "completions", Metering.METERED),
        ("POST", "api.anthropic.com", "/v1/messages?beta=true", "anthropic", "messages", Metering.METERED),
        (
            "POST",
            "api.anthropic.com",
            "/v1/messages/count_tokens?beta=true",
            "anthropic",
            "count_tokens",
            Metering.FREE,
        ),
        ("GET", "api.openai.com", "/v1/models", "openai", "read", Metering.FREE),
        ("POST", "api.openai.com", "/v1/embeddings", "openai", "/v1/embeddings", Metering.UNMETERED),
        (
            "POST",
            "api.openai.com",
            "/v1/images/generations",
            "openai",
            "/v1/images/generations",
            Metering.UNMETERED,
        ),
        (
            "POST",
            "api.anthropic.com",
            "/v1/messages/batches",
            "anthropic",
            "/v1/messages/batches",
            Metering.UNMETERED,
        ),
        (
            "POST",
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            "google",
            "generate",
            Metering.METERED,
        ),
        (
            "POST",
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-embedding-001:embedContent",
            "google",
            "/v1beta/models/gemini-embedding-001:embedcontent",
            Metering.UNMETERED,
        ),
        # Azure OpenAI is metered (its own family): classic deployments and the v1 API.
        (
            "POST",
            "my.openai.azure.com",
            "/openai/deployments/x/chat/completions",
            "azure",
            "chat",
            Metering.METERED,
        ),
        ("POST", "my.openai.azure.com", "/openai/v1/responses", "azure", "responses", Metering.METERED),
        (
            "POST",
            "my.openai.azure.com",
            "/openai/deployments/x/embeddings",
            "azure",
            "/openai/deployments/x/embeddings",
            Metering.UNMETERED,
        ),
        (
            "POST",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/x/invoke",
            "bedrock",
            "invoke",
            Metering.METERED,
        ),
        (
            "POST",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/us.anthropic.x%3A0/converse-stream",
            "bedrock",
            "converse_stream",
            Metering.METERED,
        ),
        (
            "POST",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/invoke-with-response-stream",
            "bedrock",
            "invoke_stream",
            Metering.METERED,
        ),
        (
            "POST",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/async-invoke",
            "bedrock",
            "/async-invoke",
            Metering.UNMETERED,
        ),
        (
            "POST",
            "chatgpt.com",
            "/backend-api/codex/responses",
            "chatgpt",
            "/backend-api/codex/responses",
            Metering.UNMETERED,
        ),
    ],
)
def test_detect(method, host, path, family, api, metering):
    ep = wire.detect(method, host, path)
    assert ep is not None and (ep.family, ep.api, ep.metering) == (family, api, metering)


@pytest.mark.parametrize(
    "host,path",
    [
        ("example.com", "/v1/chat/completions"),
        ("api.openai.com.evil.com", "/v1/chat/completions"),
        ("pypi.org", "/simple/"),
    ],
)
def test_not_llm_traffic(host, path):
    assert wire.detect("POST", host, path) is None


@pytest.mark.parametrize(
    "host,status,key",
    [
        ("generativelanguage.googleapis.com", 403, "PERMISSION_DENIED"),
        ("bedrock-runtime.eu-west-1.amazonaws.com", 403, "AccessDeniedException"),
    ],
)
def test_unmetered_hosts_get_their_own_envelope(host, status, key):
    ep = wire.detect("POST", host, "/x")
    refusal = Refusal(
        rule="unmetered_endpoint", code="endpoint_not_metered", kind=RefusalKind.FORBIDDEN, message="m"
    )
    s, headers, body = wire.render_error(ep, refusal, "rid")
    assert s == status and key in body.decode() + json.dumps(headers)
    assert headers["x-should-retry"] == "false"
