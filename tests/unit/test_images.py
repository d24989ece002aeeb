"""Image token costs by the published rules, and image sizes read from data-URL headers."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrouter.core.catalog import CatalogEntry, load_catalog
from batchrouter.intake.images import image_size, image_tokens

CATALOG = load_catalog()
GPT_4O = CATALOG.entry("openai:gpt-4o")
GPT_4O_MINI = CATALOG.entry("openai:gpt-4o-mini")
GPT_41_MINI = CATALOG.entry("openai:gpt-4.1-mini")
SONNET_45 = CATALOG.entry("anthropic:claude-sonnet-4-5-20250929")
SELF_LLAMA = CATALOG.entry("selfhosted:meta-llama/Llama-3.1-8B-Instruct")
REALFILES = Path(__file__).resolve().parents[3] / "shared" / "realfiles"


def data_url(raw: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(raw).decode()}"


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg(width: int, height: int, *, sof: int = 0xC0, before: bytes = b"") -> bytes:
    jfif = segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0")
    dqt = segment(0xDB, b"\0" + bytes(range(64)))
    frame = segment(sof, struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01")
    scan = segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00") + b"\x12\x34"
    return b"\xff\xd8" + jfif + before + dqt + frame + scan + b"\xff\xd9"


def exif(size: int) -> bytes:
    """An APP1 EXIF segment padded to about `size` bytes (the segment limit is 64 KiB)."""
    return segment(0xE1, b"Exif\0\0" + b"MM\0*" + b"\0" * (size - 10))


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b";"


def riff(chunk: bytes, body: bytes) -> bytes:
    payload = b"WEBP" + chunk + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def webp_lossy(width: int, height: int) -> bytes:
    return riff(b"VP8 ", b"\x30\x01\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\0" * 10)


def webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    return riff(b"VP8L", b"\x2f" + struct.pack("<I", bits) + b"\0" * 8)


def webp_extended(width: int, height: int) -> bytes:
    body = b"\x10\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return riff(b"VP8X", body)


# --------------------------------------------------------------------------------------- image_size


@pytest.mark.parametrize(
    ("raw", "media"),
    [
        (png(640, 480), "image/png"),
        (jpeg(640, 480), "image/jpeg"),
        (jpeg(640, 480, sof=0xC2), "image/jpeg"),  # progressive
        (jpeg(640, 480, before=exif(2000)), "image/jpeg"),
        (jpeg(640, 480, before=b"\xff\xff" + exif(300)), "image/jpeg"),  # fill bytes before a marker
        (gif(640, 480), "image/gif"),
        (webp_lossy(640, 480), "image/webp"),
        (webp_lossless(640, 480), "image/webp"),
        (webp_extended(640, 480), "image/webp"),
    ],
)
def test_image_size_reads_width_and_height_from_the_header(raw: bytes, media: str) -> None:
    assert image_size(data_url(raw, media)) == (640, 480)


def test_image_size_finds_a_jpeg_frame_behind_more_exif_than_the_first_read() -> None:
    # Three full 64 KiB APP segments put the frame header past the prefix decoded first.
    raw = jpeg(1920, 1080, before=exif(65000) + exif(65000) + exif(65000) + exif(65000))
    assert len(raw) > 4 * 65536 * 3 // 4
    assert image_size(data_url(raw, "image/jpeg")) == (1920, 1080)


def test_image_size_trusts_the_bytes_not_the_declared_media_type() -> None:
    assert image_size(data_url(png(33, 17), "image/jpeg")) == (33, 17)


def test_image_size_accepts_line_breaks_inside_the_base64_text() -> None:
    text = base64.encodebytes(gif(12, 34)).decode()
    assert "\n" in text
    assert image_size(f"data:image/gif;base64,{text}") == (12, 34)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://example.com/a.jpg",
        "data:image/png,not-base64",
        "data:image/png;base64,!!!!",
        data_url(b"BM" + b"\0" * 40, "image/bmp"),
        data_url(png(0, 10)),
        data_url(png(640, 480)[:20]),  # truncated before the size
        data_url(b"\xff\xd8" + segment(0xDA, b"\0" * 8) + b"\xff\xd9", "image/jpeg"),  # scan before any frame
        data_url(b"\xff\xd8\x00\x00\x00\x00", "image/jpeg"),
        data_url(riff(b"VP8 ", b"\0" * 20), "image/webp"),  # no VP8 start code
        "",
    ],
)
def test_image_size_is_none_for_urls_it_cannot_read(url: str) -> None:
    assert image_size(url) is None


@pytest.mark.skipif(not (REALFILES / "clip_batch_input.jsonl").is_file(), reason="shared realfiles not present")
def test_the_clip_realfile_jpeg_is_256_by_256() -> None:
    line = json.loads((REALFILES / "clip_batch_input.jsonl").read_text().splitlines()[0])
    urls = [
        part["image_url"]["url"]
        for message in line["body"]["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]
    assert [image_size(url) for url in urls] == [(256, 256)]


# ------------------------------------------------------------------------------------- image_tokens


@pytest.mark.parametrize(
    ("width", "height", "detail", "tokens"),
    [
        (1024, 1024, "high", 85 + 4 * 170),  # OpenAI's example: 768 x 768 -> 4 tiles = 765
        (2048, 4096, "high", 85 + 6 * 170),  # -> 1024 x 2048 -> 768 x 1536: 2 x 3 tiles = 1105
        (4096, 8192, "auto", 85 + 6 * 170),
        (128, 64, "high", 85 + 170),  # small images are not scaled up
        (4096, 8192, "low", 85),
    ],
)
def test_tile_rule_scales_then_counts_512_px_tiles(width: int, height: int, detail: str, tokens: int) -> None:
    assert image_tokens(GPT_4O, detail=detail, width=width, height=height) == tokens


def test_tile_rule_uses_each_models_figures() -> None:
    assert image_tokens(GPT_4O_MINI, detail="high", width=1024, height=1024) == 2833 + 4 * 5667
    assert image_tokens(GPT_4O_MINI, detail="low", width=1024, height=1024) == 2833


def test_tile_rule_worst_case_when_the_size_is_unknown_is_eight_tiles() -> None:
    assert image_tokens(GPT_4O, detail="high", width=None, height=None) == 85 + 8 * 170
    assert image_tokens(GPT_4O, detail=None, width=None, height=None) == 85 + 8 * 170
    assert image_tokens(GPT_4O, detail="low", width=None, height=None) == 85
    # A 2048 x 768 image reaches the bound.
    assert image_tokens(GPT_4O, detail="high", width=2048, height=768) == 85 + 8 * 170


def test_patch_rule_counts_32_px_patches_times_the_multiplier() -> None:
    # 1024 x 1024 = 32 x 32 patches = 1024; x 1.62 = 1658.88 -> 1659.
    assert image_tokens(GPT_41_MINI, detail="high", width=1024, height=1024) == 1659
    # 100 x 50 -> 4 x 2 patches = 8; x 1.62 = 12.96 -> 13. detail does not lower it.
    assert image_tokens(GPT_41_MINI, detail="low", width=100, height=50) == 13


def test_patch_rule_caps_large_images_at_the_patch_budget() -> None:
    # OpenAI's example: 1800 x 2400 is scaled to 1452 patches; the bound is the 1536 budget.
    tokens = image_tokens(GPT_41_MINI, detail="high", width=1800, height=2400)
    assert tokens == 2489 >= 1452 * Decimal("1.62")
    assert image_tokens(GPT_41_MINI, detail="high", width=None, height=None) == 2489


def test_area_rule_is_width_times_height_over_750_capped() -> None:
    assert image_tokens(SONNET_45, detail=None, width=1092, height=1092) == 1590  # Anthropic's table: ~1590
    assert image_tokens(SONNET_45, detail=None, width=200, height=200) == 54
    assert image_tokens(SONNET_45, detail=None, width=8000, height=8000) == 1700
    assert image_tokens(SONNET_45, detail=None, width=None, height=400) == 1700


def test_a_route_without_images_costs_nothing_here() -> None:
    assert image_tokens(SELF_LLAMA, detail="high", width=512, height=512) == 0


def _routes_with(rule: str) -> list[CatalogEntry]:
    return [e for e in CATALOG.entries if e.image_rule == rule]


@given(
    width=st.integers(min_value=1, max_value=20_000),
    height=st.integers(min_value=1, max_value=20_000),
    detail=st.sampled_from([None, "auto", "low", "high", "original"]),
)
def test_unknown_size_is_the_worst_case_for_every_route_and_detail(width: int, height: int, detail: str | None) -> None:
    for entry in CATALOG.entries:
        known = image_tokens(entry, detail=detail, width=width, height=height)
        assert 0 <= known <= image_tokens(entry, detail=detail, width=None, height=None)


def test_every_rule_is_used_by_some_route_and_its_figures_are_set() -> None:
    assert all(_routes_with(rule) for rule in ("tile", "patch", "area", "none"))
    assert all(e.image_base_tokens > 0 and e.image_tile_tokens > 0 for e in _routes_with("tile"))
    assert all(e.image_patch_multiplier > 0 and e.image_max_patches > 0 for e in _routes_with("patch"))
    assert all(e.image_max_tokens > 0 for e in _routes_with("area"))


def test_patch_multiplier_rounds_the_product_up() -> None:
    entry = replace(GPT_41_MINI, image_patch_multiplier=Decimal("1.001"))
    assert image_tokens(entry, detail=None, width=32, height=32) == 2
