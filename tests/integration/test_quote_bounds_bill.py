"""The quote is an upper bound of the bill: generated items of every kind, run against the simulator.

The simulator bills by the providers' published rules (message framing, tool definitions, image
tiles and patches, `n` choices, reasoning tokens inside the cap), implemented apart from the quote;
here every settled receipt must stay within its item's reserve, whatever the item holds.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from batchrouter.cli import main
from batchrouter.core.catalog import load_catalog

pytestmark = pytest.mark.integration

CATALOG = load_catalog()
MODELS = CATALOG.model_names()
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=400)


def png(width: int, height: int) -> str:
    """A data URL of a real (blank) PNG of the given size."""
    raw = b"".join(b"\x00" + b"\x00" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(data).decode()


@st.composite
def image_part(draw: st.DrawFn) -> dict[str, Any]:
    detail = draw(st.sampled_from(["low", "high", "auto", None]))
    if draw(st.booleans()):
        url = png(draw(st.integers(1, 3000)), draw(st.integers(1, 40)))
    else:
        url = f"https://images.example.org/{draw(st.integers(0, 10**6))}.jpg"
    spec: dict[str, Any] = {"url": url}
    if detail:
        spec["detail"] = detail
    return {"type": "image_url", "image_url": spec}


@st.composite
def tool(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(
        st.dictionaries(
            st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
            st.sampled_from(
                [
                    {"type": "string"},
                    {"type": "integer"},
                    {"type": "string", "enum": ["a", "b", "c"]},
                    {"type": "array", "items": {"type": "number"}},
                ]
            ),
            max_size=6,
        )
    )
    return {
        "type": "function",
        "function": {
            "name": draw(st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True)),
            "description": draw(TEXT),
            "parameters": {"type": "object", "properties": props},
        },
    }


@st.composite
def chat_body(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        content: Any = draw(TEXT)
        if draw(st.integers(0, 3)) == 0:
            content = [{"type": "text", "text": draw(TEXT)}, *draw(st.lists(image_part(), min_size=1, max_size=2))]
        message: dict[str, Any] = {"role": "user", "content": content}
        if draw(st.integers(0, 5)) == 0:
            message["name"] = draw(st.from_regex(r"[a-z]{1,10}", fullmatch=True))
        messages.append(message)
        if draw(st.booleans()):
            messages.append({"role": "assistant", "content": draw(TEXT)})
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": draw(TEXT)})
    body: dict[str, Any] = {"model": draw(st.sampled_from(MODELS)), "messages": messages}
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 400))
    if draw(st.integers(0, 3)) == 0:
        body["n"] = draw(st.integers(2, 4))
    if draw(st.integers(0, 3)) == 0:
        body["tools"] = draw(st.lists(tool(), min_size=1, max_size=3))
        body["tool_choice"] = draw(st.sampled_from(["auto", "required", "none"]))
    if draw(st.integers(0, 4)) == 0:
        messages.insert(0, {"role": "system", "content": "Answer in JSON."})
        body["response_format"] = draw(
            st.sampled_from(
                [
                    {"type": "json_object"},
                    {
                        "type": "json_schema",
                        "json_schema": {
                            "name": "out",
                            "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
                        },
                    },
                ]
            )
        )
    if draw(st.integers(0, 4)) == 0:
        body["temperature"] = draw(st.floats(0, 2, allow_nan=False))
    if draw(st.integers(0, 5)) == 0:
        body["prediction"] = {"type": "content", "content": draw(TEXT)}
    if draw(st.integers(0, 5)) == 0:
        body["service_tier"] = draw(st.sampled_from(["auto", "default", "flex", "priority"]))
    if draw(st.integers(0, 5)) == 0:
        body["reasoning_effort"] = draw(st.sampled_from(["low", "medium", "high"]))
    if draw(st.integers(0, 5)) == 0:
        body["stop"] = draw(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4))
    return body


@st.composite
def manifest_lines(draw: st.DrawFn) -> list[str]:
    bodies = draw(st.lists(chat_body(), min_size=1, max_size=15))
    lines = []
    for i, body in enumerate(bodies):
        if draw(st.integers(0, 3)) == 0:  # the same request written for the Responses API
            responses: dict[str, Any] = {
                "model": body["model"],
                "input": [
                    {
                        "role": m["role"],
                        "content": m["content"]
                        if isinstance(m["content"], str)
                        else [
                            {"type": "input_text", "text": p["text"]}
                            if p["type"] == "text"
                            else {"type": "input_image", "image_url": p["image_url"]["url"]}
                            for p in m["content"]
                        ],
                    }
                    for m in body["messages"]
                ],
            }
            if "max_tokens" in body:
                responses["max_output_tokens"] = body["max_tokens"]
            lines.append(
                json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": responses})
            )
        else:
            lines.append(
                json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
            )
    return lines


# Each example is a whole run; the failure message names the items, so shrinking is not worth its time.
@settings(
    max_examples=10,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(lines=manifest_lines())
def test_settled_cost_never_exceeds_the_reserve(
    lines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHROUTER_SIMULATOR__LATENCY_MS", "5")
    path = tmp_path / f"gen-{abs(hash(tuple(lines)))}.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    main(["credits", "grant", "--workspace", "prop", "--usd", "1000", "--key", "prop-grant"])
    capsys.readouterr()
    code = main(["run", str(path), "--workspace", "prop", "--json"])
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert code in (0, 1), summary
    if not summary.get("receipts"):
        assert summary["succeeded"] == 0
        return
    receipts = pl.read_parquet(summary["receipts"])
    ran = receipts.filter(pl.col("status") != "rejected")
    outputs = pl.read_parquet(summary["outputs"])
    failed = outputs.filter(~pl.col("status").is_in(["succeeded", "rejected"]))
    assert failed.height == 0, failed.select("item_id", "error_code", "error_message").to_dicts()
    over = ran.filter(pl.col("cost_usd_micros") > pl.col("reserve_usd_micros"))
    assert over.height == 0, over.select(
        "item_id", "route", "input_tokens", "output_tokens", "cost_usd_micros", "reserve_usd_micros"
    ).to_dicts()
