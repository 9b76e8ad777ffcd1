"""`governance.media`: image sizes from their headers, and each provider's token formula."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
import yaml

from governance import RULES_DIR
from governance.media import ImageRef, image_size, image_tokens

FORMULAS = yaml.safe_load((RULES_DIR / "image_tokens.yaml").read_text())


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 5000) + b"x" * 5000  # metadata before the frame
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + exif + sof0 + b"\xff\xd9"


def webp(width: int, height: int) -> bytes:
    body = (
        b"VP8X"
        + struct.pack("<I", 10)
        + b"\x00" * 4
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def data_url(raw: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


@pytest.mark.parametrize("make", [png, gif, jpeg, webp])
@pytest.mark.parametrize("size", [(1, 1), (1024, 768), (4096, 8192)])
def test_sizes_from_headers(make, size):
    assert image_size(data_url(make(*size))) == size
    assert image_size(base64.b64encode(make(*size)).decode()) == size  # bare base64 (Anthropic)


def test_unreadable_images_have_no_size():
    assert image_size("data:image/png;base64,AAAA") is None
    assert image_size("not base64 at all") is None


def tokens(model: str, size: tuple[int, int] | None, detail: str | None = "high") -> int:
    spec = FORMULAS[model]
    return image_tokens(spec, ImageRef(data_url(png(*size)) if size else None, detail))


@pytest.mark.parametrize(
    ("model", "size", "detail", "expected"),
    [
        # OpenAI's published examples for gpt-4o: 1024 square high = 4 tiles; 2048x4096 = 6 tiles; low = base.
        ("gpt-4o", (1024, 1024), "high", 85 + 170 * 4),
        ("gpt-4o", (2048, 4096), "high", 85 + 170 * 6),
        ("gpt-4o", (4096, 8192), "low", 85),
        ("gpt-4o", (1024, 1024), None, 85 + 170 * 4),  # auto is priced as high
        ("gpt-4o", None, "high", 85 + 170 * 8),  # a URL: the most tiles any image has
        ("gpt-4o-mini", (1024, 1024), "high", 2833 + 5667 * 4),
        ("gpt-4o-mini", None, "high", 2833 + 5667 * 8),
        ("gpt-5", (512, 512), "high", 70 + 140),
        # Patches: 1024 square = 1024 patches, times the model's multiplier; at most 1536 patches.
        ("gpt-4.1-mini", (1024, 1024), "high", 1659),
        ("gpt-4.1-mini", None, "high", 2489),
        ("o4-mini", (4096, 4096), "high", 2642),
        # Anthropic: w x h / 750, scaled to fit 1568, at most 1600.
        ("claude", (1092, 1092), None, 1590),
        ("claude", (200, 200), None, 54),
        ("claude", (8000, 8000), None, 1600),
        ("claude", None, None, 1600),
        # Gemini: one tile up to 384 px, else 768 px tiles.
        ("gemini", (384, 384), None, 258),
        ("gemini", (1000, 1000), None, 258 * 4),
    ],
)
def test_formulas(model, size, detail, expected):
    assert tokens(model, size, detail) == expected


def test_every_shipped_formula_is_valid():
    from governance import policy

    loaded = policy.load(RULES_DIR / "default.yaml")
    assert set(loaded.image_formula_table()) == set(FORMULAS)


@pytest.mark.parametrize(
    ("model", "most"),
    [
        # The most one image (a PDF's page image, whose size is not known) costs, by the providers'
        # published formulas: Claude ~1.15 megapixels = 1,600; gpt-4o 85 + 8 tiles x 170;
        # gpt-4o-mini 2,833 + 8 x 5,667; gpt-4.1-mini 1,536 patches x 1.62.
        ("claude", 1600),
        ("gpt-4o", 85 + 8 * 170),
        ("gpt-4o-mini", 2833 + 8 * 5667),
        ("gpt-4.1-mini", 2489),
    ],
)
def test_an_image_of_unknown_size_costs_the_most_one_image_can(model, most):
    assert image_tokens(FORMULAS[model], ImageRef(None)) == most


def test_a_data_url_that_is_not_an_image_costs_the_most_one_image_can():
    text = "data:image/png;base64," + base64.b64encode(b"just some text, not a PNG header" * 20).decode()
    assert image_tokens(FORMULAS["claude"], ImageRef(text)) == 1600
