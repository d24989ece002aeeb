"""The Dagster code location: it loads, and its batch assets materialise one batch partition."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.batch import dispatch, manifest, quote, reservation, routed_items, settlement
from batchrouter.batches.lifecycle import submit
from batchrouter.core.config import load_settings
from batchrouter.core.storage import Storage, route_slug
from batchrouter.intake.sample import sample_manifest
from batchrouter.money.ledger import Ledger
from pipelines.definitions import defs
from pipelines.partitions import batches
from pipelines.resources import BatchRouterResource

pytestmark = pytest.mark.dagster

ASSET_KEYS = {dg.AssetKey("manifest"), dg.AssetKey("quote"), dg.AssetKey("routed_items")}


def test_definitions_are_loadable() -> None:
    dg.Definitions.validate_loadable(defs)


def test_batch_assets_exist_and_are_partitioned_by_the_batches_dynamic_partition() -> None:
    graph = defs.resolve_asset_graph()
    assert ASSET_KEYS <= set(graph.get_all_asset_keys())
    for key in ASSET_KEYS:
        partitions = graph.get(key).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition)
        assert partitions.name == "batches"


def test_assets_depend_on_each_other_in_stage_order() -> None:
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("quote")).parent_keys == {dg.AssetKey("manifest")}
    assert graph.get(dg.AssetKey("routed_items")).parent_keys == {dg.AssetKey("quote")}


def test_batch_job_selects_every_batch_asset() -> None:
    job = defs.resolve_job_def("batch_job")
    assert job.partitions_def == batches
    assert {node.name for node in job.graph.node_defs} == {
        "manifest",
        "quote",
        "routed_items",
        "reservation",
        "dispatch",
        "settlement",
        "delivery",
    }


def test_materialising_a_batch_partition_writes_every_stage(tmp_path: Path) -> None:
    frame = sample_manifest(40, seed=2)
    # One deliberately bad row: an unknown model is rejected, so 39 of 40 rows are accepted.
    frame = frame.with_columns(frame["model"].scatter(7, "gpt-9-imaginary"))
    buf = io.BytesIO()
    frame.write_csv(buf)
    settings = load_settings()
    storage = Storage(settings.storage)
    info = submit(storage, workspace="demo", source_name="sample.csv", data=buf.getvalue())

    Ledger(settings.database).grant("demo", 1_000_000, key="test-credits")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batches.name, [info.batch_id])
    result = dg.materialize(
        [manifest, quote, routed_items, reservation, dispatch, settlement],
        instance=instance,
        partition_key=info.batch_id,
        resources={"batchrouter": BatchRouterResource()},
    )
    assert result.success

    folder = Path(settings.storage.root) / "batches" / info.batch_id
    assert folder.parent.parent == tmp_path / "bucket"
    assert pl.read_parquet(folder / "manifest.parquet").height == 40
    assert pl.read_parquet(folder / "quote.parquet").height == 40
    summary = json.loads((folder / "quote.json").read_text())
    assert (summary["accepted"], summary["rejected"]) == (39, 1)

    (quote_event,) = result.asset_materializations_for_node("quote")
    assert quote_event.partition == info.batch_id
    assert quote_event.metadata["accepted"].value == 39
    assert quote_event.metadata["rejected"].value == 1
    (manifest_event,) = result.asset_materializations_for_node("manifest")
    assert manifest_event.metadata["rows"].value == 40
    assert manifest_event.metadata["rejected_so_far"].value == 1

    (routed_event,) = result.asset_materializations_for_node("routed_items")
    counts = routed_event.metadata["items_by_route"].value
    assert sum(counts.values()) == 39
    for route, n in counts.items():
        part = pl.read_parquet(folder / "routed_items" / f"route={route_slug(route)}" / "items.parquet")
        assert part.height == n

    # dispatch ran against the built-in simulator: every accepted item has one final receipt.
    receipts = pl.read_parquet(folder / "receipts.parquet")
    assert receipts.height == 40
    assert receipts.group_by("status").len().sort("status").rows() == [("rejected", 1), ("succeeded", 39)]
    outputs = pl.read_parquet(folder / "outputs.parquet")
    assert outputs.filter(pl.col("status") == "succeeded")["output_text"].null_count() == 0
    (dispatch_event,) = result.asset_materializations_for_node("dispatch")
    assert dispatch_event.metadata["succeeded"].value == 39
    assert dispatch_event.metadata["cost_usd_micros"].value == receipts["cost_usd_micros"].sum()
    # settlement captured exactly the receipts' total and the blocking check agrees.
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"every_item_accounted_once": True, "ledger_matches_receipts": True, "reserve_covers_actual": True}
    balance = Ledger(settings.database).balance("demo")
    assert balance.spent_usd_micros == receipts["cost_usd_micros"].sum()
    assert balance.held_usd_micros == 0
    assert balance.available_usd_micros == 1_000_000 - balance.spent_usd_micros
