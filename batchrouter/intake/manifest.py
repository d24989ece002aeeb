"""Manifests: read Parquet, CSV or OpenAI-batch JSONL into one item table, and reject bad rows.

A manifest that cannot be used as a whole (unreadable, a required column missing, over a limit)
raises `ManifestError`. Anything wrong with a single row becomes a rejection on that row, with the
field and a reason; no row is ever dropped, so accepted + rejected = rows.

The item table (`ITEM_SCHEMA`) is what every later stage reads:
  row            1-based data row (CSV, Parquet) or line number (JSONL)
  item_id        the customer's id (JSONL: `custom_id`)
  model          catalog model name
  system         optional system text, sent first
  prompt         the user message (null when `messages` is given)
  messages       list of {role, content, name} (null when `prompt` is given); see `request_messages`
  max_tokens     the customer's output cap, if given
  temperature    if given
  metadata       JSON object: the `metadata` column merged with every unknown column
  params         JSON object of the body fields passed on to the provider (`request_fields`)
  endpoint       `chat` or `responses` (the API the request was written for; both run as chat)
  n              choices requested (null: 1); the output cap counts once per choice
  billed_text    text billed as input beyond message text (tool definitions, schemas, tool calls)
  predicted_text a `prediction`'s content: its rejected tokens are billed as output beyond the cap
  images         the item's image parts: {detail, width, height} (size null when unknown)
  retired_from   the model name as written when it is retired and `model` is its successor
                 (the quote refuses such items unless the policy says `retired_models = "successor"`)
  features       fields not every provider supports (`request_fields.WIRE_FEATURES`); routing honours them
  reject_code, reject_field, reject_reason   the first problem found, or null
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
import pyarrow.parquet as pq

from batchrouter.core.catalog import Catalog
from batchrouter.core.config import LimitsConfig
from batchrouter.core.errors import ManifestError
from batchrouter.intake import request_fields
from batchrouter.intake.request_fields import Extras, FieldError

ManifestFormat = Literal["parquet", "csv", "jsonl"]

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String, "name": pl.String, "raw": pl.String})
IMAGE = pl.Struct({"detail": pl.String, "width": pl.Int64, "height": pl.Int64})
ROLES = request_fields.ROLES
KNOWN_COLUMNS = ("item_id", "model", "prompt", "messages", "system", "max_tokens", "temperature", "metadata")
CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
RESPONSES_URLS = ("/v1/responses", "/responses")
EMBEDDINGS_URLS = ("/v1/embeddings", "/embeddings")

ITEM_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),
    "item_id": pl.String(),
    "model": pl.String(),
    "system": pl.String(),
    "prompt": pl.String(),
    "messages": pl.List(MESSAGE),
    "max_tokens": pl.Int64(),
    "temperature": pl.Float64(),
    "metadata": pl.String(),
    "params": pl.String(),
    "endpoint": pl.String(),
    "n": pl.Int64(),
    "billed_text": pl.String(),
    "predicted_text": pl.String(),
    "images": pl.List(IMAGE),
    "features": pl.List(pl.String()),
    "retired_from": pl.String(),
    "reject_code": pl.String(),
    "reject_field": pl.String(),
    "reject_reason": pl.String(),
}

# Reasons, by code; the message of each rejection adds the specifics of the row.
REJECTION_CODES = {
    "invalid_json": "the line is not valid JSON",
    "unsupported_request": "the JSONL request is not a POST to /v1/chat/completions or /v1/responses",
    "unsupported_endpoint": "the endpoint is recognised but BatchRouter does not run it (embeddings)",
    "unsupported_field": "a body field cannot be priced, or no allowed route for the model accepts it",
    "retired_model": "the model is retired by its provider; the reason names its successor",
    "invalid_n": "n is not a whole number from 1 to 128",
    "missing_item_id": "item_id is empty",
    "item_too_large": "the item's text is over the per-item byte limit",
    "missing_model": "model is empty",
    "unknown_model": "the model is not in the catalog",
    "empty_prompt": "there is no prompt text",
    "malformed_messages": "messages is not a JSON array of {role, content}",
    "invalid_max_tokens": "max_tokens is not an integer within the model's output limit",
    "invalid_temperature": "temperature is not a number in 0..2",
    "malformed_metadata": "metadata is not a JSON object",
    "duplicate_item_id": "item_id repeats an earlier row",
    "context_too_long": "the prompt does not fit the context window of any allowed route",
    "no_route": "the workspace's route policy allows no route for the model",
    "restricted_content": "the item holds a payment card number or a credential",
}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: its item table and where it came from."""

    source: str
    format: ManifestFormat
    sha256: str
    items: pl.DataFrame

    @property
    def rows(self) -> int:
        return self.items.height

    @property
    def accepted(self) -> pl.DataFrame:
        return self.items.filter(pl.col("reject_code").is_null())

    @property
    def rejected(self) -> pl.DataFrame:
        return self.items.filter(pl.col("reject_code").is_not_null())


def detect_format(source: str, data: bytes) -> ManifestFormat:
    """By extension first, then by content."""
    lower = source.lower()
    for suffix, fmt in ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl")):
        if lower.endswith(suffix):
            return fmt  # type: ignore[return-value]
    if data[:4] == b"PAR1":
        return "parquet"
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return "jsonl"
    if lower.endswith(".txt") or "." not in lower.rsplit("/", 1)[-1]:
        return "csv"
    raise ManifestError(source, "unsupported file type", "use .parquet, .csv or .jsonl (OpenAI batch input format)")


def read_manifest(source: str, data: bytes, *, catalog: Catalog, limits: LimitsConfig) -> Manifest:
    """Parse and validate a manifest's bytes; `source` names it in every message.

    Bounded twice: by the file's size, and by its decoded size (a gzip'd file as it inflates, a
    Parquet file by its metadata before any column is read and by its text once read), so a small
    file cannot expand into gigabytes.
    """
    if len(data) > limits.max_manifest_bytes:
        raise ManifestError(
            source,
            f"the file is {len(data):,} bytes, over the limit of {limits.max_manifest_bytes:,}",
            "split it into several manifests",
        )
    sha256 = hashlib.sha256(data).hexdigest()
    name = source
    if source.lower().endswith(".gz"):
        data, name = _gunzip(source, data, limits), source[:-3]
    fmt = detect_format(name, data)
    if fmt == "jsonl":
        raw = _read_jsonl(source, data, limits)
    else:
        table = _read_parquet(source, data, limits) if fmt == "parquet" else _read_csv(source, data)
        _check_rows(source, table.height, limits)
        _check_decoded(source, table, limits)
        raw = _normalise_tabular(source, table)
    items = _validate(raw, catalog, limits)
    return Manifest(source=source, format=fmt, sha256=sha256, items=items)


def _too_big(source: str, what: str, size: int, limit: int, key: str = "limits.max_decoded_bytes") -> ManifestError:
    return ManifestError(
        source, f"{what} is {size:,} bytes decoded, over the limit of {limit:,} ({key})",
        "split it into several manifests",
    )  # fmt: skip


_INFLATE_CHUNK = 16 * 1024**2


def _gunzip(source: str, data: bytes, limits: LimitsConfig) -> bytes:
    """Inflate a .gz manifest. Its size is measured first, chunk by chunk and keeping nothing, so a
    gzip bomb is refused at the limit having cost only time, never memory."""
    limit = min(limits.max_decoded_bytes, limits.max_manifest_bytes)
    try:
        inflater, size, pending = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), 0, data
        while pending and not inflater.eof:
            size += len(inflater.decompress(pending, _INFLATE_CHUNK))
            pending = inflater.unconsumed_tail
            if size > limit:
                key = "limits.max_decoded_bytes, max_manifest_bytes"
                raise _too_big(source, "the inflated file", size, limit, key)
        return zlib.decompress(data, wbits=16 + zlib.MAX_WBITS)
    except zlib.error as exc:
        fix = "compress it with gzip, or drop the .gz suffix"
        raise ManifestError(source, f"not a gzip file ({exc})", fix) from exc


def _text_bytes(expr: pl.Expr, dtype: pl.DataType) -> list[pl.Expr]:
    """Expressions summing the bytes of text (and binary) held in a column, nested or not, without copying it."""
    # Lengths are UInt32: summed as Int64, or a 100 GB column would wrap round to a small number.
    if dtype == pl.String:
        return [expr.str.len_bytes().cast(pl.Int64).sum()]
    if isinstance(dtype, pl.Categorical | pl.Enum):
        return [expr.cat.len_bytes().cast(pl.Int64).sum()]
    if dtype == pl.Binary:
        return [expr.bin.size().cast(pl.Int64).sum()]
    if isinstance(dtype, pl.List | pl.Array):
        return _text_bytes(expr.explode(), dtype.inner)  # type: ignore[arg-type]
    if isinstance(dtype, pl.Struct):
        return [e for f in dtype.fields for e in _text_bytes(expr.struct.field(f.name), f.dtype)]  # type: ignore[arg-type]
    return []


def _check_decoded(source: str, frame: pl.DataFrame, limits: LimitsConfig) -> None:
    """Refuse a table whose text, decoded, is over the limit (e.g. one huge string repeated by a dictionary)."""
    exprs = [e for name, dtype in frame.schema.items() for e in _text_bytes(pl.col(name), dtype)]
    if not exprs:
        return
    total = sum(int(v or 0) for v in frame.select(exprs).row(0))
    if total > limits.max_decoded_bytes:
        raise _too_big(source, "its text", total, limits.max_decoded_bytes)


def _check_headers(source: str, names: list[str]) -> None:
    """Column names must differ ignoring case and surrounding spaces (`Prompt` and `prompt` would be ambiguous)."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.strip().casefold()
        if key in seen:
            raise ManifestError(
                source,
                f"columns {seen[key]!r} and {name!r} collide (names are compared ignoring case and spaces)",
                "give every column a distinct name",
            )
        seen[key] = name


def _check_rows(source: str, rows: int, limits: LimitsConfig) -> None:
    if rows > limits.max_rows:
        raise ManifestError(
            source,
            f"it has {rows:,} rows, over the limit of {limits.max_rows:,} per manifest",
            "split it into several manifests",
        )


def _read_parquet(source: str, data: bytes, limits: LimitsConfig) -> pl.DataFrame:
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        meta = parquet.metadata
        # From the footer alone, before any column is read: rows, and the columns' uncompressed size.
        _check_rows(source, meta.num_rows, limits)
        uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if uncompressed > limits.max_decoded_bytes:
            raise _too_big(source, "its column data", uncompressed, limits.max_decoded_bytes)
        _check_headers(source, list(parquet.schema_arrow.names))
        return pl.read_parquet(io.BytesIO(data))
    except ManifestError:
        raise
    except BaseException as exc:  # polars and pyarrow errors, and a panic (a BaseException) on odd files
        if isinstance(exc, KeyboardInterrupt | SystemExit | MemoryError):
            raise
        raise ManifestError(
            source, f"not a readable Parquet file ({_first_line(exc)})", "re-export it as Parquet"
        ) from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
         (b"\xfe\xff", "UTF-16"))  # fmt: skip


def _decode_text(source: str, data: bytes, kind: str) -> str:
    """UTF-8 text (a UTF-8 BOM is dropped); other encodings are refused naming the encoding and the line."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            raise ManifestError(source, f"the file is {encoding} text, not UTF-8", f"save the {kind} as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            source,
            f"not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at line {line}; Latin-1 or UTF-16 perhaps)",
            f"save the {kind} as UTF-8",
        ) from exc


def _read_csv(source: str, data: bytes) -> pl.DataFrame:
    text = _decode_text(source, data, "CSV")
    try:
        header = next(csv.reader(io.StringIO(text[:1_048_576])), [])
    except csv.Error as exc:
        raise ManifestError(source, f"the header line is not readable CSV ({exc})", "check its quoting") from exc
    # Polars would rename a repeated column quietly (prompt_duplicated_0): refuse it instead.
    _check_headers(source, header)
    try:
        # Every column as text: types are checked per row below, so one bad value rejects one row.
        frame = pl.read_csv(io.BytesIO(data), infer_schema=False, raise_if_empty=False)
    except Exception as exc:
        raise ManifestError(
            source,
            f"not a readable CSV file ({exc})",
            "check quoting: fields with commas, quotes or newlines must be in double quotes (RFC 4180)",
        ) from exc
    _check_headers(source, frame.columns)
    return frame.rename({c: c.strip() for c in frame.columns})


def _require_columns(source: str, columns: list[str]) -> None:
    missing = [c for c in ("item_id", "model") if c not in columns]
    if "prompt" not in columns and "messages" not in columns:
        missing.append("prompt (or messages)")
    if missing:
        raise ManifestError(
            source,
            f"missing required column(s): {', '.join(missing)} (found: {', '.join(columns) or 'none'})",
            "add them: item_id (unique), model (a catalog name), and prompt or messages",
        )


TEXT_COLUMNS = ("item_id", "model", "prompt", "system")


def _check_column_types(source: str, frame: pl.DataFrame) -> None:
    """Text columns must hold scalars; lists, maps and structs there are a whole-file mistake."""
    for name in (*TEXT_COLUMNS, "max_tokens", "temperature"):
        dtype = frame.schema.get(name)
        if dtype is not None and dtype.is_nested():
            raise ManifestError(
                source, f"column {name!r} holds {dtype} values, not text or numbers",
                f"write {name} as one plain value per row",
            )  # fmt: skip
    dtype = frame.schema.get("metadata")
    if dtype is not None and isinstance(dtype, pl.List | pl.Array):
        raise ManifestError(source, f"column 'metadata' holds {dtype} values, not objects",
                            "write metadata as a JSON object (or a struct) per row")  # fmt: skip
    for name, dtype in frame.schema.items():
        if name not in KNOWN_COLUMNS and dtype.is_nested() and _holds_binary(dtype):
            raise ManifestError(source, f"column {name!r} nests binary values ({dtype}), which metadata cannot keep",
                                "store them as text (e.g. base64) or drop the column")  # fmt: skip


def _holds_binary(dtype: pl.DataType) -> bool:
    if dtype == pl.Binary:
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _holds_binary(dtype.inner)  # type: ignore[arg-type]
    if isinstance(dtype, pl.Struct):
        return any(_holds_binary(f.dtype) for f in dtype.fields)  # type: ignore[arg-type]
    return False


def _binary_as_text(col: pl.Series) -> pl.Series:
    """A binary column as text, null where a value is not UTF-8 (that row is then rejected, not the file)."""

    def decode(value: bytes | None) -> str | None:
        try:
            return None if value is None else value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    # A rare column type (text belongs in string columns), so a plain loop is fine.
    return pl.Series(col.name, [decode(v) for v in col.to_list()], dtype=pl.String)


def _map_as_json(col: pl.Series) -> pl.Series:
    """A Parquet map column as JSON object text (a value JSON cannot hold makes that row's metadata malformed)."""

    def encode(value: Any) -> str | None:
        try:
            return None if value is None else json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            return "not JSON"

    return pl.Series(col.name, [encode(v) for v in col.to_list()], dtype=pl.String)


def _as_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    if name not in frame.columns:
        return pl.lit(None, dtype=pl.String)
    dtype = frame.schema[name]
    if dtype == pl.String:
        return pl.col(name)
    if isinstance(dtype, pl.Struct):
        return pl.col(name).struct.json_encode()
    return pl.col(name).cast(pl.String, strict=False)


def _blank(expr: pl.Expr) -> pl.Expr:
    # A regex anchored at the start stops at the first non-space character: no copy of the text.
    return expr.is_null() | expr.str.contains(r"^\s*$")


def _normalise_tabular(source: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Tabular columns -> the item table, marking parse-level problems per row.

    Prompt text stays a plain string column (no per-row list building): that is what keeps
    a million-row manifest cheap next to the tokenizer.
    """
    _require_columns(source, frame.columns)
    _check_headers(source, frame.columns)
    _check_column_types(source, frame)
    extras = [c for c in frame.columns if c not in KNOWN_COLUMNS]
    frame = frame.with_columns(_binary_as_text(frame[c]) for c in frame.columns if frame.schema[c] == pl.Binary)
    if isinstance(frame.schema.get("metadata"), pl.Map):
        frame = frame.with_columns(_map_as_json(frame["metadata"]))
    n = frame.height
    messages_col, message_errors, message_extras = _parse_messages_column(frame)
    max_tokens, max_tokens_bad = _integer_column(frame, "max_tokens")
    temperature, temperature_bad = _float_column(frame, "temperature")
    metadata, metadata_error = _metadata_column(frame, extras)
    system = _as_text(frame, "system")
    return (
        frame.select(
            pl.int_range(1, n + 1, dtype=pl.Int64).alias("row"),
            _as_text(frame, "item_id").str.strip_chars().alias("item_id"),
            _as_text(frame, "model").str.strip_chars().alias("model"),
            pl.when(_blank(system)).then(None).otherwise(system).alias("system"),
            _as_text(frame, "prompt").alias("prompt"),
        )
        .with_columns(
            messages_col.alias("messages"),
            max_tokens.alias("max_tokens"),
            temperature.alias("temperature"),
            metadata.alias("metadata"),
            pl.lit(None, pl.String).alias("params"),
            pl.lit("chat", pl.String).alias("endpoint"),
            pl.lit(None, pl.Int64).alias("n"),
            message_extras["billed_text"].alias("billed_text"),
            pl.lit(None, pl.String).alias("predicted_text"),
            message_extras["images"].alias("images"),
            message_extras["features"].alias("features"),
            message_errors.alias("_messages_error"),
            pl.lit(None, pl.String).alias("_messages_field"),
            pl.lit(False).alias("_n_bad"),
            max_tokens_bad.alias("_max_tokens_bad"),
            temperature_bad.alias("_temperature_bad"),
            metadata_error.alias("_metadata_error"),
            pl.lit(None, pl.String).alias("reject_code"),
            pl.lit(None, pl.String).alias("reject_field"),
            pl.lit(None, pl.String).alias("reject_reason"),
        )
        .with_columns(
            # A messages cell wins over a prompt cell in the same row.
            pl.when(pl.col("messages").is_not_null()).then(None).otherwise(pl.col("prompt")).alias("prompt"),
        )
    )


def request_messages(
    system: str | None, prompt: str | None, messages: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The chat messages an item sends: `system` first when given, then its messages or its prompt.

    A message that carried more than text (image parts, tool calls) is sent exactly as it was written.
    """
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    if messages is not None:
        for m in messages:
            if m.get("raw"):
                out.append(json.loads(m["raw"]))
            else:
                out.append({k: v for k, v in m.items() if v is not None and k != "raw"})
    elif prompt is not None:
        out.append({"role": "user", "content": prompt})
    return out


def _integer_column(frame: pl.DataFrame, name: str) -> tuple[pl.Series, pl.Series]:
    """(value, given-but-not-an-integer flag)."""
    if name not in frame.columns:
        return pl.Series(name, [None] * frame.height, pl.Int64), pl.Series([False] * frame.height)
    col = frame[name]
    if col.dtype.is_integer():
        # Unsigned or 128-bit values past Int64 are flagged, not a crash.
        value = col.cast(pl.Int64, strict=False)
        return value, col.is_not_null() & value.is_null()
    if col.dtype.is_float():
        ok = col.is_null() | (col.is_finite() & (col == col.floor()))
        return pl.Series(name, col.cast(pl.Int64, strict=False)).set(~ok, None), ~ok
    text = col.cast(pl.String, strict=False).str.strip_chars()
    text = text.set(text == "", None)
    # "100" and "100.0" are the same whole number, as a Parquet float 100.0 is; "1.5" and "ten" are not.
    number = text.cast(pl.Float64, strict=False)
    whole = number.is_not_null() & number.is_finite() & (number == number.floor()) & (number.abs() < 2**53)
    value = number.cast(pl.Int64, strict=False).set(~whole.fill_null(False), None)
    return value, text.is_not_null() & value.is_null()


def _float_column(frame: pl.DataFrame, name: str) -> tuple[pl.Series, pl.Series]:
    if name not in frame.columns:
        return pl.Series(name, [None] * frame.height, pl.Float64), pl.Series([False] * frame.height)
    col = frame[name]
    if col.dtype.is_numeric():
        value = col.cast(pl.Float64, strict=False)
        return value, col.is_not_null() & value.is_null()
    text = col.cast(pl.String, strict=False).str.strip_chars()
    text = text.set(text == "", None)
    value = text.cast(pl.Float64, strict=False)
    return value, text.is_not_null() & value.is_null()


def _parse_messages_column(frame: pl.DataFrame) -> tuple[pl.Series, pl.Series, pl.DataFrame]:
    """(messages or null, error text or null, the extras of each row's messages) per row."""
    n = frame.height
    extras_schema = {"billed_text": pl.String(), "images": pl.List(IMAGE), "features": pl.List(pl.String())}
    if "messages" not in frame.columns:
        return (
            pl.Series([None] * n, dtype=pl.List(MESSAGE)),
            pl.Series([None] * n, dtype=pl.String),
            pl.DataFrame({k: pl.Series([None] * n, dtype=v) for k, v in extras_schema.items()}),
        )
    col = frame["messages"]
    values = col.to_list() if col.dtype == pl.String else [None if v is None else v for v in col.to_list()]
    parsed: list[list[dict[str, Any]] | None] = []
    errors: list[str | None] = []
    found: list[dict[str, Any]] = []
    for value in values:
        row: dict[str, Any] = {}
        found.append(row)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            parsed.append(None)
            errors.append(None)
            continue
        extras = Extras()
        try:
            data = json.loads(value) if isinstance(value, str) else value
            parsed.append(request_fields.normalise_messages(data, extras))
            errors.append(None)
            _put_extras(row, extras)
        except (ValueError, TypeError) as exc:
            parsed.append(None)
            errors.append(exc.reason if isinstance(exc, FieldError) else str(exc))
        except RecursionError:
            parsed.append(None)
            errors.append("the JSON is nested too deeply")
    return (
        pl.Series(parsed, dtype=pl.List(MESSAGE)),
        pl.Series(errors, dtype=pl.String),
        pl.DataFrame(found, schema=extras_schema),
    )


def _metadata_column(frame: pl.DataFrame, extras: list[str]) -> tuple[pl.Series, pl.Series]:
    """(metadata JSON with unknown columns merged in, error text or null) per row."""
    n = frame.height
    no_errors = pl.Series([None] * n, dtype=pl.String)
    extra_json = frame.select(pl.struct(extras).struct.json_encode()).to_series() if extras else None
    if "metadata" not in frame.columns:
        return (extra_json if extra_json is not None else no_errors.clone()), no_errors
    col = frame["metadata"]
    if isinstance(col.dtype, pl.Struct):
        col = frame.select(pl.col("metadata").struct.json_encode()).to_series()
    text = col.cast(pl.String)
    text = text.set(text.str.strip_chars() == "", None)
    fast = _merge_metadata_vectorised(text, extra_json, extras)
    if fast is not None:
        return fast, no_errors
    return _merge_metadata_rows(text.to_list(), extra_json.to_list() if extra_json is not None else [None] * n)


def _merge_metadata_vectorised(text: pl.Series, extra_json: pl.Series | None, extras: list[str]) -> pl.Series | None:
    """The common case without a Python loop: every cell a valid JSON object and no key clashes.

    Returns None when any cell needs the row-by-row path (invalid JSON, not an object, a key that
    is also an extra column's name, an empty object).
    """
    if not text.drop_nulls().str.starts_with("{").all():
        return None
    decoded = None
    # Inferring the schema from a sample is 3x cheaper; keys first seen later make it fail, and
    # then the whole column is scanned.
    for sample in (100, None):
        try:
            decoded = text.str.json_decode(infer_schema_length=sample)
            break
        except Exception:
            continue
    if decoded is None or not isinstance(decoded.dtype, pl.Struct) or not decoded.dtype.fields:
        return None
    keys = {f.name for f in decoded.dtype.fields}
    if keys & set(extras):
        return None
    if extra_json is None:
        return text
    # Both are JSON objects with disjoint keys: splice the members of one into the other.
    merged = pl.DataFrame({"m": text, "e": extra_json}).select(
        pl.when(pl.col("m").is_null() | pl.col("m").str.contains(r"^\s*\{\s*\}\s*$"))
        .then(pl.col("e"))
        .otherwise(
            pl.concat_str(
                pl.col("e").str.strip_chars_end().str.strip_suffix("}"),
                pl.lit(","),
                pl.col("m").str.strip_chars_start().str.strip_prefix("{"),
            )
        )
    )
    return merged.to_series()


def _merge_metadata_rows(values: list[str | None], extra_values: list[str | None]) -> tuple[pl.Series, pl.Series]:
    merged: list[str | None] = []
    errors: list[str | None] = []
    for value, extra in zip(values, extra_values, strict=True):
        if value is None:
            merged.append(extra)
            errors.append(None)
            continue
        try:
            obj = json.loads(value)
        except (ValueError, RecursionError) as exc:
            merged.append(extra)
            errors.append(f"metadata is not valid JSON ({exc})")
            continue
        if not isinstance(obj, dict):
            merged.append(extra)
            errors.append(f"metadata is a JSON {type(obj).__name__}, expected an object")
            continue
        # Unknown columns are merged in; the metadata column's own keys win on a clash.
        combined = {**json.loads(extra), **obj} if extra is not None else obj
        merged.append(json.dumps(combined, ensure_ascii=False))
        errors.append(None)
    return pl.Series(merged, dtype=pl.String), pl.Series(errors, dtype=pl.String)


def _read_jsonl(source: str, data: bytes, limits: LimitsConfig) -> pl.DataFrame:
    """OpenAI Batch API input lines -> the item table, one row per non-blank line."""
    text = _decode_text(source, data, "JSONL")
    rows: list[dict[str, Any]] = []
    # Only \n ends a line: JSON allows U+2028 and friends raw inside strings, which splitlines() splits on.
    for line_no, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        rows.append(_bounded_jsonl_row(line_no, line))
        if len(rows) > limits.max_rows:
            _check_rows(source, len(rows), limits)
    if not rows:
        return pl.DataFrame(schema={**ITEM_SCHEMA, **_PARSE_FLAGS})
    return pl.DataFrame(rows, schema={**ITEM_SCHEMA, **_PARSE_FLAGS})


_INT64 = (-(2**63), 2**63 - 1)
# A JSON \u escape of a UTF-16 surrogate; only lines holding one need the (slower) full check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bounded_jsonl_row(line_no: int, line: str) -> dict[str, Any]:
    """One line's row, with what JSON allows but the item table cannot hold turned into a rejection."""

    def unreadable(why: str) -> dict[str, Any]:
        return {"row": line_no, "_max_tokens_bad": False, "_temperature_bad": False, "reject_code": "invalid_json",
                "reject_field": "line", "reject_reason": f"line {line_no} cannot be used: {why}"}  # fmt: skip

    try:
        row = _jsonl_row(line_no, line)
    except RecursionError:
        return unreadable("its JSON is nested too deeply")
    except (OverflowError, ValueError, TypeError) as exc:
        return unreadable(f"a value is out of range ({exc})")
    cap = row.get("max_tokens")
    if isinstance(cap, int) and not _INT64[0] <= cap <= _INT64[1]:
        row["max_tokens"], row["_max_tokens_bad"] = None, True
    if _SURROGATE_ESCAPE.search(line) and _has_surrogate(row):
        return unreadable("it holds a lone UTF-16 surrogate escape (such as \\ud800), which is not text")
    return row


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


_PARSE_FLAGS: dict[str, pl.DataType] = {
    "_messages_error": pl.String(),
    "_messages_field": pl.String(),
    "_n_bad": pl.Boolean(),
    "_max_tokens_bad": pl.Boolean(),
    "_temperature_bad": pl.Boolean(),
    "_metadata_error": pl.String(),
}


def _jsonl_row(line_no: int, line: str) -> dict[str, Any]:
    row: dict[str, Any] = {"row": line_no, "_max_tokens_bad": False, "_temperature_bad": False, "_n_bad": False}

    def reject(code: str, field: str, reason: str) -> dict[str, Any]:
        row.update(reject_code=code, reject_field=field, reject_reason=reason)
        return row

    try:
        obj = json.loads(line)
    except ValueError as exc:
        return reject("invalid_json", "line", f"line {line_no} is not valid JSON ({exc.args[0]})")
    if not isinstance(obj, dict):
        return reject("invalid_json", "line", f"line {line_no} is a JSON {type(obj).__name__}, expected an object")
    custom_id = obj.get("custom_id")
    row["item_id"] = str(custom_id).strip() if custom_id is not None else None
    body = obj.get("body")
    if not isinstance(body, dict):
        return reject("unsupported_request", "body", "body is missing or not an object")
    method, url = str(obj.get("method", "POST")), str(obj.get("url", "/v1/chat/completions"))
    if url in EMBEDDINGS_URLS:
        return reject(
            "unsupported_endpoint",
            "url",
            f"{url} (embeddings) is not supported: BatchRouter runs /v1/chat/completions and /v1/responses "
            "requests; send embeddings in a manifest of their own to the provider's batch API",
        )
    if method.upper() != "POST" or url not in CHAT_URLS + RESPONSES_URLS:
        return reject(
            "unsupported_request",
            "url",
            f"{method} {url} is not supported; use POST /v1/chat/completions or POST /v1/responses",
        )
    row["endpoint"] = "responses" if url in RESPONSES_URLS else "chat"
    try:
        if row["endpoint"] == "responses":
            body = request_fields.responses_to_chat(body)
    except FieldError as exc:
        return reject(exc.code, exc.field, exc.reason)
    row["model"] = str(body["model"]).strip() if body.get("model") is not None else None
    extras = Extras()
    try:
        row["messages"] = request_fields.normalise_messages(body.get("messages"), extras)
    except FieldError as exc:
        if body.get("messages") in (None, []):
            row["messages"] = None
        else:
            row["_messages_error"] = exc.reason
            row["_messages_field"] = exc.field
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if cap is not None:
        if isinstance(cap, int) and not isinstance(cap, bool):
            row["max_tokens"] = cap
        else:
            row["_max_tokens_bad"] = True
    n = body.get("n")
    if n is not None:
        if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= request_fields.MAX_N:
            row["n"] = n
        else:
            row["_n_bad"] = True
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            row["temperature"] = float(temperature)
        else:
            row["_temperature_bad"] = True
    metadata = obj.get("metadata", body.get("metadata"))
    if metadata is not None:
        if isinstance(metadata, dict):
            row["metadata"] = json.dumps(metadata, ensure_ascii=False)
        else:
            row["_metadata_error"] = f"metadata is a JSON {type(metadata).__name__}, expected an object"
    try:
        params = request_fields.passed_params(body, extras)
    except FieldError as exc:
        return reject(exc.code, exc.field, exc.reason)
    if params:
        row["params"] = json.dumps(params, ensure_ascii=False)
    if params.get("prediction") is not None and (
        (row.get("n") or 1) > 1 or params.get("tools") or params.get("functions") or params.get("logprobs")
    ):
        return reject(
            "unsupported_field",
            "prediction",
            "prediction cannot be combined with n > 1, tools or logprobs (the provider refuses it); remove one",
        )
    effort = params.get("reasoning_effort")
    if row.get("temperature") not in (None, 1.0) and effort not in (None, "none"):
        return reject(
            "unsupported_field",
            "temperature",
            f"temperature cannot be set with reasoning_effort {effort!r}: reasoning models take only the default "
            "temperature (1); remove one of them",
        )
    if "json_object" in extras.features and not any("json" in m["content"].lower() for m in row.get("messages") or []):
        return reject(
            "unsupported_field",
            "response_format",
            "response_format json_object needs the word 'json' somewhere in the messages (the provider refuses "
            "the request otherwise); say in the system or user message that the answer is JSON",
        )
    _put_extras(row, extras)
    return row


def _put_extras(row: dict[str, Any], extras: Extras) -> None:
    row["billed_text"] = "\n".join(extras.billed_text) or None
    row["predicted_text"] = "\n".join(extras.predicted_text) or None
    row["images"] = extras.images or None
    row["features"] = sorted(extras.features) or None


def _validate(raw: pl.DataFrame, catalog: Catalog, limits: LimitsConfig) -> pl.DataFrame:
    """Apply every row rule in order; the first that fails names the rejection."""
    models = catalog.models_frame().select("model", "max_output_tokens")
    frame = _resolve_models(raw, catalog).join(models, on="model", how="left", maintain_order="left")
    known = ", ".join(catalog.model_names())
    message_text = pl.col("messages").list.eval(pl.element().struct.field("content").str.len_bytes())
    content_bytes = (
        pl.col("system").str.len_bytes().fill_null(0)
        + pl.col("prompt").str.len_bytes().fill_null(0)
        + message_text.list.sum().fill_null(0)
        + pl.col("billed_text").str.len_bytes().fill_null(0)
    )
    has_text = (
        pl.when(pl.col("messages").is_not_null())
        .then(
            pl.col("messages").list.eval(~_blank(pl.element().struct.field("content"))).list.any()
            | (pl.col("images").list.len() > 0).fill_null(False)
        )
        .otherwise(~_blank(pl.col("prompt")))
    )
    first_row = pl.col("row").min().over("item_id")
    rules: list[tuple[str, str, pl.Expr, pl.Expr]] = [
        (
            "missing_item_id",
            "item_id",
            _blank(pl.col("item_id")),
            pl.lit("item_id is empty; give every row a unique id"),
        ),
        (
            "item_too_large",
            "prompt",
            content_bytes > limits.max_item_bytes,
            pl.format(
                "the item's text is {} bytes, over the limit of {} bytes per item; shorten or split it",
                content_bytes,
                pl.lit(limits.max_item_bytes),
            ),
        ),
        ("missing_model", "model", _blank(pl.col("model")), pl.lit(f"model is empty; use one of: {known}")),
        (
            "unknown_model",
            "model",
            pl.col("max_output_tokens").is_null(),
            pl.format(f"model '{{}}' is not in catalog {catalog.version}; use one of: {known}", pl.col("model")),
        ),
        (
            "malformed_messages",
            "messages",
            pl.col("_messages_error").is_not_null(),
            pl.format("messages is malformed: {}", pl.col("_messages_error")),
        ),
        (
            "empty_prompt",
            "prompt",
            ~has_text,
            pl.lit("there is no prompt text: fill prompt, or messages with at least one non-empty content"),
        ),
        (
            "invalid_max_tokens",
            "max_tokens",
            pl.col("_max_tokens_bad"),
            pl.lit("max_tokens is not a whole number"),
        ),
        (
            "invalid_max_tokens",
            "max_tokens",
            (pl.col("max_tokens") < 1) | (pl.col("max_tokens") > pl.col("max_output_tokens")),
            pl.format(
                "max_tokens {} is outside 1..{} for model {}",
                pl.col("max_tokens"),
                pl.col("max_output_tokens"),
                pl.col("model"),
            ),
        ),
        (
            "invalid_n",
            "n",
            pl.col("_n_bad"),
            pl.lit(f"n must be a whole number from 1 to {request_fields.MAX_N}"),
        ),
        (
            "invalid_temperature",
            "temperature",
            pl.col("_temperature_bad") | (pl.col("temperature") < 0) | (pl.col("temperature") > 2),
            pl.lit("temperature must be a number from 0 to 2"),
        ),
        (
            "malformed_metadata",
            "metadata",
            pl.col("_metadata_error").is_not_null(),
            pl.col("_metadata_error"),
        ),
        (
            "duplicate_item_id",
            "item_id",
            pl.col("item_id").is_not_null() & (pl.col("row") != first_row),
            pl.format("item_id '{}' already appears at row {}; ids must be unique", pl.col("item_id"), first_row),
        ),
    ]
    code: pl.Expr = pl.col("reject_code")
    field: pl.Expr = pl.col("reject_field")
    reason: pl.Expr = pl.col("reject_reason")
    chain_code: Any = pl.when(pl.col("reject_code").is_not_null()).then(code)
    chain_field: Any = pl.when(pl.col("reject_code").is_not_null()).then(field)
    chain_reason: Any = pl.when(pl.col("reject_code").is_not_null()).then(reason)
    for rule_code, rule_field, condition, message in rules:
        hit = condition.fill_null(False)
        chain_code = chain_code.when(hit).then(pl.lit(rule_code))
        chain_field = chain_field.when(hit).then(pl.lit(rule_field))
        chain_reason = chain_reason.when(hit).then(message)
    out = frame.with_columns(
        chain_code.otherwise(None).alias("reject_code"),
        chain_field.otherwise(None).alias("reject_field"),
        chain_reason.otherwise(None).alias("reject_reason"),
    ).with_columns(
        # A malformed message names the path inside messages where it can.
        pl.when((pl.col("reject_code") == "malformed_messages") & pl.col("_messages_field").is_not_null())
        .then(pl.col("_messages_field"))
        .otherwise(pl.col("reject_field"))
        .alias("reject_field"),
        _with_features(
            pl.col("features"),
            ("n", pl.col("n") > 1),
            ("temperature", pl.col("temperature") != 1),
            ("temperature_above_1", pl.col("temperature") > 1),
        ),
    )
    return out.select(list(ITEM_SCHEMA)).cast(pl.Schema(ITEM_SCHEMA))


def _resolve_models(raw: pl.DataFrame, catalog: Catalog) -> pl.DataFrame:
    """Model names as users write them -> catalog names: snapshots to their model, retired to successors."""
    names = (
        catalog.aliases_frame()
        .select(pl.col("alias").str.to_lowercase().alias("_key"), pl.col("model").alias("_resolved"))
        .unique("_key", keep="first")
    )
    retired = pl.DataFrame(
        {"_key": [k.lower() for k in catalog.retired], "_successor": list(catalog.retired.values())},
        schema={"_key": pl.String, "_successor": pl.String},
    ).unique("_key", keep="first")
    keyed = raw.with_columns(pl.col("model").str.strip_chars().str.to_lowercase().alias("_key"))
    joined = keyed.join(names, on="_key", how="left").join(retired, on="_key", how="left")
    is_retired = pl.col("_resolved").is_null() & pl.col("_successor").is_not_null()
    return joined.with_columns(
        pl.when(is_retired).then(pl.col("model")).otherwise(None).alias("retired_from"),
        pl.coalesce("_resolved", "_successor", "model").alias("model"),
    ).drop("_key", "_resolved", "_successor")


def _with_features(features: pl.Expr, *flags: tuple[str, pl.Expr]) -> pl.Expr:
    """`features` plus each named flag that holds, sorted; null when there are none."""
    out = features.fill_null(pl.lit([], pl.List(pl.String)))
    for name, condition in flags:
        out = pl.when(condition.fill_null(False)).then(out.list.concat(pl.lit([name]))).otherwise(out)
    out = out.list.unique().list.sort()
    return pl.when(out.list.len() > 0).then(out).otherwise(None).alias("features")
