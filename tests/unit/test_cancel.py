"""Cancelling a batch before it dispatches: nothing is sent, nothing is reserved again, nothing is charged."""

from __future__ import annotations

import polars as pl

from batchrouter.batches.lifecycle import stage_dispatch, stage_manifest, stage_quote, stage_route, submit
from batchrouter.batches.settlement import stage_reserve, stage_settle
from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import Settings
from batchrouter.core.storage import Storage
from batchrouter.money.ledger import Ledger


def test_a_batch_cancelled_before_dispatch_sends_nothing_and_is_never_reserved_again(settings: Settings) -> None:
    storage, catalog, ledger = Storage(settings.storage), load_catalog(), Ledger(settings.database)
    ledger.grant("acme", 1_000_000, key="g")
    data = b"item_id,model,prompt\n1,gpt-4o-mini,hello\n2,gpt-4o-mini,hi\n"
    info = submit(storage, workspace="acme", source_name="m.csv", data=data)
    manifest = stage_manifest(storage, settings, catalog, info)
    stage_route(storage, info, manifest, stage_quote(storage, settings, catalog, info, manifest))
    assert stage_reserve(storage, settings, info) is not None
    # What POST /v1/batches/{id}/cancel does before any dispatch: the marker, then the hold voided.
    storage.write_json({"by": "test"}, *info.folder("cancel.json"))
    ledger.void(info.batch_id, reason="cancelled")

    assert stage_reserve(storage, settings, info) is None  # a racing run does not reserve again
    summary = stage_dispatch(storage, settings, catalog, info)
    settled = stage_settle(storage, settings, info)

    receipts = pl.read_parquet(summary["receipts"])
    outputs = pl.read_parquet(summary["outputs"])
    assert outputs["error_code"].to_list() == ["cancelled", "cancelled"]
    assert receipts["attempts"].to_list() == [0, 0]  # no request was sent
    assert settled["captured_usd_micros"] == 0
    assert [h.status for h in ledger.batch_holds(info.batch_id)] == ["voided"]
    assert ledger.balance("acme").available_usd_micros == 1_000_000
