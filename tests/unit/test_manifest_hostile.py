"""Hostile manifests: whatever the bytes, reading ends as row rejections or one clear "unusable" error.

Fuzzed over all three formats, through the engine's read function and through `batchrouter quote`
(exit 0, 1 or 2; never a traceback; the original quarantined with a report when 2).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from batchrouter.cli import main
from batchrouter.core.catalog import Catalog
from batchrouter.core.config import LimitsConfig, load_settings
from batchrouter.core.errors import ManifestError
from batchrouter.intake.manifest import read_manifest

MODEL = "gpt-4o-mini"
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CLI_FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


# -- generators ----------------------------------------------------------------------------------
HEADERS = st.sampled_from(
    ["item_id", "model", "prompt", "messages", "system", "max_tokens", "temperature", "metadata", "Prompt",
     " prompt", "ITEM_ID", "extra", "x y", "", "é"]
)  # fmt: skip
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40), st.floats(allow_nan=False),
    TEXT, st.sampled_from(["\ud800", "a\udc00b", "\x00", "gpt-4o-mini", "user", "1e400"]),
)  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["role", "content", "model", "messages", "max_tokens", "temperature", "metadata", "custom_id", "body",
         "url", "method", "name", "type", "text", "top_p"]), inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    header = draw(st.lists(HEADERS, min_size=0, max_size=6))
    base = ["item_id", "model", "prompt"] if draw(st.booleans()) else []
    columns = base + header
    cell = st.one_of(TEXT, st.just(MODEL), st.just(_deep(5000)), st.just("18446744073709551616"),
                     st.just('[{"role": "user", "content": "hi"}]'), st.just("1e400"))  # fmt: skip
    rows = draw(st.lists(st.lists(cell, min_size=len(columns), max_size=len(columns) + 1), max_size=5))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    text = buf.getvalue()
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "raw"]))
    if encoding == "raw":
        return draw(st.binary(max_size=200))
    return text.encode(encoding, errors="replace")


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        kind = draw(st.sampled_from(["request", "value", "deep", "garbage"]))
        if kind == "request":
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            fields = st.sampled_from(["max_tokens", "temperature", "messages", "metadata", "model", "top_p"])
            body.update(draw(st.dictionaries(fields, JSON_VALUES, max_size=3)))
            line = json.dumps({"custom_id": draw(JSON_VALUES), "method": "POST", "url": "/v1/chat/completions",
                               "body": body})  # fmt: skip
        elif kind == "value":
            line = json.dumps(draw(JSON_VALUES))
        elif kind == "deep":
            line = '{"custom_id": "d", "body": ' + _deep(draw(st.integers(min_value=100, max_value=20000))) + "}"
        else:
            line = draw(TEXT)
        lines.append(line)
    data = "\n".join(lines).encode("utf-8", errors="surrogatepass")
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "nul"]))
    if encoding == "utf-16":
        return "\n".join(lines).encode("utf-16", errors="surrogatepass")
    if encoding == "nul":
        return data.replace(b",", b",\x00", 1)
    return data


PARQUET_COLUMNS: dict[str, Any] = {
    "text": lambda n: pa.array(["hello"] * n),
    "binary": lambda n: pa.array([b"\xff\xfe"] * n, type=pa.binary()),
    "utf8_binary": lambda n: pa.array([b"hi"] * n, type=pa.binary()),
    "uint64": lambda n: pa.array([2**64 - 1] * n, type=pa.uint64()),
    "int64": lambda n: pa.array([2**62] * n, type=pa.int64()),
    "float": lambda n: pa.array([float("inf")] * n),
    "bool": lambda n: pa.array([True] * n),
    "null": lambda n: pa.nulls(n),
    "list": lambda n: pa.array([[1, 2]] * n),
    "list_binary": lambda n: pa.array([[b"\x00"]] * n),
    "map": lambda n: pa.array([[("k", "v")]] * n, type=pa.map_(pa.string(), pa.string())),
    "struct": lambda n: pa.array([{"a": [{"b": 1}]}] * n),
    "messages": lambda n: pa.array([[{"role": "user", "content": "hi"}]] * n),
    "bad_messages": lambda n: pa.array([[{"role": 5, "content": [1]}]] * n),
    "decimal": lambda n: pa.array([1] * n, type=pa.decimal128(38, 0)),
    "dictionary": lambda n: pa.array(["x" * 100] * n).dictionary_encode(),
    "deep_json": lambda n: pa.array([_deep(5000)] * n),
    "model": lambda n: pa.array([MODEL] * n),
}


@st.composite
def parquet_files(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(min_value=0, max_value=3))
    names = draw(st.lists(HEADERS, min_size=1, max_size=6))
    if draw(st.booleans()):
        names = ["item_id", "model", "prompt", *names]
    arrays = []
    for name in names:
        kind = "model" if name == "model" and draw(st.booleans()) else draw(st.sampled_from(sorted(PARQUET_COLUMNS)))
        arrays.append(PARQUET_COLUMNS[kind](n))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, names=names), buf)
    data = buf.getvalue()
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        cut = draw(st.integers(min_value=0, max_value=len(data)))
        return data[:cut]
    return data


FILES = st.one_of(
    st.tuples(st.just("m.csv"), csv_files()),
    st.tuples(st.just("m.jsonl"), jsonl_files()),
    st.tuples(st.just("m.parquet"), parquet_files()),
)


# -- the engine's read function ------------------------------------------------------------------
def _read(name: str, data: bytes, catalog: Catalog, limits: LimitsConfig) -> None:
    """Either a usable item table (every row accepted or rejected, writable) or a ManifestError."""
    try:
        manifest = read_manifest(name, data, catalog=catalog, limits=limits)
    except ManifestError as exc:
        assert exc.problem and exc.fix
        return
    assert manifest.accepted.height + manifest.rejected.height == manifest.rows
    manifest.items.write_parquet(io.BytesIO())  # the next stage can store it


@seed(20261201)
@FUZZ
@given(FILES)
def test_any_manifest_reads_as_rows_or_one_unusable_error(catalog: Catalog, limits: LimitsConfig,
                                                          case: tuple[str, bytes]) -> None:  # fmt: skip
    name, data = case
    try:
        _read(name, data, catalog, limits)
    except BaseException as exc:  # a Rust panic is a BaseException
        pytest.fail(f"{name} ({len(data)} bytes) raised {type(exc).__name__}: {exc}")


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("deep.jsonl", ('{"custom_id": "1", "body": ' + _deep(200_000) + "}").encode(), "invalid_json"),
        ("int.jsonl", json.dumps({"custom_id": "1", "body": {"model": MODEL, "messages": [
            {"role": "user", "content": "hi"}], "max_tokens": 10**30}}).encode(), "invalid_max_tokens"),
        ("surrogate.jsonl", b'{"custom_id": "\\ud800", "body": {"model": "gpt-4o-mini", "messages": []}}',
         "invalid_json"),
        ("deep.csv", f'item_id,model,messages\n1,{MODEL},"{_deep(100_000)}"\n'.encode(), "malformed_messages"),
    ],
)  # fmt: skip
def test_hostile_values_are_row_rejections(catalog: Catalog, limits: LimitsConfig, name: str, data: bytes,
                                           code: str) -> None:  # fmt: skip
    manifest = read_manifest(name, data, catalog=catalog, limits=limits)
    assert manifest.items["reject_code"].to_list() == [code]


def _parquet(**columns: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("dup.csv", f"item_id,model,prompt,prompt\n1,{MODEL},a,b\n".encode(), "collide"),
        ("case.csv", f"item_id,model,prompt,Prompt\n1,{MODEL},a,b\n".encode(), "collide"),
        ("utf16.csv", f"item_id,model,prompt\n1,{MODEL},hi\n".encode("utf-16"), "UTF-16"),
        ("latin1.csv", f"item_id,model,prompt\n1,{MODEL},café\n".encode("latin-1"), "not UTF-8"),
        ("list.parquet", _parquet(item_id=["1"], model=[MODEL], prompt=[["a"]]), "List"),
        ("case.parquet", _parquet(item_id=["1"], model=[MODEL], prompt=["a"], PROMPT=["b"]), "collide"),
    ],
)
def test_malformed_files_are_unusable_with_a_reason(catalog: Catalog, limits: LimitsConfig, name: str, data: bytes,
                                                    problem: str) -> None:  # fmt: skip
    with pytest.raises(ManifestError, match=problem):
        read_manifest(name, data, catalog=catalog, limits=limits)


def test_unsigned_and_binary_parquet_columns_reject_rows_not_the_file(catalog: Catalog, limits: LimitsConfig) -> None:
    data = _parquet(item_id=["1", "2"], model=[MODEL, MODEL], prompt=pa.array([b"hi", b"\xff"], type=pa.binary()),
                    max_tokens=pa.array([10, 2**64 - 1], type=pa.uint64()))  # fmt: skip
    items = read_manifest("m.parquet", data, catalog=catalog, limits=limits).items
    assert items["reject_code"].to_list() == [None, "empty_prompt"]


# -- decoded size ---------------------------------------------------------------------------------
def _dictionary_bomb(rows: int, text_bytes: int) -> bytes:
    """One long string repeated through a dictionary: a small file, huge once decoded."""
    prompt = pa.DictionaryArray.from_arrays(pa.array([0] * rows, type=pa.int32()), pa.array(["x" * text_bytes]))
    table = pa.table({"item_id": [str(i) for i in range(rows)], "model": [MODEL] * rows, "prompt": prompt})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", store_schema=False)
    return buf.getvalue()


def test_a_parquet_dictionary_bomb_is_unusable_by_its_decoded_text(catalog: Catalog) -> None:
    data = _dictionary_bomb(100_000, 10_000)  # ~0.2 MB on disk, 1 GB of text decoded
    assert len(data) < 1_000_000
    limits = LimitsConfig(max_decoded_bytes=100_000_000)
    with pytest.raises(ManifestError, match="decoded, over the limit of 100,000,000"):
        read_manifest("bomb.parquet", data, catalog=catalog, limits=limits)


def test_a_parquet_file_over_the_decoded_limit_is_refused_from_its_footer(catalog: Catalog) -> None:
    data = _parquet(item_id=[str(i) for i in range(1000)], model=[MODEL] * 1000, prompt=[f"p{i}" * 50 for i in
                                                                                         range(1000)])  # fmt: skip
    with pytest.raises(ManifestError, match="its column data is"):
        read_manifest("m.parquet", data, catalog=catalog, limits=LimitsConfig(max_decoded_bytes=10_000))


def test_a_gzip_manifest_is_read_and_a_gzip_bomb_is_stopped_while_inflating(catalog: Catalog) -> None:
    small = gzip.compress(f"item_id,model,prompt\n1,{MODEL},hi\n".encode())
    assert read_manifest("m.csv.gz", small, catalog=catalog, limits=LimitsConfig()).rows == 1
    bomb = gzip.compress(b"item_id,model,prompt\n" + b"x" * 50_000_000)  # ~50 KB that inflates to 50 MB
    assert len(bomb) < 100_000
    with pytest.raises(ManifestError, match="the inflated file"):
        read_manifest("m.csv.gz", bomb, catalog=catalog, limits=LimitsConfig(max_decoded_bytes=1_000_000))


# -- through the CLI -------------------------------------------------------------------------------
def _quarantined(root: Path) -> list[Path]:
    return sorted(p for p in (root / "quarantine").rglob("*") if p.is_file())


@seed(20261201)
@CLI_FUZZ
@given(FILES)
def test_cli_quote_of_any_manifest_exits_0_1_or_2_and_quarantines_when_2(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], case: tuple[str, bytes]
) -> None:
    name, data = case
    folder = tmp_path_factory.mktemp("m")
    path = folder / name
    path.write_bytes(data)
    root = Path(load_settings().storage.root)
    try:
        code = main(["quote", str(path), "--workspace", "acme", "--json"])
    except BaseException as exc:
        pytest.fail(f"quote of {name} ({len(data)} bytes) raised {type(exc).__name__}: {exc}")
    captured = capsys.readouterr()
    assert code in (0, 1, 2)
    assert "Traceback" not in captured.err
    if code == 2:
        assert "error:" in captured.err
        kept = [p for p in _quarantined(root) if p.name.endswith(name) and p.read_bytes() == data]
        assert kept, "the original is quarantined"
        assert Path(f"{kept[0]}.error.txt").is_file(), "with its report beside it"
    else:
        assert json.loads(captured.out)["items"] >= 0


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("deep.jsonl", ('{"custom_id": "1", "body": ' + _deep(100_000) + "}").encode()),
        ("utf16.csv", f"item_id,model,prompt\n1,{MODEL},hi\n".encode("utf-16")),
        ("map.parquet", _parquet(item_id=["1"], model=[MODEL], prompt=["hi"],
                                 metadata=pa.array([[("k", "v")]], type=pa.map_(pa.string(), pa.string())))),
    ],
)  # fmt: skip
def test_cli_quote_in_a_subprocess_never_prints_a_traceback(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "batchrouter.cli", "quote", str(path), "--workspace", "acme"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode in (0, 1, 2), done.stderr
    assert "Traceback" not in done.stderr


def test_a_dictionary_bomb_past_4_gib_of_text_is_counted_without_wrapping_round(catalog: Catalog) -> None:
    # 5,000,000,000 bytes of text: a 32-bit count would wrap round to ~705 MB and let it through.
    data = _dictionary_bomb(100_000, 50_000)
    with pytest.raises(ManifestError, match=r"its text is 5,0\d\d,\d{3},\d{3} bytes"):
        read_manifest("bomb.parquet", data, catalog=catalog, limits=LimitsConfig(max_decoded_bytes=1_000_000_000))
