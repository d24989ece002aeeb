"""Receipts: checkpoint chunks (dedupe, retry of failed items) and outputs/receipts for every manifest row."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrouter.core.catalog import Catalog
from batchrouter.core.config import LimitsConfig, RoutePolicy, Settings
from batchrouter.core.storage import Storage
from batchrouter.execution.checkpoint import RESULT_SCHEMA, Checkpoint, ItemResult
from batchrouter.intake.manifest import read_manifest
from batchrouter.output.receipts import OUTPUT_COLUMNS, RECEIPT_COLUMNS, build_outputs
from batchrouter.pricing.quote import build_quote

MANIFEST = (
    b"item_id,model,prompt,max_tokens,team\n"
    b"a,gpt-4o-mini,Say this is a test!,100,x\n"
    b"b,nope,bad model,,y\n"
    b"c,gpt-4o-mini,Hello,50,z\n"
    b"d,gpt-4o-mini,Pending one,10,w\n"
)


def result(item_id: str, status: str = "succeeded", **fields: Any) -> ItemResult:
    values: dict[str, Any] = {
        "item_id": item_id,
        "status": status,
        "route": "openai:gpt-4o-mini",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "upstream": "gpt-4o-mini",
        "attempts": 1,
        "input_tokens": 10,
        "output_tokens": 5 if status == "succeeded" else 0,
        "cached_tokens": 0,
        "reserve_usd_micros": 70,
        "cost_usd_micros": 5 if status == "succeeded" else 0,
        "cost_source": "catalog" if status == "succeeded" else "none",
        "latency_ms": 12,
        "started_at": datetime(2026, 1, 1, tzinfo=UTC),
        "finished_at": datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
        "provider_request_id": f"req_{item_id}",
        "input_sha256": "0" * 64,
        "output_sha256": None,
        "output_text": f"answer {item_id}" if status == "succeeded" else None,
        "choices": None,
        "finish_reason": "stop" if status == "succeeded" else None,
        "error_code": None if status == "succeeded" else "http_500",
        "error_message": None if status == "succeeded" else "server error (after 4 attempt(s) on openai:gpt-4o-mini)",
        "fallbacks_used": 0,
        "rate_limited": 0,
    }
    values.update(fields)
    return ItemResult(**values)


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return Storage(settings.storage)


def chunk_files(settings: Settings, batch_id: str) -> list[Path]:
    return sorted((Path(settings.storage.root) / "batches" / batch_id / "dispatch" / "chunks").glob("*.parquet"))


# -- Checkpoint -------------------------------------------------------------------------------------


def test_checkpoint_of_a_new_batch_loads_empty_with_the_result_schema(storage: Storage) -> None:
    loaded = Checkpoint(storage, "b1").load()
    assert loaded.height == 0
    assert dict(loaded.schema) == RESULT_SCHEMA


def test_checkpoint_writes_a_chunk_every_n_results(storage: Storage, settings: Settings) -> None:
    checkpoint = Checkpoint(storage, "b1", every_items=3, every_seconds=3600)
    for name in ("a", "b"):
        checkpoint.add(result(name))
    assert chunk_files(settings, "b1") == []
    checkpoint.add(result("c"))
    assert len(chunk_files(settings, "b1")) == 1
    assert Checkpoint(storage, "b1").load()["item_id"].to_list() == ["a", "b", "c"]


def test_a_checkpoint_chunk_holds_every_field_of_each_result_as_recorded(storage: Storage) -> None:
    recorded = [
        result("a", choices=json.dumps([{"index": 0}]), output_sha256="f" * 64, cached_tokens=3),
        result("b", "failed", latency_ms=None, started_at=None),
    ]
    checkpoint = Checkpoint(storage, "b1", every_items=100)
    for item in recorded:
        checkpoint.add(item)
    checkpoint.flush()
    loaded = Checkpoint(storage, "b1").load()
    assert list(loaded.columns) == list(RESULT_SCHEMA)
    # A cost given in whole micro-dollars is its own exact cost; one by the catalog is the catalog's figure.
    assert recorded[0].cost_source == "catalog" and recorded[0].catalog_cost_usd_micros is None
    assert loaded.to_dicts() == [asdict(recorded[0]) | {"cost_usd_pico": 5 * 10**6, "catalog_cost_usd_micros": 5},
                                 asdict(recorded[1]) | {"cost_usd_pico": 0}]  # fmt: skip


def test_a_chunk_charges_its_exact_total_rounded_up_once_each_line_within_a_micro_dollar(storage: Storage) -> None:
    # Three lines of 1.4 micro-dollars by the catalog, and one the provider priced itself, in the middle.
    exact = 1_400_000
    checkpoint = Checkpoint(storage, "b1", every_items=100)
    for name in ("a", "b"):
        checkpoint.add(result(name, cost_usd_micros=2, cost_usd_pico=exact, catalog_cost_usd_micros=2))
    checkpoint.add(result("p", cost_usd_micros=9, cost_source="provider", catalog_cost_usd_micros=7))
    checkpoint.add(result("c", cost_usd_micros=2, cost_usd_pico=exact, catalog_cost_usd_micros=2))
    checkpoint.flush()
    rows = Checkpoint(storage, "b1").load().rows_by_key("item_id", named=True, unique=True)
    charged = {k: r["cost_usd_micros"] for k, r in rows.items()}
    # Running totals 1.4, 2.8, 11.8, 13.2 round up to 2, 3, 12, 14: the lines pay 2, 1, 9, 2.
    assert charged == {"a": 2, "b": 1, "p": 9, "c": 2}
    assert sum(charged.values()) == 14 < 3 * 2 + 9  # rounded once: each line rounded up would pay 15
    assert {k: r["cost_usd_pico"] for k, r in rows.items()} == {"a": exact, "b": exact, "p": 9 * 10**6, "c": exact}
    # A cost by the catalog is the catalog's figure as charged; the provider's line keeps the catalog's own.
    assert {k: r["catalog_cost_usd_micros"] for k, r in rows.items()} == {"a": 2, "b": 1, "p": 7, "c": 2}


def test_each_chunk_is_rounded_on_its_own(storage: Storage) -> None:
    checkpoint = Checkpoint(storage, "b1", every_items=2, every_seconds=3600)
    for name in "abcd":
        checkpoint.add(result(name, cost_usd_micros=1, cost_usd_pico=600_000))
    charged = Checkpoint(storage, "b1").load()["cost_usd_micros"].to_list()
    assert charged == [1, 1, 1, 1]  # 1.2 rounds up to 2 in each chunk of two, never across them


def test_checkpoint_flush_writes_what_is_pending(storage: Storage, settings: Settings) -> None:
    checkpoint = Checkpoint(storage, "b1", every_items=100, every_seconds=3600)
    checkpoint.add(result("a"))
    checkpoint.flush()
    checkpoint.flush()  # nothing pending: no empty chunk
    assert len(chunk_files(settings, "b1")) == 1
    assert checkpoint.written == 1


def test_checkpoint_load_keeps_the_first_result_of_an_item(storage: Storage) -> None:
    first = Checkpoint(storage, "b1", every_items=100)
    first.add(result("a", "succeeded", provider_request_id="req_first"))
    first.add(result("b"))
    first.flush()
    second = Checkpoint(storage, "b1", every_items=100)
    second.add(result("a", "failed", provider_request_id="req_second"))
    second.add(result("c"))
    second.flush()
    loaded = Checkpoint(storage, "b1").load()
    assert loaded["item_id"].to_list() == ["a", "b", "c"]
    row = loaded.filter(pl.col("item_id") == "a").row(0, named=True)
    assert (row["status"], row["provider_request_id"]) == ("succeeded", "req_first")


def test_retry_failed_forgets_failed_results_only(storage: Storage) -> None:
    checkpoint = Checkpoint(storage, "b1", every_items=100)
    for item in (result("a"), result("b", "failed"), result("c"), result("d", "failed")):
        checkpoint.add(item)
    checkpoint.flush()
    before = checkpoint.load().filter(pl.col("status") == "succeeded")
    assert checkpoint.retry_failed() == 2
    after = Checkpoint(storage, "b1").load()
    assert after["item_id"].to_list() == ["a", "c"]
    assert after.equals(before)


def test_retry_failed_lets_a_new_result_of_a_forgotten_item_be_recorded(storage: Storage) -> None:
    checkpoint = Checkpoint(storage, "b1", every_items=100)
    checkpoint.add(result("a", "failed"))
    checkpoint.add(result("b"))
    checkpoint.flush()
    checkpoint.retry_failed()
    checkpoint.add(result("a", "succeeded", provider_request_id="req_retry"))
    checkpoint.flush()
    loaded = Checkpoint(storage, "b1").load()
    assert sorted(loaded["item_id"].to_list()) == ["a", "b"]
    assert loaded.filter(pl.col("item_id") == "a")["provider_request_id"].to_list() == ["req_retry"]


def test_retry_failed_without_failures_changes_nothing(storage: Storage, settings: Settings) -> None:
    checkpoint = Checkpoint(storage, "b1", every_items=100)
    checkpoint.add(result("a"))
    checkpoint.flush()
    files = chunk_files(settings, "b1")
    assert checkpoint.retry_failed() == 0
    assert chunk_files(settings, "b1") == files


# -- build_outputs ----------------------------------------------------------------------------------


@pytest.fixture
def quoted(catalog: Catalog) -> tuple[pl.DataFrame, pl.DataFrame]:
    manifest = read_manifest("orders.csv", MANIFEST, catalog=catalog, limits=LimitsConfig())
    quote = build_quote(manifest, workspace="acme", catalog=catalog, policy=RoutePolicy(), workers=1)
    return quote.items, manifest.items


def outputs_for(quoted: tuple[pl.DataFrame, pl.DataFrame], *results: ItemResult) -> tuple[pl.DataFrame, pl.DataFrame]:
    frame = pl.DataFrame([asdict(r) for r in results], schema=RESULT_SCHEMA)
    return build_outputs(quoted[0], quoted[1], frame, batch_id="b1", workspace="acme")


def test_outputs_and_receipts_have_one_row_per_manifest_row_in_row_order(
    quoted: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    outputs, receipts = outputs_for(quoted, result("c"), result("a"), result("d", "failed"))
    assert outputs.columns == list(OUTPUT_COLUMNS)
    assert receipts.columns == list(RECEIPT_COLUMNS)
    assert outputs["item_id"].to_list() == ["a", "b", "c", "d"]
    assert receipts["item_id"].to_list() == ["a", "b", "c", "d"]
    assert outputs["status"].to_list() == ["succeeded", "rejected", "succeeded", "failed"]


def test_rejected_row_is_in_outputs_and_receipts_with_status_rejected_and_cost_0(
    quoted: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    outputs, receipts = outputs_for(quoted, result("a"), result("c"), result("d"))
    out = outputs.filter(pl.col("item_id") == "b").row(0, named=True)
    assert out["status"] == "rejected"
    assert out["error_code"] == "unknown_model"
    assert "nope" in out["error_message"]
    assert out["output_text"] is None
    assert json.loads(out["metadata"]) == {"team": "y"}
    rec = receipts.filter(pl.col("item_id") == "b").row(0, named=True)
    assert rec["status"] == "rejected"
    assert (rec["cost_usd_micros"], rec["reserve_usd_micros"], rec["attempts"]) == (0, 0, 0)
    assert (rec["batch_id"], rec["workspace"], rec["model"]) == ("b1", "acme", "nope")


def test_dispatched_rows_carry_their_result(quoted: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    outputs, receipts = outputs_for(quoted, result("a"), result("c"), result("d", "failed"))
    a = outputs.filter(pl.col("item_id") == "a").row(0, named=True)
    assert (a["output_text"], a["finish_reason"], a["error_code"]) == ("answer a", "stop", None)
    assert json.loads(a["metadata"]) == {"team": "x"}
    d = receipts.filter(pl.col("item_id") == "d").row(0, named=True)
    assert (d["status"], d["attempts"], d["cost_usd_micros"]) == ("failed", 1, 0)
    assert outputs.filter(pl.col("item_id") == "d")["error_code"].to_list() == ["http_500"]
    assert receipts["cost_usd_micros"].sum() == 10


def test_accepted_row_without_a_result_is_pending_with_cost_0(quoted: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    outputs, receipts = outputs_for(quoted, result("a"))
    assert outputs.filter(pl.col("item_id").is_in(["c", "d"]))["status"].to_list() == ["pending", "pending"]
    pending = receipts.filter(pl.col("status") == "pending")
    assert pending["cost_usd_micros"].to_list() == [0, 0]
    assert pending["attempts"].to_list() == [0, 0]
