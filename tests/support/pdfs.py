"""PDFs assembled by hand, byte by byte, for tests: the page count and text are known by
construction, not read back by the code under test."""

from __future__ import annotations

import zlib


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def build_pdf(
    pages: int,
    *,
    text: str = "",
    declared: int | None = None,
    orphans: int = 0,
    bomb_bytes: int = 0,
    content: bytes | None = None,
    mistyped: int = 0,
) -> bytes:
    """A PDF with `pages` pages in its page tree, each showing `text` (Helvetica, one line) if
    any. `declared`: the `/Count` the tree claims (default: the truth). `orphans`: more `/Page`
    objects that no `/Kids` array lists. `bomb_bytes`: the first page's content stream also
    inflates to this many zero bytes (a small file that decompresses to a huge one). `content`:
    every page's content stream, Flate-compressed, instead of the text. `mistyped`: that many of
    the tree's pages are typed `/Pagex` (some readers count them all the same); `declared=-1`:
    the tree has no `/Count`."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in below, once the page tree's number is known
    tree = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids: list[int] = []
    for i in range(pages + orphans):
        shown = f"BT /F1 12 Tf 72 712 Td ({_escape(text)}) Tj ET".encode() if text else b""
        contents = b""
        if content is not None:
            packed = zlib.compress(content, 9)
            stream = add(
                b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(packed), packed)
            )
            contents = b" /Contents %d 0 R" % stream
        elif bomb_bytes and i == 0:
            packed = zlib.compress(shown + b"\n%" + bytes(bomb_bytes), 9)
            stream = add(
                b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(packed), packed)
            )
            contents = b" /Contents %d 0 R" % stream
        elif shown:
            stream = add(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(shown), shown))
            contents = b" /Contents %d 0 R" % stream
        kind = b"/Pagex" if pages - mistyped <= i < pages else b"/Page"
        page = add(
            b"<< /Type %s /Parent %d 0 R /MediaBox [0 0 612 792]%s "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (kind, tree, contents, font)
        )
        if i < pages:
            kids.append(page)
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % tree
    count = pages if declared is None else declared
    refs = b" ".join(b"%d 0 R" % k for k in kids)
    counted = b"" if count == -1 else b" /Count %d" % count
    objects[tree - 1] = b"<< /Type /Pages /Kids [%s]%s >>" % (refs, counted)
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        xref,
    )
    return bytes(out)


def build_form_pdf(form: bytes, draws: int) -> bytes:
    """A one-page PDF whose page draws the form XObject `/X0` (content `form`) `draws` times."""
    packed_form = zlib.compress(form, 9)
    packed_page = zlib.compress(b"/X0 Do " * draws, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 5 0 R "
        b"/Resources << /Font << /F1 3 0 R >> /XObject << /X0 6 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(packed_page), packed_page),
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
        b"/Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(packed_form), packed_form),
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
