"""The batch lane under Dagster: a run submits provider batches and ends, waiting on its providers (the
Runs list says so); the provider-batch sensor asks for the partition's next run once they have answered,
and that run collects, settles and completes the batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.batch import STATE_TAG
from batchrouter import cli
from batchrouter.core.config import SimulatorConfig
from batchrouter.simulator import running_simulator
from pipelines.definitions import defs
from pipelines.resources import ConfiguredBatchRouter
from pipelines.sensors import manifest_sensor, provider_batch_sensor

pytestmark = pytest.mark.dagster

WS = "acme"
SCALE = 1440.0
DEADLINE_S = 120.0


@pytest.fixture
def simulator_url() -> Iterator[str]:
    config = SimulatorConfig(latency_ms=0, max_output_words=12, seed=5, batch_time_scale=SCALE,
                             batch_validating_s=60, batch_median_s=600, batch_sigma=0.3)  # fmt: skip
    with running_simulator(config) as url:
        yield url


@pytest.fixture
def configured(simulator_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The workspace's items are due within a day by default; its providers are the simulator above."""
    path = tmp_path / "batchrouter.toml"
    providers = "".join(f'[providers.{p}]\nkind = "simulator"\nwire = "{p}"\nbase_url = "{simulator_url}"\n\n'
                        for p in ("openai", "anthropic"))  # fmt: skip
    path.write_text(providers + f'[lanes]\ntime_scale = {SCALE}\n\n[workspaces.{WS}]\ndefault_deadline = "24h"\n')
    monkeypatch.setenv("BATCHROUTER_CONFIG", str(path))
    return path


def tick(instance: dg.DagsterInstance, sensor: dg.SensorDefinition) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources={"batchrouter": ConfiguredBatchRouter()}) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


@pytest.mark.usefixtures("configured")
def test_a_waiting_batch_is_resumed_by_the_provider_batch_sensor_and_completes(tmp_path: Path) -> None:
    assert cli.main(["credits", "grant", "--workspace", WS, "--usd", "2"]) == 0
    bucket = Path(__import__("os").environ["BATCHROUTER_STORAGE__ROOT"])
    drop = bucket / "manifests" / WS / "notes.csv"
    drop.parent.mkdir(parents=True)
    drop.write_text("item_id,model,prompt\n" + "".join(f"n{i},gpt-4o-mini,Summarise note {i}.\n" for i in range(5)))

    with dg.DagsterInstance.ephemeral() as instance:
        (request,) = tick(instance, manifest_sensor).run_requests or []
        instance.add_dynamic_partitions("batches", [request.partition_key])
        batch_id = request.partition_key
        job = defs.resolve_job_def("batch_job")

        first = job.execute_in_process(instance=instance, partition_key=batch_id)

        assert first.success  # waiting on a provider is where the batch should be
        assert instance.get_run_by_id(first.run_id).tags[STATE_TAG] == "waiting_on_provider"  # type: ignore[union-attr]
        (quote,) = [e.materialization for e in first.get_asset_materialization_events()]
        assert quote.asset_key == dg.AssetKey("quote")
        lanes = quote.metadata["lanes"].value.records  # type: ignore[attr-defined]
        assert [(r.data["lane"], r.data["waiting"]) for r in lanes] == [("batch", 5)]
        assert "provider_batches" in quote.metadata and "time_left_s" in quote.metadata

        deadline = time.monotonic() + DEADLINE_S
        while not (requests := tick(instance, provider_batch_sensor).run_requests):
            assert time.monotonic() < deadline, "the provider-batch sensor asked for no run in time"
            time.sleep(0.5)  # the sensor's own tick interval, shortened: the deadline bounds the loop
        assert [r.partition_key for r in requests] == [batch_id]
        tags = {k for r in requests for k in r.tags}
        assert tags == {"batchrouter/provider.openai", "batchrouter/provider.openrouter"}

        second = job.execute_in_process(instance=instance, partition_key=batch_id, tags=requests[0].tags)
        assert second.success
        assert instance.get_run_by_id(second.run_id).tags[STATE_TAG] == "completed"  # type: ignore[union-attr]

    checks = {c.check_name: c.passed for c in second.get_asset_check_evaluations()}
    assert all(checks.values()) and "every_item_accounted_once" in checks
    receipts = pl.read_parquet(bucket / "batches" / batch_id / "receipts.parquet")
    assert set(receipts["lane"]) == {"batch"} and set(receipts["status"]) == {"succeeded"}
