"""Manifest parsing and per-row validation: Parquet, CSV (RFC 4180) and OpenAI-batch JSONL."""

from __future__ import annotations

import io
import json
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import LimitsConfig
from batchrouter.core.errors import ManifestError
from batchrouter.intake.manifest import Manifest, read_manifest, request_messages

CHAT = "/v1/chat/completions"


# --------------------------------------------------------------------------- helpers


def read(name: str, data: bytes, catalog: Catalog, limits: LimitsConfig | None = None) -> Manifest:
    return read_manifest(name, data, catalog=catalog, limits=limits or LimitsConfig())


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def jsonl_line(custom_id: Any, body: Any, *, method: str = "POST", url: str = CHAT, **extra: Any) -> str:
    obj: dict[str, Any] = {"custom_id": custom_id, "method": method, "url": url, "body": body, **extra}
    return json.dumps(obj, ensure_ascii=False)


def user(text: str, model: str = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **body}


def rows_by_id(manifest: Manifest) -> dict[str, dict[str, Any]]:
    return {r["item_id"]: r for r in manifest.items.to_dicts()}


def sent(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages an item will send (system first, then messages or prompt)."""
    return request_messages(row["system"], row["prompt"], row["messages"])


def rejection(row: dict[str, Any]) -> tuple[int, str | None, str | None]:
    return row["row"], row["reject_field"], row["reject_code"]


# --------------------------------------------------------------------------- Parquet


def test_parquet_messages_list_of_struct_column_becomes_the_chat_messages(catalog: Catalog) -> None:
    frame = pl.DataFrame(
        {
            "item_id": ["a"],
            "model": ["gpt-4o-mini"],
            "messages": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]],
        }
    )
    assert isinstance(frame.schema["messages"], pl.List)
    (row,) = read("m.parquet", parquet_bytes(frame), catalog).items.to_dicts()
    assert row["reject_code"] is None
    assert sent(row) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


def test_parquet_messages_json_string_column_is_parsed_and_keeps_names(catalog: Catalog) -> None:
    messages = [{"role": "user", "name": "bob", "content": "Hi there"}]
    frame = pl.DataFrame({"item_id": ["a"], "model": ["gpt-4o-mini"], "messages": [json.dumps(messages)]})
    assert frame.schema["messages"] == pl.String
    (row,) = read("m.parquet", parquet_bytes(frame), catalog).items.to_dicts()
    assert row["reject_code"] is None
    assert sent(row) == [{"role": "user", "name": "bob", "content": "Hi there"}]


def test_parquet_integer_item_ids_are_read_as_text(catalog: Catalog) -> None:
    frame = pl.DataFrame({"item_id": [7, 8], "model": ["gpt-4o-mini"] * 2, "prompt": ["a", "b"]})
    manifest = read("m.parquet", parquet_bytes(frame), catalog)
    assert manifest.items["item_id"].to_list() == ["7", "8"]
    assert manifest.rejected.height == 0


def test_parquet_prompt_becomes_one_user_message_after_the_system_message(catalog: Catalog) -> None:
    frame = pl.DataFrame(
        {"item_id": ["a"], "model": ["gpt-4o-mini"], "system": ["You are terse."], "prompt": ["Hello"]}
    )
    (row,) = read("m.parquet", parquet_bytes(frame), catalog).items.to_dicts()
    assert sent(row) == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}]


def test_parquet_struct_metadata_column_is_kept_as_a_json_object(catalog: Catalog) -> None:
    frame = pl.DataFrame(
        {"item_id": ["a"], "model": ["gpt-4o-mini"], "prompt": ["Hi"], "metadata": [{"team": "x", "n": 3}]}
    )
    (row,) = read("m.parquet", parquet_bytes(frame), catalog).items.to_dicts()
    assert json.loads(row["metadata"]) == {"team": "x", "n": 3}


def test_parquet_messages_cell_wins_over_prompt_cell_in_the_same_row(catalog: Catalog) -> None:
    frame = pl.DataFrame(
        {
            "item_id": ["a"],
            "model": ["gpt-4o-mini"],
            "prompt": ["from prompt"],
            "messages": [json.dumps([{"role": "user", "content": "from messages"}])],
        }
    )
    (row,) = read("m.parquet", parquet_bytes(frame), catalog).items.to_dicts()
    assert sent(row) == [{"role": "user", "content": "from messages"}]


# --------------------------------------------------------------------------- CSV


def test_csv_quoted_fields_keep_commas_doubled_quotes_and_embedded_newlines(catalog: Catalog) -> None:
    data = b'item_id,model,prompt\n1,gpt-4o-mini,"one, two ""three""\nfour"\n2,gpt-4o-mini,plain\n'
    manifest = read("m.csv", data, catalog)
    rows = rows_by_id(manifest)
    assert rows["1"]["prompt"] == 'one, two "three"\nfour'
    assert rows["2"]["prompt"] == "plain"
    # Rows are data rows, not physical lines: the embedded newline does not shift row 2.
    assert rows["2"]["row"] == 2


def test_csv_crlf_line_ends_do_not_leak_into_the_last_column(catalog: Catalog) -> None:
    data = b"item_id,model,prompt\r\n1,gpt-4o-mini,first\r\n2,gpt-4o-mini,second\r\n"
    manifest = read("m.csv", data, catalog)
    assert manifest.items["prompt"].to_list() == ["first", "second"]
    assert manifest.rejected.height == 0


def test_csv_with_utf8_bom_finds_the_first_column(catalog: Catalog) -> None:
    data = "\ufeffitem_id,model,prompt\n1,gpt-4o-mini,Grüße 😀\n".encode()
    assert data.startswith(b"\xef\xbb\xbf")
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert row["item_id"] == "1"
    assert row["prompt"] == "Grüße 😀"


def test_csv_without_bom_keeps_non_ascii_text_exactly(catalog: Catalog) -> None:
    data = "item_id,model,prompt\nä-1,gpt-4o-mini,日本語のテキスト 😀\n".encode()
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert row["item_id"] == "ä-1"
    assert row["prompt"] == "日本語のテキスト 😀"


def test_csv_reads_every_value_as_text_so_leading_zeros_survive(catalog: Catalog) -> None:
    data = b"item_id,model,prompt,max_tokens\n007,gpt-4o-mini,hi,10\n"
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert row["item_id"] == "007"
    assert row["max_tokens"] == 10


def test_csv_system_column_becomes_the_first_message(catalog: Catalog) -> None:
    data = b"item_id,model,system,prompt\n1,gpt-4o-mini,Be kind.,Hello\n"
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert sent(row) == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]


def test_csv_messages_column_holds_a_json_array(catalog: Catalog) -> None:
    cell = json.dumps([{"role": "user", "content": "a, b"}]).replace('"', '""')
    data = f'item_id,model,messages\n1,gpt-4o-mini,"{cell}"\n'.encode()
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert row["reject_code"] is None
    assert sent(row) == [{"role": "user", "content": "a, b"}]


# --------------------------------------------------------------------------- JSONL


def test_jsonl_openai_batch_line_becomes_an_item(catalog: Catalog) -> None:
    line = jsonl_line("req-1", user("Hello", max_tokens=64, temperature=0.2))
    (row,) = read("b.jsonl", line.encode(), catalog).items.to_dicts()
    assert (row["row"], row["item_id"], row["model"]) == (1, "req-1", "gpt-4o-mini")
    assert sent(row) == [{"role": "user", "content": "Hello"}]
    assert row["max_tokens"] == 64
    assert row["temperature"] == pytest.approx(0.2)
    assert row["reject_code"] is None


def test_jsonl_max_completion_tokens_is_the_output_cap(catalog: Catalog) -> None:
    line = jsonl_line("a", user("Hello", max_completion_tokens=77))
    (row,) = read("b.jsonl", line.encode(), catalog).items.to_dicts()
    assert row["max_tokens"] == 77


def test_jsonl_text_content_parts_are_counted_in_order_and_sent_as_written(catalog: Catalog) -> None:
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": parts}]}
    (row,) = read("b.jsonl", jsonl_line("a", body).encode(), catalog).items.to_dicts()
    assert row["reject_code"] is None
    counted = row["messages"][0]["content"]
    assert 0 <= counted.index("first part") < counted.index("second")
    (message,) = sent(row)
    assert message == {"role": "user", "content": parts}


def test_jsonl_extra_body_fields_are_kept_in_params(catalog: Catalog) -> None:
    body = user("Hi", top_p=0.5, seed=3, response_format={"type": "json_object"})
    (row,) = read("b.jsonl", jsonl_line("a", body).encode(), catalog).items.to_dicts()
    assert json.loads(row["params"]) == {"top_p": 0.5, "seed": 3, "response_format": {"type": "json_object"}}


def test_jsonl_blank_lines_are_ignored_and_rows_are_line_numbers(catalog: Catalog) -> None:
    text = "\n".join(["", jsonl_line("a", user("x")), "   ", "", jsonl_line("b", user("y")), ""])
    manifest = read("b.jsonl", text.encode(), catalog)
    assert manifest.rows == 2
    assert {r["item_id"]: r["row"] for r in manifest.items.to_dicts()} == {"a": 2, "b": 5}


def test_jsonl_with_crlf_line_ends_and_bom_is_read(catalog: Catalog) -> None:
    text = "\ufeff" + jsonl_line("a", user("x")) + "\r\n" + jsonl_line("b", user("y")) + "\r\n"
    manifest = read("b.jsonl", text.encode(), catalog)
    assert manifest.items["item_id"].to_list() == ["a", "b"]
    assert manifest.rejected.height == 0


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_jsonl_line_separator_character_inside_a_string_stays_one_item(catalog: Catalog, separator: str) -> None:
    # JSON allows these raw inside strings (json.dumps(ensure_ascii=False) writes them so); only \n ends a line.
    line = jsonl_line("a", user(f"before{separator}after"))
    assert separator in line
    manifest = read("b.jsonl", (line + "\n" + jsonl_line("b", user("next"))).encode(), catalog)
    assert manifest.rows == 2
    first, second = manifest.items.to_dicts()
    assert first["reject_code"] is None
    assert sent(first) == [{"role": "user", "content": f"before{separator}after"}]
    assert (second["item_id"], second["row"]) == ("b", 2)


def test_jsonl_file_detected_by_content_when_extension_is_unknown(catalog: Catalog) -> None:
    manifest = read("requests", jsonl_line("a", user("x")).encode(), catalog)
    assert manifest.format == "jsonl"
    assert manifest.accepted.height == 1


# --------------------------------------------------------------------------- rejections (JSONL-only codes)


def test_jsonl_line_that_is_not_json_is_rejected_as_invalid_json(catalog: Catalog) -> None:
    text = "\n".join([jsonl_line("a", user("x")), "{not json", "[1, 2]"])
    rows = read("b.jsonl", text.encode(), catalog).items.to_dicts()
    assert [rejection(r) for r in rows] == [(1, None, None), (2, "line", "invalid_json"), (3, "line", "invalid_json")]
    assert "line 2" in rows[1]["reject_reason"]


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("GET", CHAT, user("x"), "url"),
        ("POST", "/v1/completions", {"model": "gpt-4o-mini", "prompt": "x"}, "url"),
        ("POST", CHAT, None, "body"),
        ("POST", CHAT, "not an object", "body"),
    ],
)
def test_jsonl_request_that_is_not_a_chat_completion_post_is_unsupported(
    catalog: Catalog, method: str, url: str, body: Any, field: str
) -> None:
    text = jsonl_line("ok", user("x")) + "\n" + jsonl_line("bad", body, method=method, url=url)
    rows = rows_by_id(read("b.jsonl", text.encode(), catalog))
    assert rejection(rows["bad"]) == (2, field, "unsupported_request")
    assert rows["ok"]["reject_code"] is None


# --------------------------------------------------------------------------- rejections (every format)


def test_empty_item_id_is_rejected_as_missing_item_id(catalog: Catalog) -> None:
    data = b"item_id,model,prompt\n1,gpt-4o-mini,a\n  ,gpt-4o-mini,b\n"
    rows = read("m.csv", data, catalog).items.to_dicts()
    assert rejection(rows[1]) == (2, "item_id", "missing_item_id")


def test_jsonl_line_without_custom_id_is_rejected_as_missing_item_id(catalog: Catalog) -> None:
    line = json.dumps({"method": "POST", "url": CHAT, "body": user("x")})
    (row,) = read("b.jsonl", line.encode(), catalog).items.to_dicts()
    assert rejection(row) == (1, "item_id", "missing_item_id")


def test_item_text_over_max_item_bytes_is_rejected_counting_utf8_bytes(catalog: Catalog) -> None:
    limits = LimitsConfig(max_item_bytes=50)
    # "é" is 2 bytes in UTF-8: 25 of them are exactly 50 bytes (allowed), 26 are 52 bytes (too large),
    # although both are fewer than 50 characters.
    data = f"item_id,model,prompt\nok,gpt-4o-mini,{'é' * 25}\nbig,gpt-4o-mini,{'é' * 26}\n".encode()
    rows = rows_by_id(read("m.csv", data, catalog, limits))
    assert rows["ok"]["reject_code"] is None
    assert rejection(rows["big"]) == (2, "prompt", "item_too_large")
    assert "52" in rows["big"]["reject_reason"]


def test_empty_model_is_rejected_as_missing_model(catalog: Catalog) -> None:
    data = b"item_id,model,prompt\n1,,hi\n"
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert rejection(row) == (1, "model", "missing_model")


def test_model_not_in_catalog_is_rejected_and_the_reason_lists_known_models(catalog: Catalog) -> None:
    data = b"item_id,model,prompt\n1,gpt-9-imaginary,hi\n"
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert rejection(row) == (1, "model", "unknown_model")
    assert "gpt-9-imaginary" in row["reject_reason"]
    for name in catalog.model_names():
        assert name in row["reject_reason"]


@pytest.mark.parametrize(
    "messages",
    [
        {"role": "user", "content": "an object, not an array"},
        [{"role": "robot", "content": "unknown role"}],
        [{"role": "user"}],
        [{"role": "user", "content": 42}],
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}],
        ["just a string"],
        [{"role": "user", "content": "hi", "audio": {"id": "x"}}],
    ],
)
def test_malformed_messages_are_rejected_naming_the_message(catalog: Catalog, messages: Any) -> None:
    body = {"model": "gpt-4o-mini", "messages": messages}
    (row,) = read("b.jsonl", jsonl_line("a", body).encode(), catalog).items.to_dicts()
    line, field, code = rejection(row)
    assert (line, code) == (1, "malformed_messages")
    assert field.startswith("messages"), field


def test_embeddings_lines_are_refused_with_a_reason_that_says_so(catalog: Catalog) -> None:
    text = (
        jsonl_line("ok", user("x"))
        + "\n"
        + jsonl_line("emb", {"model": "text-embedding-3-small", "input": "x"}, url="/v1/embeddings")
    )
    rows = rows_by_id(read("b.jsonl", text.encode(), catalog))
    assert rejection(rows["emb"]) == (2, "url", "unsupported_endpoint")
    assert "embeddings" in rows["emb"]["reject_reason"]
    assert rows["ok"]["reject_code"] is None


def test_messages_cell_that_is_not_json_is_rejected_as_malformed_messages(catalog: Catalog) -> None:
    data = b"item_id,model,messages\n1,gpt-4o-mini,not json at all\n"
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert rejection(row) == (1, "messages", "malformed_messages")


@pytest.mark.parametrize(
    "data",
    [
        b"item_id,model,prompt\n1,gpt-4o-mini,\n",
        b"item_id,model,prompt\n1,gpt-4o-mini,   \n",
        b'item_id,model,system,prompt\n1,gpt-4o-mini,only a system text," "\n',
    ],
)
def test_row_without_prompt_text_is_rejected_as_empty_prompt(catalog: Catalog, data: bytes) -> None:
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert rejection(row) == (1, "prompt", "empty_prompt")


def test_messages_with_only_blank_content_are_rejected_as_empty_prompt(catalog: Catalog) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "  "}]}
    (row,) = read("b.jsonl", jsonl_line("a", body).encode(), catalog).items.to_dicts()
    assert rejection(row) == (1, "prompt", "empty_prompt")


@pytest.mark.parametrize("value", ["ten", "1.5", "0", "-3", "16385"])
def test_max_tokens_not_a_whole_number_in_range_is_rejected(catalog: Catalog, value: str) -> None:
    # gpt-4o-mini's max output tokens is 16384 in the catalog, so 16385 is out of range.
    data = f"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,hi,{value}\n".encode()
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert rejection(row) == (1, "max_tokens", "invalid_max_tokens")


@pytest.mark.parametrize("value", ["1", "16384"])
def test_max_tokens_at_the_bounds_is_accepted(catalog: Catalog, value: str) -> None:
    data = f"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,hi,{value}\n".encode()
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert row["reject_code"] is None
    assert row["max_tokens"] == int(value)


def test_max_tokens_limit_is_the_models_own_max_output(catalog: Catalog) -> None:
    # gpt-4o-mini allows at most 16384 output tokens; gpt-4.1-mini allows 32768.
    data = b"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,hi,16385\n2,gpt-4.1-mini,hi,16385\n"
    rows = rows_by_id(read("m.csv", data, catalog))
    assert rejection(rows["1"]) == (1, "max_tokens", "invalid_max_tokens")
    assert "16384" in rows["1"]["reject_reason"]
    assert rows["2"]["reject_code"] is None


@pytest.mark.parametrize("cap", ["10", 1.5, True, 0, 16385])
def test_jsonl_max_tokens_not_a_whole_number_in_range_is_rejected(catalog: Catalog, cap: Any) -> None:
    (row,) = read("b.jsonl", jsonl_line("a", user("x", max_tokens=cap)).encode(), catalog).items.to_dicts()
    assert rejection(row) == (1, "max_tokens", "invalid_max_tokens")


@pytest.mark.parametrize("value", ["hot", "-0.1", "2.1", "nan", "inf"])
def test_temperature_outside_0_to_2_is_rejected(catalog: Catalog, value: str) -> None:
    data = f"item_id,model,prompt,temperature\n1,gpt-4o-mini,hi,{value}\n".encode()
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert rejection(row) == (1, "temperature", "invalid_temperature")


@pytest.mark.parametrize("value", ["0", "2", "0.7"])
def test_temperature_from_0_to_2_is_accepted(catalog: Catalog, value: str) -> None:
    data = f"item_id,model,prompt,temperature\n1,gpt-4o-mini,hi,{value}\n".encode()
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert row["reject_code"] is None
    assert row["temperature"] == float(value)


def test_jsonl_string_temperature_is_rejected(catalog: Catalog) -> None:
    (row,) = read("b.jsonl", jsonl_line("a", user("x", temperature="1")).encode(), catalog).items.to_dicts()
    assert rejection(row) == (1, "temperature", "invalid_temperature")


@pytest.mark.parametrize("cell", ["not json", "[1, 2]", '"text"', "5"])
def test_metadata_that_is_not_a_json_object_is_rejected(catalog: Catalog, cell: str) -> None:
    quoted = '"' + cell.replace('"', '""') + '"'
    data = f'item_id,model,prompt,metadata\n1,gpt-4o-mini,hi,"{{""k"": 1}}"\n2,gpt-4o-mini,hi,{quoted}\n'.encode()
    rows = rows_by_id(read("m.csv", data, catalog))
    assert rows["1"]["reject_code"] is None
    assert rejection(rows["2"]) == (2, "metadata", "malformed_metadata")


def test_metadata_json_null_is_rejected_even_next_to_valid_objects(catalog: Catalog) -> None:
    data = b'item_id,model,prompt,metadata\n1,gpt-4o-mini,hi,"{""k"": 1}"\n2,gpt-4o-mini,hi,null\n'
    rows = rows_by_id(read("m.csv", data, catalog))
    assert rows["1"]["reject_code"] is None
    assert rejection(rows["2"]) == (2, "metadata", "malformed_metadata")


def test_jsonl_metadata_that_is_not_an_object_is_rejected(catalog: Catalog) -> None:
    line = jsonl_line("a", user("x"), metadata=["a", "list"])
    (row,) = read("b.jsonl", line.encode(), catalog).items.to_dicts()
    assert rejection(row) == (1, "metadata", "malformed_metadata")


def test_repeated_item_id_rejects_the_later_row_and_names_the_earlier_one(catalog: Catalog) -> None:
    data = b"item_id,model,prompt\nx,gpt-4o-mini,first\ny,gpt-4o-mini,other\nx,gpt-4o-mini,again\n"
    rows = read("m.csv", data, catalog).items.to_dicts()
    assert [rejection(r) for r in rows] == [(1, None, None), (2, None, None), (3, "item_id", "duplicate_item_id")]
    assert "row 1" in rows[2]["reject_reason"]


def test_repeated_custom_id_in_jsonl_names_the_earlier_line(catalog: Catalog) -> None:
    text = "\n".join([jsonl_line("x", user("a")), "", jsonl_line("x", user("b"))])
    rows = read("b.jsonl", text.encode(), catalog).items.to_dicts()
    assert rejection(rows[1]) == (3, "item_id", "duplicate_item_id")
    assert "row 1" in rows[1]["reject_reason"]


# --------------------------------------------------------------------------- metadata and unknown columns


def test_unknown_columns_are_carried_into_metadata(catalog: Catalog) -> None:
    data = b"item_id,model,prompt,team,cost_centre\n1,gpt-4o-mini,hi,growth,cc-9\n"
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert json.loads(row["metadata"]) == {"team": "growth", "cost_centre": "cc-9"}


def test_unknown_columns_merge_with_metadata_and_metadata_keys_win(catalog: Catalog) -> None:
    data = b'item_id,model,prompt,metadata,team,region\n1,gpt-4o-mini,hi,"{""team"": ""own"", ""k"": 1}",col,eu\n'
    (row,) = read("m.csv", data, catalog).items.to_dicts()
    assert json.loads(row["metadata"]) == {"team": "own", "k": 1, "region": "eu"}


def test_unknown_columns_merge_with_metadata_objects_without_a_clash(catalog: Catalog) -> None:
    data = b'item_id,model,prompt,metadata,team\n1,gpt-4o-mini,hi,"{""k"": 1}",a\n2,gpt-4o-mini,hi,,b\n'
    rows = rows_by_id(read("m.csv", data, catalog))
    assert json.loads(rows["1"]["metadata"]) == {"k": 1, "team": "a"}
    assert json.loads(rows["2"]["metadata"]) == {"team": "b"}


def test_empty_metadata_object_merged_with_unknown_columns_is_valid_json(catalog: Catalog) -> None:
    data = b'item_id,model,prompt,metadata,team\n1,gpt-4o-mini,hi,{},a\n2,gpt-4o-mini,hi,"{""k"": 1}",b\n'
    rows = rows_by_id(read("m.csv", data, catalog))
    assert json.loads(rows["1"]["metadata"]) == {"team": "a"}
    assert json.loads(rows["2"]["metadata"]) == {"k": 1, "team": "b"}


# --------------------------------------------------------------------------- accepted + rejected == rows

# Each kind of CSV row and the rejection code it must get (None: accepted).
_CSV_KINDS: dict[str, tuple[str, str | None]] = {
    "good": ('{id},gpt-4o-mini,hello,10,0.5,"{{""k"": 1}}"', None),
    "good_plain": ("{id},claude-haiku-4-5,hi there,,,", None),
    "missing_id": (",gpt-4o-mini,hello,,,", "missing_item_id"),
    "missing_model": ("{id},,hello,,,", "missing_model"),
    "unknown_model": ("{id},nope-1,hello,,,", "unknown_model"),
    "empty_prompt": ("{id},gpt-4o-mini,   ,,,", "empty_prompt"),
    "bad_max": ("{id},gpt-4o-mini,hello,lots,,", "invalid_max_tokens"),
    "zero_max": ("{id},gpt-4o-mini,hello,0,,", "invalid_max_tokens"),
    "bad_temp": ("{id},gpt-4o-mini,hello,,3,", "invalid_temperature"),
    "bad_meta": ("{id},gpt-4o-mini,hello,,,[1]", "malformed_metadata"),
    "duplicate": ("first,gpt-4o-mini,hello,,,", "duplicate_item_id"),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(sorted(_CSV_KINDS)), min_size=0, max_size=25))
def test_every_csv_row_is_accepted_or_rejected_with_its_code(kinds: list[str]) -> None:
    catalog = load_catalog()
    lines = ["item_id,model,prompt,max_tokens,temperature,metadata", "first,gpt-4o-mini,the first row,,,"]
    expected: list[str | None] = [None]
    for i, kind in enumerate(kinds):
        template, code = _CSV_KINDS[kind]
        lines.append(template.format(id=f"id-{i}"))
        expected.append(code)
    manifest = read("m.csv", ("\n".join(lines) + "\n").encode(), catalog)
    assert manifest.rows == len(lines) - 1
    assert manifest.accepted.height + manifest.rejected.height == manifest.rows
    assert manifest.items["row"].to_list() == list(range(1, manifest.rows + 1))
    assert manifest.items["reject_code"].to_list() == expected


_JSONL_KINDS: dict[str, tuple[str, str | None]] = {
    "good": (jsonl_line("{id}", user("hello", max_tokens=5)), None),
    "good_parts": (
        jsonl_line(
            "{id}", {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}
        ),
        None,
    ),
    "blank": ("   ", "skip"),
    "not_json": ("{oops", "invalid_json"),
    "array": ("[1]", "invalid_json"),
    "get": (jsonl_line("{id}", user("x"), method="GET"), "unsupported_request"),
    "no_id": (jsonl_line("", user("x")), "missing_item_id"),
    "unknown_model": (jsonl_line("{id}", user("x", model="nope")), "unknown_model"),
    "bad_messages": (jsonl_line("{id}", {"model": "gpt-4o-mini", "messages": "hi"}), "malformed_messages"),
    "bad_temp": (jsonl_line("{id}", user("x", temperature=-1)), "invalid_temperature"),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(sorted(_JSONL_KINDS)), min_size=1, max_size=25))
def test_every_jsonl_line_is_accepted_or_rejected_with_its_code(kinds: list[str]) -> None:
    catalog = load_catalog()
    lines, expected, numbers = [], [], []
    for i, kind in enumerate(kinds):
        template, code = _JSONL_KINDS[kind]
        lines.append(template.replace("{id}", f"id-{i}"))
        if code != "skip":
            expected.append(code)
            numbers.append(i + 1)
    manifest = read("b.jsonl", "\n".join(lines).encode(), catalog)
    assert manifest.accepted.height + manifest.rejected.height == manifest.rows == len(expected)
    assert manifest.items["row"].to_list() == numbers
    assert manifest.items["reject_code"].to_list() == expected


# --------------------------------------------------------------------------- unusable manifests


@pytest.mark.parametrize(
    ("header", "missing"),
    [("item_id,prompt", "model"), ("model,prompt", "item_id"), ("item_id,model,system", "prompt")],
)
def test_missing_required_column_makes_the_manifest_unusable(catalog: Catalog, header: str, missing: str) -> None:
    data = (header + "\n" + ",".join("v" for _ in header.split(",")) + "\n").encode()
    with pytest.raises(ManifestError) as err:
        read("m.csv", data, catalog)
    assert missing in err.value.problem
    assert "m.csv" in str(err.value)


def test_unreadable_parquet_bytes_make_the_manifest_unusable(catalog: Catalog) -> None:
    with pytest.raises(ManifestError, match="Parquet"):
        read("m.parquet", b"PAR1 this is not really parquet", catalog)


def test_non_utf8_csv_makes_the_manifest_unusable(catalog: Catalog) -> None:
    data = "item_id,model,prompt\n1,gpt-4o-mini,café\n".encode("latin-1")
    with pytest.raises(ManifestError, match="UTF-8") as err:
        read("m.csv", data, catalog)
    assert "line 2" in err.value.problem


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_more_rows_than_max_rows_makes_the_manifest_unusable(catalog: Catalog, fmt: str) -> None:
    frame = pl.DataFrame({"item_id": ["a", "b", "c"], "model": ["gpt-4o-mini"] * 3, "prompt": ["x", "y", "z"]})
    if fmt == "csv":
        data = frame.write_csv().encode()
    elif fmt == "parquet":
        data = parquet_bytes(frame)
    else:
        data = "\n".join(
            jsonl_line(i, user(p)) for i, p in zip(frame["item_id"], frame["prompt"], strict=True)
        ).encode()
    read(f"m.{fmt}", data, catalog, LimitsConfig(max_rows=3))  # exactly at the limit is fine
    with pytest.raises(ManifestError, match="over the limit of 2"):
        read(f"m.{fmt}", data, catalog, LimitsConfig(max_rows=2))


def test_file_over_max_manifest_bytes_makes_the_manifest_unusable(catalog: Catalog) -> None:
    data = b"item_id,model,prompt\n1,gpt-4o-mini,hi\n"
    read("m.csv", data, catalog, LimitsConfig(max_manifest_bytes=len(data)))
    with pytest.raises(ManifestError, match="over the limit"):
        read("m.csv", data, catalog, LimitsConfig(max_manifest_bytes=len(data) - 1))


def test_unsupported_file_type_makes_the_manifest_unusable(catalog: Catalog) -> None:
    with pytest.raises(ManifestError, match="unsupported file type"):
        read("m.xlsx", b"PK\x03\x04 zip bytes", catalog)


def test_manifest_records_the_sha256_of_its_bytes(catalog: Catalog) -> None:
    import hashlib

    data = b"item_id,model,prompt\n1,gpt-4o-mini,hi\n"
    assert read("m.csv", data, catalog).sha256 == hashlib.sha256(data).hexdigest()


def test_parquet_file_detected_by_magic_bytes_when_the_name_has_no_extension(catalog: Catalog) -> None:
    frame = pl.DataFrame({"item_id": ["a"], "model": ["gpt-4o-mini"], "prompt": ["hi"]})
    manifest = read("upload", parquet_bytes(frame), catalog)
    assert manifest.format == "parquet"
    assert manifest.accepted.height == 1
