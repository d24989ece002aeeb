"""What a run says about its batch: the run's status, its `batchrouter/state` tag and the partition's
checks, for each way a batch can end a run; and checks that stay on their own batch's partition."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from assets.batch import STATE_TAG, batch
from batchrouter.access.actors import CLI
from batchrouter.batches.service import Batches
from batchrouter.core.errors import BatchRouterError
from batchrouter.engine import BatchRouter
from pipelines.partitions import batches
from pipelines.resources import SimulatedBatchRouter

pytestmark = pytest.mark.dagster

WS = "acme"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def resource(tmp_path: Path) -> SimulatedBatchRouter:
    return SimulatedBatchRouter(root=str(tmp_path))


def manifest(prompts: list[str], tag: str = "item") -> bytes:
    frame = pl.DataFrame(
        {
            "item_id": [f"{tag}-{i}" for i in range(len(prompts))],
            "model": ["gpt-4o-mini"] * len(prompts),
            "prompt": prompts,
            "max_tokens": [64] * len(prompts),
        }
    )
    buf = io.BytesIO()
    frame.write_csv(buf)
    return buf.getvalue()


def submit(resource: SimulatedBatchRouter, instance: dg.DagsterInstance, data: bytes, *, credit: int) -> str:
    engine = BatchRouter(resource.settings())
    if credit:
        engine.ledger.grant(WS, credit, key=f"credit-{credit}")
    batch_id = engine.batches.submit(data, filename="m.csv", workspace=WS).batch_id
    instance.add_dynamic_partitions(batches.name, [batch_id])
    return batch_id


def run(resource: SimulatedBatchRouter, instance: dg.DagsterInstance, batch_id: str) -> dg.ExecuteInProcessResult:
    return dg.materialize([batch], instance=instance, partition_key=batch_id, resources={"batchrouter": resource},
                          raise_on_error=False)  # fmt: skip


def checks(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str]]:
    return {c.check_name: (c.passed, c.severity.value) for c in result.get_asset_check_evaluations()}


def materialised(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


OK = (True, "ERROR")
PASSING = {"approved_and_funded": OK, "every_item_accounted_once": OK, "no_failed_items": (True, "WARN"),
           "ledger_matches_receipts": OK, "reserve_covers_actual": (True, "WARN")}  # fmt: skip


def test_a_completed_batch_is_a_successful_run_tagged_completed_with_every_check_passing(
    resource: SimulatedBatchRouter, instance: dg.DagsterInstance
) -> None:
    batch_id = submit(resource, instance, manifest(["Say hi.", "Say bye."]), credit=1_000_000)

    result = run(resource, instance, batch_id)

    assert result.success
    assert instance.get_run_by_id(result.run_id).tags[STATE_TAG] == "completed"
    assert materialised(result) == {"quote", "outputs", "settlement"}
    assert checks(result) == PASSING


def test_a_partially_failed_batch_succeeds_tagged_partially_failed_with_a_warning_on_failed_items(
    resource: SimulatedBatchRouter, instance: dg.DagsterInstance
) -> None:
    batch_id = submit(resource, instance, manifest(["Say hi.", "Refused [[sim:400]]"]), credit=1_000_000)

    result = run(resource, instance, batch_id)

    assert result.success  # the answers are there and paid for; re-executing retries the failed item
    assert instance.get_run_by_id(result.run_id).tags[STATE_TAG] == "partially_failed"
    assert materialised(result) == {"quote", "outputs", "settlement"}
    assert checks(result) == {**PASSING, "no_failed_items": (False, "WARN")}
    (outputs,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["outputs"]]
    failures = outputs.materialization.metadata["failures"].value
    assert [(r.data["error_code"], r.data["len"]) for r in failures.records] == [("http_400", 1)]


def test_a_batch_where_every_item_failed_is_a_failed_run_tagged_failed(
    resource: SimulatedBatchRouter, instance: dg.DagsterInstance
) -> None:
    batch_id = submit(resource, instance, manifest(["No [[sim:400]]", "Never [[sim:400]]"]), credit=1_000_000)

    result = run(resource, instance, batch_id)

    assert not result.success
    assert instance.get_run_by_id(result.run_id).tags[STATE_TAG] == "failed"
    assert materialised(result) == {"quote", "outputs", "settlement"}
    assert checks(result)["no_failed_items"] == (False, "ERROR")
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "2 x http_400" in failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]


def test_a_batch_over_the_approval_limit_succeeds_tagged_awaiting_approval_with_only_its_quote(
    resource: SimulatedBatchRouter, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"BATCHROUTER_WORKSPACES__{WS.upper()}__AUTO_APPROVE_MAX_USD", "0.000001")
    batch_id = submit(resource, instance, manifest(["Say hi.", "Say bye."]), credit=1_000_000)

    held = run(resource, instance, batch_id)

    assert held.success
    assert instance.get_run_by_id(held.run_id).tags[STATE_TAG] == "awaiting_approval"
    assert materialised(held) == {"quote"}
    assert checks(held) == {"approved_and_funded": (False, "WARN")}

    BatchRouter(resource.settings()).batches.approve(batch_id, actor=CLI)
    resumed = run(resource, instance, batch_id)

    assert resumed.success
    assert instance.get_run_by_id(resumed.run_id).tags[STATE_TAG] == "completed"
    assert checks(resumed) == PASSING


def test_a_batch_short_of_credit_is_a_failed_run_tagged_insufficient_credits_saying_what_is_missing(
    resource: SimulatedBatchRouter, instance: dg.DagsterInstance
) -> None:
    batch_id = submit(resource, instance, manifest(["Say hi.", "Say bye."]), credit=1)

    result = run(resource, instance, batch_id)

    assert not result.success
    assert instance.get_run_by_id(result.run_id).tags[STATE_TAG] == "insufficient_credits"
    assert materialised(result) == {"quote"}
    assert checks(result) == {"approved_and_funded": (False, "ERROR")}
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    description = failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    assert "missing" in description and "credits" in description
    # No retries: more credit, not another attempt, is what it needs.
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def test_a_batch_cancelled_before_its_run_succeeds_tagged_cancelled_and_sends_nothing(
    resource: SimulatedBatchRouter, instance: dg.DagsterInstance
) -> None:
    batch_id = submit(resource, instance, manifest(["Say hi.", "Say bye."]), credit=1_000_000)
    BatchRouter(resource.settings()).batches.cancel(batch_id, actor=CLI)

    result = run(resource, instance, batch_id)

    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert instance.get_run_by_id(result.run_id).tags[STATE_TAG] == "cancelled"
    assert materialised(result) == set()  # cancelled before it was quoted: nothing to show
    assert not (Path(resource.root) / "bucket" / "batches" / batch_id / "receipts.parquet").exists()


def test_one_batchs_failed_check_stays_on_its_partition_and_the_other_batchs_checks_pass(
    resource: SimulatedBatchRouter, instance: dg.DagsterInstance
) -> None:
    good = submit(resource, instance, manifest(["Say hi.", "Say bye."], tag="good"), credit=1_000_000)
    bad = submit(resource, instance, manifest(["Say hi.", "Refused [[sim:400]]"], tag="bad"), credit=0)
    run(resource, instance, good)
    run(resource, instance, bad)  # the later run: an unpartitioned check would now show its failure for both

    key = dg.AssetCheckKey(dg.AssetKey("outputs"), "no_failed_items")
    status = {
        info.partition_key: info.latest_execution_status.value
        for info in instance.event_log_storage.get_asset_check_partition_info([key])
    }
    assert status == {good: "SUCCEEDED", bad: "FAILED"}
    accounted = dg.AssetCheckKey(dg.AssetKey("outputs"), "every_item_accounted_once")
    assert {i.latest_execution_status.value for i in instance.event_log_storage.get_asset_check_partition_info(
        [accounted], partition_keys=[good, bad])} == {"SUCCEEDED"}  # fmt: skip


def test_a_retryable_engine_error_runs_the_step_again_and_the_batch_completes(
    resource: SimulatedBatchRouter, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Flaky(BatchRouterError):
        code = "flaky"
        retryable = True

    calls: list[str] = []
    advance = Batches.advance

    def flaky_once(self: Batches, batch_id: str, **options: Any) -> Any:
        calls.append(batch_id)
        if len(calls) == 1:
            raise Flaky("the bucket did not answer in time")
        return advance(self, batch_id, **options)

    monkeypatch.setattr(Batches, "advance", flaky_once)
    batch_id = submit(resource, instance, manifest(["Say hi."]), credit=1_000_000)

    result = run(resource, instance, batch_id)

    assert result.success
    assert calls == [batch_id, batch_id]
    assert [e.event_type for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY] == [
        dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert instance.get_run_by_id(result.run_id).tags[STATE_TAG] == "completed"
