"""What images cost under the providers' published rules, and the sizes the simulator sees.

- OpenAI tile rule (`detail: low` is the base; else scale into 2048x2048, then the shortest side
  down to 768, and add the tile price per 512-px tile), per model: gpt-4o / 4.1 / 4.5 85 + 170,
  gpt-4o-mini 2833 + 5667, o1 / o3 75 + 150, gpt-5 70 + 140; no images on gpt-3.5, gpt-4, o1-mini
  and o3-mini.
- OpenAI patch rule: 32-px patches, scaled down to at most 1536, times the model's multiplier,
  rounded: gpt-4.1-mini and gpt-5-mini 1.62, gpt-4.1-nano and gpt-5-nano 2.46, o4-mini 1.72.
- Anthropic area rule: w x h / 750 after scaling the long edge to 1568, at most 1600 tokens.
- Sizes: a data URL's (or base64 block's) PNG, JPEG, GIF or WebP header; an http URL the simulator
  cannot fetch gets a size drawn from its digest, 256 to 4096 px a side.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import struct
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from batchrouter.simulator.models import bare_model
from batchrouter.simulator.rejection import WireRejection

HTTP_IMAGE_SIDES = (256, 4096)
ANTHROPIC_IMAGE_LONG_EDGE = 1568
ANTHROPIC_IMAGE_MAX_TOKENS = 1600


@dataclass(frozen=True)
class VisionRule:
    kind: str  # "tile" or "patch"
    base: int = 0
    tile: int = 0
    multiplier: Decimal = Decimal(1)


_PATCH = (
    (r"gpt-4\.1-mini", "1.62"),
    (r"gpt-4\.1-nano", "2.46"),
    (r"gpt-5(\.\d+)?-mini", "1.62"),
    (r"gpt-5(\.\d+)?-nano", "2.46"),
    (r"o4-mini", "1.72"),
    (r"codex-mini", "1.72"),
)
_TILE = (
    (r"gpt-4o-mini", 2833, 5667),
    (r"gpt-5", 70, 140),
    (r"(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-4-turbo|gpt-4-vision)", 85, 170),
    (r"o1-mini|o3-mini", 0, 0),  # no vision
    (r"o1|o3", 75, 150),
    (r"computer-use", 65, 129),
    (r"gpt-3\.5|gpt-4", 0, 0),  # no vision
)


def vision_rule(model: str) -> VisionRule | None:
    """How `model` bills image parts, or None when it takes no images."""
    name = bare_model(model)
    for pattern, multiplier in _PATCH:
        if re.match(pattern, name):
            return VisionRule("patch", multiplier=Decimal(multiplier))
    for pattern, base, tile in _TILE:
        if re.match(pattern, name):
            return VisionRule("tile", base, tile) if tile else None
    return VisionRule("tile", 85, 170)  # other vendors' models behind OpenRouter: the common rule


# -- image sizes -----------------------------------------------------------------------------------------

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_bytes_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF or WebP header, or None when unreadable."""
    try:
        if raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR":
            w, h = struct.unpack(">II", raw[16:24])
        elif raw[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", raw[6:10])
        elif raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
            chunk = raw[12:16]
            if chunk == b"VP8 " and raw[23:26] == b"\x9d\x01\x2a":
                w, h = (v & 0x3FFF for v in struct.unpack("<HH", raw[26:30]))
            elif chunk == b"VP8L" and raw[20] == 0x2F:
                bits = struct.unpack("<I", raw[21:25])[0]
                w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            elif chunk == b"VP8X":
                w, h = 1 + int.from_bytes(raw[24:27], "little"), 1 + int.from_bytes(raw[27:30], "little")
            else:
                return None
        elif raw[:2] == b"\xff\xd8":
            found = _jpeg_size(raw)
            if found is None:
                return None
            w, h = found
        else:
            return None
    except (struct.error, IndexError):
        return None
    return (int(w), int(h)) if w > 0 and h > 0 else None


def _jpeg_size(raw: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(raw):
        if raw[i] != 0xFF:
            i += 1
            continue
        marker = raw[i + 1]
        if marker == 0xFF:
            i += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
        elif marker in (0xD9, 0xDA):
            return None  # image data before any frame header
        elif marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", raw[i + 5 : i + 9])
            return w, h
        else:
            i += 2 + struct.unpack(">H", raw[i + 2 : i + 4])[0]
    return None


def image_size(url: str, *, where: str) -> tuple[int, int]:
    """The size the provider sees: from a data URL's header, or drawn from an http URL's digest.

    Raises WireRejection for a data URL that is not a readable PNG, JPEG, GIF or WebP image.
    """
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        raw = b""
        if ";base64" in header:
            try:
                raw = base64.b64decode(data, validate=False)
            except (binascii.Error, ValueError):
                raw = b""
        found = image_bytes_size(raw)
        if found is None:
            raise WireRejection(
                f"Invalid image in {where}: the data URL is not a readable PNG, JPEG, GIF or WebP image.",
                param=where,
                kind="invalid_request_error",
            )
        return found
    if not url.startswith(("http://", "https://")):
        raise WireRejection(f"Invalid image URL in {where}: expected an http(s) URL or a base64 data URL.", param=where)
    return digest_size(url)


def digest_size(key: str) -> tuple[int, int]:
    """A deterministic, realistic size for an image the simulator cannot fetch."""
    d = hashlib.sha256(key.encode()).digest()
    lo, hi = HTTP_IMAGE_SIDES
    return lo + int.from_bytes(d[:2], "big") % (hi - lo + 1), lo + int.from_bytes(d[2:4], "big") % (hi - lo + 1)


def openai_image_tokens(rule: VisionRule, width: int, height: int, detail: str | None) -> int:
    if rule.kind == "patch":
        return _patch_tokens(width, height, rule.multiplier)
    if detail == "low":
        return rule.base
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > 2048:
        scale = Fraction(2048) / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = Fraction(768) / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return rule.base + rule.tile * tiles


def _patch_tokens(width: int, height: int, multiplier: Decimal) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1536:
        shrink = math.sqrt(32 * 32 * 1536 / (width * height))
        w, h = width * shrink / 32, height * shrink / 32
        shrink *= min(math.floor(w) / w, math.floor(h) / h)
        patches = min(1536, math.ceil(math.floor(width * shrink) / 32) * math.ceil(math.floor(height * shrink) / 32))
    return int((patches * multiplier).to_integral_value(rounding="ROUND_HALF_UP"))


def anthropic_image_tokens(width: int, height: int) -> int:
    long_edge = max(width, height)
    w, h = Fraction(width), Fraction(height)
    if long_edge > ANTHROPIC_IMAGE_LONG_EDGE:
        w, h = w * ANTHROPIC_IMAGE_LONG_EDGE / long_edge, h * ANTHROPIC_IMAGE_LONG_EDGE / long_edge
    return min(ANTHROPIC_IMAGE_MAX_TOKENS, math.ceil(w * h / 750))


def anthropic_image_size(source: Any, where: str) -> tuple[int, int]:
    """The size of an Anthropic image block's `source` (base64 data, a URL or a file id)."""
    if not isinstance(source, dict):
        raise WireRejection(f"{where}.source: Field required", param=where)
    kind = source.get("type")
    if kind == "base64":
        try:
            raw = base64.b64decode(str(source.get("data", "")), validate=False)
        except (binascii.Error, ValueError):
            raw = b""
        found = image_bytes_size(raw)
        if found is None:
            raise WireRejection(f"{where}.source.data: Could not process image", param=where)
        return found
    if kind == "url" and isinstance(source.get("url"), str):
        return image_size(source["url"], where=where)
    if kind == "file" and isinstance(source.get("file_id"), str):
        return digest_size("file:" + source["file_id"])
    raise WireRejection(f"{where}.source.type: expected 'base64', 'url' or 'file'", param=where)
