"""The Dagster code location: it loads, and one in-process step materialises a batch's three assets."""

from __future__ import annotations

import io
import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.batch import STATE_TAG, batch
from batchrouter.engine import BatchRouter
from batchrouter.intake.sample import sample_manifest
from batchrouter.money.ledger import usd
from pipelines.definitions import defs
from pipelines.partitions import batches
from pipelines.resources import ConfiguredBatchRouter, SimulatedBatchRouter

pytestmark = pytest.mark.dagster

ASSET_KEYS = {dg.AssetKey("quote"), dg.AssetKey("outputs"), dg.AssetKey("settlement")}


def test_definitions_are_loadable() -> None:
    dg.Definitions.validate_loadable(defs)


def test_batch_assets_and_their_checks_are_partitioned_by_the_batches_dynamic_partition() -> None:
    graph = defs.resolve_asset_graph()
    assert ASSET_KEYS <= set(graph.get_all_asset_keys())
    for key in ASSET_KEYS:
        assert graph.get(key).partitions_def == batches
    checks = {spec.key.name: spec for spec in batch.check_specs}
    assert set(checks) == {"approved_and_funded", "every_item_accounted_once", "no_failed_items",
                           "ledger_matches_receipts", "reserve_covers_actual"}  # fmt: skip
    assert all(spec.partitions_def == batches for spec in checks.values())


def test_assets_depend_on_each_other_in_stage_order() -> None:
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("outputs")).parent_keys == {dg.AssetKey("quote")}
    assert graph.get(dg.AssetKey("settlement")).parent_keys == {dg.AssetKey("outputs")}


def test_batch_job_is_one_step_in_the_runs_own_process_with_a_retry_policy_and_a_pool() -> None:
    job = defs.resolve_job_def("batch_job")
    assert job.partitions_def == batches
    assert job.executor_def is dg.in_process_executor
    (node,) = job.graph.node_defs
    assert node.name == "batch"
    assert node.retry_policy is not None and node.retry_policy.max_retries >= 1
    assert node.pool == "batchrouter/dispatch"


def test_the_instance_config_holds_each_catalog_provider_to_a_run_limit_its_batches_runs_are_tagged_with(
    tmp_path: Path,
) -> None:
    import yaml

    from pipelines.sensors import PROVIDER_TAG

    config = yaml.safe_load((Path(__file__).parents[2] / "pipelines" / "dagster.yaml").read_text())
    with dg.instance_for_test(overrides=config, temp_dir=str(tmp_path)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits  # type: ignore[union-attr]
    by_key = {limit["key"]: limit["limit"] for limit in limits}
    providers = {entry.provider for entry in BatchRouter.from_config(None).catalog.entries}
    assert set(by_key) == {PROVIDER_TAG + p for p in providers}
    assert all(limit >= 1 for limit in by_key.values())


def test_the_configured_resource_binds_secrets_that_are_set_to_env_vars_and_no_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_123")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    resource = ConfiguredBatchRouter.from_env()
    assert resource.stripe_api_key == dg.EnvVar("STRIPE_SECRET_KEY")
    assert resource.openai_api_key is None


def test_materialising_a_batch_partition_writes_outputs_and_readable_metadata(tmp_path: Path) -> None:
    frame = sample_manifest(40, seed=2)
    # One deliberately bad row: an unknown model is rejected, so 39 of 40 rows are accepted.
    frame = frame.with_columns(frame["model"].scatter(7, "gpt-9-imaginary"))
    buf = io.BytesIO()
    frame.write_csv(buf)
    resource = SimulatedBatchRouter(root=str(tmp_path))
    engine = BatchRouter(resource.settings())
    view = engine.batches.submit(buf.getvalue(), filename="sample.csv", workspace="demo")
    engine.ledger.grant("demo", 1_000_000, key="test-credits")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batches.name, [view.batch_id])

    result = dg.materialize([batch], instance=instance, partition_key=view.batch_id,
                            resources={"batchrouter": resource})  # fmt: skip

    assert result.success
    assert instance.get_run_by_id(result.run_id).tags[STATE_TAG] == "completed"
    folder = tmp_path / "bucket" / "batches" / view.batch_id
    receipts = pl.read_parquet(folder / "receipts.parquet")
    assert receipts.group_by("status").len().sort("status").rows() == [("rejected", 1), ("succeeded", 39)]
    outputs = pl.read_parquet(folder / "outputs.parquet")
    assert outputs.filter(pl.col("status") == "succeeded")["output_text"].null_count() == 0

    events = {e.asset_key.to_user_string(): e for e in result.asset_materializations_for_node("batch")}
    assert set(events) == {"quote", "outputs", "settlement"}
    assert {e.partition for e in events.values()} == {view.batch_id}
    quoted = events["quote"].metadata
    assert (quoted["accepted"].value, quoted["rejected"].value) == (39, 1)
    assert str(quoted["reserve"].value).startswith("$0.")
    by_route = quoted["by_route"].value
    assert isinstance(by_route, dg.TableMetadataValue)
    assert [c.name for c in by_route.schema.columns] == ["route", "items", "input_tokens", "expected", "reserve"]
    assert sum(r.data["items"] for r in by_route.records) == 39
    (rejection,) = quoted["rejections"].value.records
    assert rejection.data["field"] == "model"
    paid = int(receipts["cost_usd_micros"].sum())
    assert events["outputs"].metadata["cost"].value == usd(paid)
    assert events["outputs"].metadata["succeeded"].value == 39
    routes = events["outputs"].metadata["by_route"].value
    assert sum(r.data["items"] for r in routes.records) == 39
    holds = events["settlement"].metadata["holds"].value.records
    assert [(h.data["status"], h.data["captured"]) for h in holds] == [("settled", usd(paid))]
    assert events["settlement"].metadata["captured"].value == usd(paid)
    checks = {c.check_name: (c.passed, c.partition) for c in result.get_asset_check_evaluations()}
    assert checks == {name: (True, view.batch_id) for name in ("approved_and_funded", "every_item_accounted_once",
                      "no_failed_items", "ledger_matches_receipts", "reserve_covers_actual")}  # fmt: skip
    balance = engine.ledger.balance("demo")
    assert (balance.spent_usd_micros, balance.held_usd_micros) == (paid, 0)


def test_a_secret_given_to_the_configured_resource_is_what_the_engine_finds_during_the_run_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    resource = ConfiguredBatchRouter(stripe_api_key="sk_test_given")

    with resource.yield_for_execution(dg.build_init_resource_context()) as live:
        assert os.environ["STRIPE_SECRET_KEY"] == "sk_test_given"
        assert live.engine().settings.billing.stripe_api_key_env == "STRIPE_SECRET_KEY"

    assert "STRIPE_SECRET_KEY" not in os.environ
