"""PDFs in a prompt: how many pages they have and what text they hold, read with pypdf.

Providers bill a PDF page by page: each page's extracted text plus an image of the page
(Anthropic, OpenAI). So a document's bound is its pages times the most one page costs (the
figures are data, in `rules/documents.yaml`), plus the text it really holds. Its byte size says
nothing: a hundred blank pages fit in 9 KB.

The page count is the largest any reader could arrive at: the page tree's declared `/Count`, the
pages found walking the tree, its leaves whatever their `/Type`, and every `/Page` object in the
file, so a lying `/Count`, a misspelt `/Type` or pages left outside the tree cannot shrink it.
Parsing is bounded (bytes, objects, pages, decompressed stream size, extracted text); a PDF past
a bound, or one pypdf cannot read, is `Unreadable`, and
the caller bounds it by the model's context window or refuses it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from governance.matching import lookup_model

#: pypdf's options that bound how much one stream may decompress to.
_STREAM_LIMITS = (
    "zlib_maximum_output_length",
    "lzw_maximum_output_length",
    "run_length_maximum_output_length",
    "brotli_maximum_output_length",
    "jbig2_maximum_output_length",
    "array_based_stream_maximum_output_length",
    "maximum_declared_stream_length",
)


@dataclass(frozen=True)
class Limits:
    """How much of one PDF is parsed (`limits` in `rules/documents.yaml`)."""

    max_bytes: int
    max_pages: int
    max_objects: int
    max_text_chars: int
    max_stream_bytes: int
    max_content_bytes: int
    max_text_operators: int


@dataclass(frozen=True)
class Rules:
    """`rules/documents.yaml`: text tokens per page by model, and the parsing limits."""

    page_text_tokens: Mapping[str, int]
    limits: Limits

    def text_per_page(self, model: str) -> int:
        """Text tokens one page may bill for `model`; the largest known for an unknown model."""
        found = lookup_model(self.page_text_tokens, model)
        return found[1] if found is not None else max(self.page_text_tokens.values())


@dataclass(frozen=True)
class Pdf:
    """What a readable PDF holds: its page count (the largest any reader could see) and its text."""

    pages: int
    text: str


@dataclass(frozen=True)
class Unreadable:
    """A PDF whose pages or text cannot be bounded, and why."""

    reason: str


def _positive_int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: `{key}` must be a positive integer, not {value!r}")
    return value


def parse_rules(data: Any, origin: str = "documents rules") -> Rules:
    """Validate the documents table. Raises ValueError naming the bad entry."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{origin}: must be a mapping")
    pages = data.get("page_text_tokens")
    limits = data.get("limits")
    if not isinstance(pages, Mapping) or not pages:
        raise ValueError(f"{origin}: `page_text_tokens` must map models to tokens per page")
    if not isinstance(limits, Mapping):
        raise ValueError(f"{origin}: `limits` must be a mapping")
    table = {str(k): _positive_int(pages, k, f"{origin}: page_text_tokens") for k in pages}
    bounds = Limits(**{f: _positive_int(limits, f, f"{origin}: limits") for f in Limits.__dataclass_fields__})
    return Rules(table, bounds)


@functools.cache
def shipped_rules() -> Rules:
    """The shipped `rules/documents.yaml`, read once. Raises ValueError if it is invalid."""
    from governance import RULES_DIR

    path = RULES_DIR / "documents.yaml"
    return parse_rules(yaml.safe_load(path.read_text()), str(path))


def _scan(reader: Any, limits: Limits) -> tuple[int, int] | Unreadable:
    """`(page objects, largest form)`: how many objects in the file are `/Type /Page`, wherever
    they are (in the page tree or not, in object streams or not), and the decoded size of its
    largest form XObject (forms are what text extraction may run again and again)."""
    from pypdf.generic import DictionaryObject, IndirectObject, StreamObject

    ids = {(num, gen) for gen, entries in reader.xref.items() for num in entries}
    ids |= {(num, 0) for num in reader.xref_objStm}
    if len(ids) > limits.max_objects:
        return Unreadable(f"a PDF of more than {limits.max_objects} objects")
    pages = largest = forms = 0
    for num, gen in ids:
        obj = reader.get_object(IndirectObject(num, gen, reader))
        if isinstance(obj, DictionaryObject) and obj.get("/Type") == "/Page":
            pages += 1
            if pages > limits.max_pages:
                return Unreadable(f"a PDF of more than {limits.max_pages} pages")
        elif isinstance(obj, StreamObject) and obj.get("/Subtype") == "/Form":
            size = len(obj.get_data())
            largest, forms = max(largest, size), forms + size
            if forms > limits.max_content_bytes:
                return Unreadable(f"a PDF with more than {limits.max_content_bytes} bytes of forms")
    return pages, largest


def _declared_count(reader: Any) -> int:
    """The root page tree's `/Count` (0 when it has none or it is not a number)."""
    pages = reader.root_object.get("/Pages")
    pages = pages.get_object() if pages is not None else None
    count = pages.get("/Count") if hasattr(pages, "get") else None
    return int(count) if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def _tree_leaves(reader: Any, limits: Limits) -> int:
    """The leaves of the page tree whatever their `/Type`: some readers count every node
    without `/Kids` as a page, where a `/Type` is missing or misspelt. Each node once (a
    cycle ends there), and no more than the pages parsed allow."""
    root = reader.root_object.get("/Pages")
    stack, seen, leaves = [root], set(), 0
    while stack and leaves <= limits.max_pages and len(seen) <= 2 * limits.max_pages + 64:
        ref = stack.pop()
        key = (ref.idnum, ref.generation) if hasattr(ref, "idnum") else id(ref)
        if ref is None or key in seen:
            continue
        seen.add(key)
        node = ref.get_object()
        if not hasattr(node, "get"):
            continue
        kids = node.get("/Kids")
        kids = kids.get_object() if kids is not None else None
        if isinstance(kids, list):
            stack.extend(kids)
        else:
            leaves += 1
    return leaves


def read_pdf(data: bytes, limits: Limits) -> Pdf | Unreadable:
    """The pages and text of the PDF `data`, or why they cannot be bounded. Never raises."""
    if len(data) > limits.max_bytes:
        return Unreadable(f"a PDF of {len(data)} bytes, more than the {limits.max_bytes} parsed")
    if b"%PDF-" not in data[:1024]:  # where readers look for the header
        return Unreadable("a document that is not a PDF")
    from pypdf import PdfReader
    from pypdf._configuration import apply_configuration

    caps: dict[str, int] = dict.fromkeys(_STREAM_LIMITS, limits.max_stream_bytes)
    # The page tree is walked no further than the pages parsed (and its inner nodes).
    caps["page_tree_maximum_entries"] = 2 * limits.max_pages + 64
    try:
        with apply_configuration(**caps):
            return _read(PdfReader(io.BytesIO(data), strict=False), limits)
    # pypdf raises many kinds of errors on a malformed file (its own, ValueError, KeyError,
    # RecursionError, ...): every one means the same thing here, a PDF that cannot be bounded
    # by its pages, which the caller bounds by the context window or refuses.
    except Exception as e:  # noqa: BLE001
        return Unreadable(f"a PDF that cannot be read ({type(e).__name__})")


def _read(reader: Any, limits: Limits) -> Pdf | Unreadable:
    if reader.is_encrypted and not reader.decrypt(""):
        return Unreadable("an encrypted PDF")
    declared = _declared_count(reader)
    if declared > limits.max_pages:
        return Unreadable(f"a PDF that declares {declared} pages, more than the {limits.max_pages} parsed")
    scanned = _scan(reader, limits)
    if isinstance(scanned, Unreadable):
        return scanned
    objects, largest_form = scanned
    walked = len(reader.pages)
    pages = max(declared, walked, objects, _tree_leaves(reader, limits))
    if pages > limits.max_pages:
        return Unreadable(f"a PDF of {pages} pages, more than the {limits.max_pages} parsed")
    if pages == 0:
        return Unreadable("a PDF with no page spendfuse can find")
    budget = _Budget(limits, largest_form)
    texts: list[str] = []
    for page in reader.pages:
        try:
            budget.charge_content(_content_bytes(page))
            text = page.extract_text(visitor_operand_before=budget.operator, visitor_text=budget.text)
        except _OverBudget as e:
            return Unreadable(str(e))
        texts.append(text)
    return Pdf(pages, "\n".join(t for t in texts if t))


class _OverBudget(BaseException):
    """Raised from pypdf's callbacks to stop text extraction. A BaseException, because pypdf
    catches (and logs) every Exception raised while it reads a form, then goes on."""


class _Budget:
    """What text extraction may still do: pypdf reads text in pure Python, a few microseconds a
    byte, so the content it parses (page streams, and each form every time it is drawn), the
    operations it runs and the text it produces are bounded as it goes."""

    def __init__(self, limits: Limits, largest_form: int) -> None:
        self.limits = limits
        self.largest_form = largest_form
        self.content = self.operators = self.chars = 0

    def charge_content(self, size: int) -> None:
        self.content += size
        if self.content > self.limits.max_content_bytes:
            raise _OverBudget(f"a PDF with more than {self.limits.max_content_bytes} bytes of page content")

    def operator(self, operator: Any, *_: Any) -> None:
        self.operators += 1
        if self.operators > self.limits.max_text_operators:
            raise _OverBudget(f"a PDF drawing more than {self.limits.max_text_operators} operations")
        if operator == b"Do":  # may draw a form, parsed and run again: charged as the largest
            self.charge_content(self.largest_form)

    def text(self, text: str, *_: Any) -> None:
        self.chars += len(text)
        if self.chars > self.limits.max_text_chars:
            raise _OverBudget(f"a PDF holding more than {self.limits.max_text_chars} characters of text")


def _content_bytes(page: Any) -> int:
    """Decoded bytes of a page's content streams (its forms are charged as they are drawn)."""
    contents = page.get_contents()
    return len(contents.get_data()) if contents is not None else 0


def document_tokens(pdf: Pdf, model: str, page_image_tokens: int, rules: Rules) -> int:
    """Tokens a readable PDF's pages may bill, beyond its text (counted by the caller): each
    page's documented text allowance plus the most one page image costs."""
    return pdf.pages * (rules.text_per_page(model) + page_image_tokens)
