"""`governance.hosts`: canonical names, the host table as data, and which host a request targets."""

from __future__ import annotations

import pytest

from governance import policy
from governance.hostrules import shipped_table
from governance.hosts import canonical_host, is_ip_literal, resolve


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "2130706433",
        "017700000001",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "::ffff:7f00:1",
        "[::1]:443",
        "::1",
        "localhost",
        "LOCALHOST.",
        "api.localhost",
        "0.0.0.0",
        "0",
        "127.0.0.1:8080",
        "[::]",
    ],
)
def test_every_spelling_of_this_machine_is_one_name(spelling):
    assert canonical_host(spelling) == "127.0.0.1"


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("API.OpenAI.com.", "api.openai.com"),
        ("api.openai.com:443", "api.openai.com"),
        ("10.1", "10.0.0.1"),
        ("167772165", "10.0.0.5"),
        ("0xa.0.0.5", "10.0.0.5"),
        ("[2001:DB8:0:0::1]:443", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("1.2.3.4.5", "1.2.3.4.5"),  # not an address: a (strange) name
        ("999.1.1.1", "999.1.1.1"),
    ],
)
def test_canonical_forms(spelling, canonical):
    assert canonical_host(spelling) == canonical


def test_ip_literals():
    assert is_ip_literal("127.1") and is_ip_literal("[::1]:443") and is_ip_literal("2130706433")
    assert not is_ip_literal("api.openai.com") and not is_ip_literal("localhost")


@pytest.mark.parametrize(
    ("host", "entry"),
    [
        ("api.openai.com", "openai"),
        ("eu.api.openai.com", "openai"),
        ("us.api.openai.com", "openai"),
        ("api.anthropic.com", "anthropic"),
        ("us-central1-aiplatform.googleapis.com", "vertex"),
        ("europe-west4-aiplatform.googleapis.com", "vertex"),
        ("aiplatform.googleapis.com", "vertex"),
        ("myres.openai.azure.us", "azure"),
        ("myres.openai.azure.com", "azure"),
        ("x.models.ai.azure.com", "azure"),
        ("models.inference.ai.azure.com", "github-models"),
        ("models.github.ai", "github-models"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
        ("bedrock-agent-runtime.eu-west-1.amazonaws.com", "bedrock"),
        ("bedrock.us-east-1.amazonaws.com", "bedrock"),
        ("bedrock-runtime.us-east-1.api.aws", "bedrock"),
        ("vpce-0abc-1234.bedrock-runtime.us-east-1.vpce.amazonaws.com", "bedrock"),
        ("gateway.ai.cloudflare.com", "cloudflare-ai-gateway"),
        ("oai.helicone.ai", "helicone"),
        ("api.portkey.ai", "portkey"),
        ("api.deepinfra.com", "deepinfra"),
        ("dashscope-intl.aliyuncs.com", "dashscope"),
        ("api.z.ai", "zai"),
        ("integrate.api.nvidia.com", "nvidia"),
        ("api.sambanova.ai", "sambanova"),
        ("router.huggingface.co", "huggingface"),
    ],
)
def test_shipped_hosts(host, entry):
    found = shipped_table().lookup(host)
    assert found is not None and found.name == entry


@pytest.mark.parametrize(
    ("host", "entry"),
    [
        # A provider's API domain is covered whole: data residency and regional hosts, today's
        # and tomorrow's.
        ("jp.api.openai.com", "openai"),
        ("au.api.openai.com", "openai"),
        ("in.api.openai.com", "openai"),
        ("future-region.api.openai.com", "openai"),
        ("eu.api.anthropic.com", "anthropic"),
        # Google: mTLS, regional, rep, sandbox and Private Service Connect names.
        ("generativelanguage.mtls.googleapis.com", "google"),
        ("generativelanguage-myendpoint.p.googleapis.com", "google"),
        ("autopush-generativelanguage.sandbox.googleapis.com", "google"),
        ("cloudcode-pa.mtls.googleapis.com", "google-code-assist"),
        ("us-central1-aiplatform.mtls.googleapis.com", "vertex"),
        ("us-central1-aiplatform-psc1.p.googleapis.com", "vertex"),
        ("aiplatform.us-central1.rep.googleapis.com", "vertex"),
        ("1234.us-central1-567.prediction.vertexai.goog", "vertex"),
        ("my-resource.openai.azure.com", "azure"),
        ("us-east-1.api.x.ai", "xai"),
        ("api.x.ai", "xai"),
        ("api.groq.com", "groq"),
        ("api.mistral.ai", "mistral"),
        ("codestral.mistral.ai", "mistral"),
        ("api.deepseek.com", "deepseek"),
        ("openrouter.ai", "openrouter"),
        ("api.together.xyz", "together"),
        ("audio-prod.us-virginia-1.direct.fireworks.ai", "fireworks"),
        ("api.cerebras.ai", "cerebras"),
        ("api.perplexity.ai", "perplexity"),
        ("dashscope-us.aliyuncs.com", "dashscope"),
        ("api.replicate.com", "replicate"),
        # chatgpt.com is covered whole, not only /backend-api/codex.
        ("chatgpt.com", "chatgpt"),
        ("ab.chatgpt.com", "chatgpt"),
        ("chat.openai.com", "chatgpt"),
    ],
)
def test_provider_domains_are_covered_whole(host, entry):
    found = shipped_table().lookup(host)
    assert found is not None and found.name == entry, host


def test_an_entry_covers_its_whole_host():
    """A path the entry has no route for is a free read or UNMETERED, never passed (None)."""
    from governance import wire
    from governance.types import Metering

    table = shipped_table()
    for host, path in [
        ("chatgpt.com", "/backend-api/conversation"),
        ("chatgpt.com", "/backend-api/codex/responses"),
        ("api.openai.com", "/v2/chat/completions"),
        ("api.openai.com", "/v1/embeddings"),
        ("api.anthropic.com", "/v1/complete"),
    ]:
        endpoint = wire.detect("POST", host, path, table)
        assert endpoint is not None and endpoint.metering is Metering.UNMETERED, (host, path)
        read = wire.detect("GET", host, path, table)
        assert read is not None and read.metering is Metering.FREE


@pytest.mark.parametrize(
    "host", ["api.openai.com.evil.com", "openai.com", "example.com", "pypi.org", "evilapi.openai.com"]
)
def test_not_llm_hosts(host):
    assert shipped_table().lookup(host) is None


def test_operator_hosts_come_first_and_match_any_ip_spelling():
    rule = policy.HostRule(
        name="vllm",
        match=["10.0.0.5", "*.llm.corp"],
        family="openai",
        default_price={"input_mtok": 1, "output_mtok": 2},
    )
    table = policy.host_table([rule])
    for spelling in ("10.0.0.5", "167772165", "10.5", "0xa.0.0.5", "[::ffff:10.0.0.5]:8000", "a.llm.corp"):
        found = table.lookup(spelling)
        assert found is not None and found.name == "vllm" and found.operator, spelling
    assert table.lookup("api.openai.com").name == "openai"


class TestResolve:
    table = shipped_table()

    def test_no_llm_name_is_not_llm_traffic(self):
        target = resolve(
            self.table, [("connect", "github.com"), ("sni", "github.com"), ("host", "github.com")]
        )
        assert target.entry is None and target.mismatch is None

    def test_agreeing_names(self):
        target = resolve(
            self.table, [("url", "api.openai.com"), ("sni", "API.OPENAI.COM"), ("host", "api.openai.com:443")]
        )
        assert target.entry.name == "openai" and target.host == "api.openai.com" and target.mismatch is None

    @pytest.mark.parametrize(
        "names",
        [
            [("connect", "localhost"), ("sni", "api.openai.com")],
            [("connect", "127.1"), ("host", "api.openai.com")],
            [("connect", "alias.example"), ("sni", "api.openai.com"), ("host", "api.openai.com")],
            [("connect", "api.openai.com"), ("host", "example.com")],
            [("url", "example.com"), ("authority", "api.anthropic.com")],
            [("connect", "api.openai.com"), ("sni", "api.anthropic.com")],
        ],
    )
    def test_disagreeing_names_with_an_llm_host_are_refused_never_passed(self, names):
        target = resolve(self.table, names)
        assert target.entry is not None and target.mismatch is not None

    def test_a_resolved_ip_destination_takes_the_llm_name(self):
        names = [("url", "162.159.140.245"), ("sni", "api.openai.com"), ("host", "api.openai.com")]
        assert resolve(self.table, names).mismatch is not None
        target = resolve(self.table, names, destination_is_resolved=True)
        assert target.entry.name == "openai" and target.mismatch is None
        # ...but never when the names disagree about which LLM host.
        two = [("url", "1.2.3.4"), ("sni", "api.openai.com"), ("host", "api.anthropic.com")]
        assert resolve(self.table, two, destination_is_resolved=True).mismatch is not None
