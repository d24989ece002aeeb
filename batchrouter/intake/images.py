"""What an image input costs in tokens on a route, and an image's size read from a data URL's header.

The catalog says which published rule a route follows (`image_rule`) with its figures:

- `tile` (OpenAI, older vision models): the image is scaled to fit a 2048 x 2048 square, then so that its
  shortest side is at most 768 px; it costs `image_base_tokens` plus `image_tile_tokens` per 512-px tile.
  `detail: "low"` costs the base alone.
- `patch` (OpenAI, newer models): 32-px patches, ceil(w / 32) x ceil(h / 32), at most `image_max_patches`
  (larger images are scaled down to fit), times `image_patch_multiplier`. `detail` does not lower it.
  A route whose rule is not published for certain also carries tile figures; the larger result counts.
- `area` (Anthropic): about w x h / 750 tokens, and images are scaled down to stay within
  `image_max_tokens`.
- `none`: the route takes no images (0 here; routing refuses image items for it).

When the size is unknown (an http URL, an unreadable data URL) the cost is the worst case for that detail
level on that route: the most tiles a scaled image can have (8: a 2048 x 768 image), the full patch budget,
or `image_max_tokens`. Every figure is rounded up, so the result is an upper bound of what is billed.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from fractions import Fraction

from batchrouter.core.catalog import CatalogEntry

TILE_FIT = 2048
TILE_SHORT_SIDE = 768
TILE = 512
MAX_TILES = 8  # ceil(2048 / 512) x ceil(768 / 512): no image scaled by the tile rule has more
PATCH = 32
AREA_DIVISOR = 750

# Enough of a data URL to reach a JPEG's frame header past large EXIF or ICC segments (both are capped
# at 64 KiB each); the whole URL is decoded only when a JPEG's header lies further in.
_PREFIX_CHARS = 4 * 65536
_DATA_URL = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(?:;[^,;]*)*?);base64,", re.IGNORECASE)


def image_tokens(entry: CatalogEntry, *, detail: str | None, width: int | None, height: int | None) -> int:
    """Tokens one image costs on `entry`'s route; the worst case for `detail` when the size is unknown.

    Args:
        entry: the route; its `image_*` fields say which rule applies.
        detail: the request's `detail` ("low", "high", "auto", "original" or None). Anything but "low" is
            priced as the most detailed reading the route may make.
        width: image width in pixels, or None when unknown.
        height: image height in pixels, or None when unknown.
    """
    size = (width, height) if width is not None and height is not None and width > 0 and height > 0 else None
    if entry.image_rule == "none":
        return 0
    if entry.image_rule == "tile":
        if detail == "low":
            return entry.image_base_tokens
        tiles = MAX_TILES if size is None else _tiles(*size)
        return entry.image_base_tokens + tiles * entry.image_tile_tokens
    if entry.image_rule == "patch":
        cap = entry.image_max_patches
        patches = cap if size is None else min(math.ceil(size[0] / PATCH) * math.ceil(size[1] / PATCH), cap)
        tokens = math.ceil(patches * entry.image_patch_multiplier)
        if entry.image_tile_tokens:  # a route whose rule is uncertain carries both; the larger counts
            tiles = MAX_TILES if size is None else _tiles(*size)
            tokens = max(tokens, entry.image_base_tokens + tiles * entry.image_tile_tokens)
        return tokens
    # area
    if size is None:
        return entry.image_max_tokens
    return min(math.ceil(Fraction(size[0] * size[1], AREA_DIVISOR)), entry.image_max_tokens)


def _tiles(width: int, height: int) -> int:
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > TILE_FIT:
        scale = Fraction(TILE_FIT) / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > TILE_SHORT_SIDE:
        scale = Fraction(TILE_SHORT_SIDE) / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / TILE) * math.ceil(h / TILE)


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) from the header of a base64 data URL (PNG, JPEG, GIF, WebP); None otherwise.

    Only the header is read, never the pixels. http(s) URLs, other encodings, unknown formats and
    damaged headers give None, so the caller prices the worst case.
    """
    match = _DATA_URL.match(url)
    if match is None:
        return None
    payload = url[match.end() :]
    head = _decode(payload[:_PREFIX_CHARS])
    if head is None:
        return None
    size = _size(head)
    if size is None and head[:2] == b"\xff\xd8" and len(payload) > _PREFIX_CHARS:
        whole = _decode(payload)
        size = None if whole is None else _jpeg(whole)
    return size


def _decode(text: str) -> bytes | None:
    text = "".join(text.split())
    text = text[: len(text) - len(text) % 4]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            return None


def _size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _checked(*struct.unpack_from("<HH", data, 6)) if len(data) >= 10 else None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    return None


def _checked(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _png(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return _checked(*struct.unpack_from(">II", data, 16))


# Start-of-frame markers carry the frame size: baseline, extended, progressive, lossless, and their
# arithmetic-coded forms (C4 is DHT, C8 is reserved, CC is DAC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def _jpeg(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            return None
        (length,) = struct.unpack_from(">H", data, at + 2)
        if length < 2:
            return None
        if marker in _SOF:
            if at + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, at + 5)
            return _checked(width, height)
        at += 2 + length
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return _checked(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return _checked((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return _checked(width, height)
    return None
