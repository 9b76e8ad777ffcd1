"""PDF pages and text, read with bounds: the page count is the most any reader could see."""

from __future__ import annotations

import io
import time
from dataclasses import replace

import pytest
from pypdf import PdfWriter

from governance import documents
from tests.support.pdfs import build_form_pdf, build_pdf

LIMITS = documents.shipped_rules().limits


def blank_pdf(pages: int, *, password: str | None = None) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(612, 792)
    if password is not None:
        writer.encrypt(user_password=password, owner_password="owner-secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("pages", [1, 7, 100])
def test_pages_are_counted(pages):
    assert documents.read_pdf(build_pdf(pages), LIMITS) == documents.Pdf(pages, "")
    assert documents.read_pdf(blank_pdf(pages), LIMITS) == documents.Pdf(pages, "")


def test_a_hundred_blank_pages_fit_in_a_few_kilobytes():
    data = build_pdf(100)
    assert len(data) < 16_000
    assert documents.read_pdf(data, LIMITS).pages == 100


def test_the_text_of_every_page_is_extracted():
    found = documents.read_pdf(build_pdf(3, text="Quarterly revenue rose (sharply)"), LIMITS)
    assert isinstance(found, documents.Pdf) and found.pages == 3
    assert found.text.count("Quarterly revenue rose (sharply)") == 3


@pytest.mark.parametrize(("declared", "expected"), [(1, 100), (0, 100), (250, 250)])
def test_a_lying_count_never_lowers_the_pages(declared, expected):
    assert documents.read_pdf(build_pdf(100, declared=declared), LIMITS).pages == expected


def test_more_pages_than_parsed_behind_a_small_count_stop_early():
    data = build_pdf(LIMITS.max_pages * 10, declared=1)
    started = time.monotonic()
    found = documents.read_pdf(data, LIMITS)
    assert isinstance(found, documents.Unreadable) and "pages" in found.reason
    assert time.monotonic() - started < 5


def test_leaves_of_the_page_tree_count_whatever_their_type():
    """A reader that counts every leaf of the tree as a page (as some do when `/Count` is
    missing) finds 100 pages where only one says `/Type /Page`."""
    pdf = build_pdf(100, mistyped=99, declared=-1)
    assert pdf.count(b"/Type /Page ") == 1 and b"/Count" not in pdf
    assert documents.read_pdf(pdf, LIMITS).pages == 100


def test_pages_outside_the_page_tree_are_counted():
    assert documents.read_pdf(build_pdf(2, orphans=5), LIMITS).pages == 7


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (build_pdf(10)[:-200], "cannot be read"),  # truncated: no cross-reference table
        (b"%PDF-1.7\n" + bytes(5000), "cannot be read"),
        (b"PK\x03\x04 a zip, not a PDF" + bytes(100), "not a PDF"),
        (build_pdf(3, declared=10**9), "declares 1000000000 pages"),
        (blank_pdf(3, password="secret"), "encrypted"),
    ],
)
def test_what_cannot_be_read_says_why(data, why):
    found = documents.read_pdf(data, LIMITS)
    assert isinstance(found, documents.Unreadable) and why in found.reason


def test_an_encrypted_pdf_with_an_empty_password_is_read():
    assert documents.read_pdf(blank_pdf(4, password=""), LIMITS) == documents.Pdf(4, "")


def test_parsing_is_bounded():
    small = documents.Limits(
        max_bytes=10_000,
        max_pages=50,
        max_objects=40,
        max_text_chars=20,
        max_stream_bytes=10**6,
        max_content_bytes=10**6,
        max_text_operators=10**6,
    )
    assert "bytes" in documents.read_pdf(build_pdf(100), small).reason
    assert "pages" in documents.read_pdf(build_pdf(60), replace(small, max_bytes=10**6)).reason
    wide = replace(small, max_bytes=10**6, max_pages=10**6)
    assert "objects" in documents.read_pdf(build_pdf(60), wide).reason
    texty = replace(wide, max_objects=10**6)
    assert "characters" in documents.read_pdf(build_pdf(5, text="0123456789"), texty).reason
    busy = replace(texty, max_text_chars=10**6, max_text_operators=100)
    assert "operations" in documents.read_pdf(build_pdf(1, content=b"BT (a) Tj ET " * 200), busy).reason
    dense = replace(busy, max_text_operators=10**6, max_content_bytes=1000)
    assert "page content" in documents.read_pdf(build_pdf(3, content=b"BT (a) Tj ET " * 30), dense).reason


@pytest.mark.parametrize(
    "content",
    [
        b"BT /F1 12 Tf " + b"(a) Tj " * 150_000 + b"ET",  # a million bytes of text operations
        b"BT /F1 12 Tf (" + b"a" * 990_000 + b") Tj ET",  # one huge string
        b"0 " * 490_000,  # operands without an operator
    ],
)
def test_a_small_hostile_pdf_is_read_or_refused_quickly(content):
    """Kilobytes on the wire that inflate to pages pypdf would take seconds to read: the
    content and operation bounds stop them well before."""
    data = build_pdf(20, content=content)
    assert len(data) < 64 * 1024  # small enough to be read on the proxy's event loop
    started = time.monotonic()
    found = documents.read_pdf(data, LIMITS)
    assert isinstance(found, documents.Unreadable)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "form",
    [
        b"BT /F1 12 Tf " + b"(a) Tj " * 30_000 + b"ET",  # 30,000 operations, drawn a thousand times
        b"BT /F1 12 Tf (" + b"a" * 200_000 + b") Tj ET",  # 200,000 characters, drawn a thousand times
    ],
)
def test_a_form_drawn_again_and_again_is_bounded(form):
    data = build_form_pdf(form, 1000)
    assert len(data) < 4096
    started = time.monotonic()
    assert isinstance(documents.read_pdf(data, LIMITS), documents.Unreadable)
    assert time.monotonic() - started < 3


def test_a_form_drawn_a_few_times_is_read():
    found = documents.read_pdf(build_form_pdf(b"BT /F1 12 Tf (Hello) Tj ET", 3), LIMITS)
    assert found == documents.Pdf(1, "Hello\nHello\nHello")


def test_a_pdf_bomb_stops_at_the_stream_bound_quickly():
    bomb = build_pdf(1, bomb_bytes=100_000_000)  # 100 MB of zeros in a file of about 100 KB
    assert len(bomb) < 200_000
    started = time.monotonic()
    found = documents.read_pdf(bomb, LIMITS)
    assert isinstance(found, documents.Unreadable)
    assert time.monotonic() - started < 5


def test_rules_table_and_unknown_models():
    rules = documents.shipped_rules()
    # Anthropic documents 1,500-3,000 text tokens a page: the upper end is counted.
    assert rules.text_per_page("claude-sonnet-4-5-20250929") == 3000
    assert rules.text_per_page("gpt-4o") == 3000
    assert rules.text_per_page("some-new-model") == max(rules.page_text_tokens.values())
    with pytest.raises(ValueError, match="page_text_tokens"):
        documents.parse_rules({"page_text_tokens": {"claude": -1}, "limits": {}})
    with pytest.raises(ValueError, match="max_pages"):
        documents.parse_rules({"page_text_tokens": {"claude": 1}, "limits": {"max_bytes": 1}})


def test_a_documents_pages_are_priced_at_the_most_a_page_costs():
    rules = documents.shipped_rules()
    assert documents.document_tokens(documents.Pdf(100, ""), "claude-sonnet-4-5", 1600, rules) == 100 * 4600
