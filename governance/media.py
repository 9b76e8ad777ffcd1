"""Images in a prompt: their size from the inline data's own header, and their tokens by each
provider's published formula (the formulas' numbers are data, in `rules/image_tokens.yaml`).

An image whose size cannot be read (a URL, a file by id, a format not parsed here) is counted at
the most its model can bill for one image, never at a guess.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Enough of a file to find its size: PNG and GIF say it in the first bytes; a JPEG's frame header
# follows its metadata, which is rarely longer than this.
_HEAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class ImageRef:
    """An image part as the prompt gives it: inline data (a data URL or bare base64) or none,
    and the `detail` it asks for (OpenAI)."""

    data: str | None
    detail: str | None = None


def _head(data: str) -> bytes:
    """The first bytes of an image given as a data URL or bare base64 (undecodable: empty)."""
    if data.startswith("data:"):
        data = data.split(",", 1)[1] if "," in data else ""
    chunk = data[: _HEAD_BYTES * 4 // 3]
    chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        return base64.b64decode(chunk, validate=False)
    except (binascii.Error, ValueError):
        return b""


def image_size(data: str) -> tuple[int, int] | None:
    """`(width, height)` in pixels read from the image's header (PNG, JPEG, GIF, WebP), or None."""
    head = _head(data)
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(head)
    except struct.error:
        return None
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if kind == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", head[i + 2 : i + 4])[0]
        # Start-of-frame markers carry the size; C4, C8 and CC are other tables.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


# -- formulas ------------------------------------------------------------------------------------


def _fit(width: float, height: float, box: float) -> tuple[float, float]:
    """Scaled down (never up) to fit a `box` x `box` square."""
    scale = min(1.0, box / max(width, height))
    return width * scale, height * scale


def _openai_tiles(spec: Mapping[str, Any], size: tuple[int, int] | None, detail: str | None) -> int:
    """OpenAI's tile formula: `low` detail costs the base; otherwise the image is fitted into
    2048 x 2048, then scaled down so its shorter side is at most 768, and every 512 px tile
    costs `tile` on top of the base. Unknown size: the most tiles any image can have (8)."""
    base, tile = int(spec["base"]), int(spec["tile"])
    if detail == "low":
        return base
    if size is None:
        return base + tile * 8
    w, h = _fit(*size, 2048)
    scale = min(1.0, 768 / min(w, h)) if min(w, h) > 0 else 1.0
    w, h = w * scale, h * scale
    return base + tile * max(1, math.ceil(w / 512)) * max(1, math.ceil(h / 512))


def _openai_patches(spec: Mapping[str, Any], size: tuple[int, int] | None, detail: str | None) -> int:
    """OpenAI's patch formula (4.1-mini, 4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano): 32 px
    patches, at most 1536 (the image is scaled down to fit), times the model's multiplier.
    Unknown size: all 1536 patches."""
    cap = int(spec.get("max_patches", 1536))
    multiplier = float(spec["multiplier"])
    if size is None:
        patches = cap
    else:
        w, h = size
        patches = math.ceil(w / 32) * math.ceil(h / 32)
        if patches > cap:
            shrink = math.sqrt(cap * 32 * 32 / (w * h))
            patches = min(cap, math.ceil(w * shrink / 32) * math.ceil(h * shrink / 32))
    return math.ceil(patches * multiplier)


def _pixels(spec: Mapping[str, Any], size: tuple[int, int] | None, detail: str | None) -> int:
    """Anthropic's formula: width x height / 750 tokens, after the image is scaled down to fit
    `max_long_edge`; never more than `max_tokens`. Unknown size: `max_tokens`."""
    most = int(spec["max_tokens"])
    if size is None:
        return most
    w, h = _fit(*size, float(spec["max_long_edge"]))
    return min(most, math.ceil(w * h / float(spec["pixels_per_token"])))


def _gemini(spec: Mapping[str, Any], size: tuple[int, int] | None, detail: str | None) -> int:
    """Gemini's formula: an image at most 384 px on both sides is one tile; larger ones are cut
    into 768 px tiles; each tile costs `per_tile`. Unknown size: `max_tiles` tiles."""
    per_tile = int(spec["per_tile"])
    if size is None:
        return per_tile * int(spec.get("max_tiles", 16))
    w, h = size
    if w <= 384 and h <= 384:
        return per_tile
    return per_tile * max(1, math.ceil(w / 768)) * max(1, math.ceil(h / 768))


_FORMULAS = {"tiles": _openai_tiles, "patches": _openai_patches, "pixels": _pixels, "gemini": _gemini}
METHODS = frozenset(_FORMULAS)


def image_tokens(spec: Mapping[str, Any], image: ImageRef) -> int:
    """Tokens one image costs under `spec` (an entry of the image table). `auto` detail is
    priced as `high`: the provider chooses, so the worst case is the dearer one."""
    size = image_size(image.data) if image.data else None
    if size is not None and min(size) <= 0:
        size = None  # a header that names no real size (a JPEG whose height comes later): the maximum
    detail = (image.detail or "auto").lower() if isinstance(image.detail, str) else "auto"
    return _FORMULAS[spec["method"]](spec, size, detail)
