"""Operating from the bucket: the manifest sensor turns dropped files into runs, the approval sensor
resumes batches held at the approval gate."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from assets.batch import STATE_TAG, batch
from batchrouter import cli
from batchrouter.access.accounts import Accounts
from batchrouter.core.batch_info import batch_id_for, load_batch
from batchrouter.core.config import load_settings
from batchrouter.core.storage import Storage
from batchrouter.money.ledger import Ledger
from pipelines.definitions import defs
from pipelines.partitions import batches
from pipelines.resources import ConfiguredBatchRouter
from pipelines.sensors import PROVIDER_TAG, approval_sensor, manifest_sensor

pytestmark = pytest.mark.dagster

WS = "acme"


@pytest.fixture(autouse=True)
def _fast_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_SIMULATOR__LATENCY_MS", "5")


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    return tmp_path / "bucket"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def rows(n: int, tag: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [f"{tag}-{i}" for i in range(n)],
            "model": ["gpt-4o-mini"] * n,
            "prompt": [f"Summarise note {i} of {tag} in one line." for i in range(n)],
            "max_tokens": [64] * n,
        }
    )


def csv_bytes(n: int = 3, tag: str = "csv") -> bytes:
    buf = io.BytesIO()
    rows(n, tag).write_csv(buf)
    return buf.getvalue()


def parquet_bytes(n: int = 3, tag: str = "pq") -> bytes:
    buf = io.BytesIO()
    rows(n, tag).write_parquet(buf)
    return buf.getvalue()


def jsonl_bytes(n: int = 3, tag: str = "jsonl") -> bytes:
    lines = [
        json.dumps(
            {
                "custom_id": f"{tag}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"Hi {i}"}],
                    "max_tokens": 32,
                },
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def drop(bucket: Path, name: str, data: bytes, *, workspace: str = WS, mtime: float | None = None) -> Path:
    path = bucket / "manifests" / workspace / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def expected_batch_id(name: str, data: bytes, workspace: str = WS) -> str:
    return batch_id_for(workspace, hashlib.sha256(data).hexdigest())


def tick(instance: dg.DagsterInstance, cursor: str | None = None, sensor: Any = manifest_sensor) -> dg.SensorResult:
    resources = {"batchrouter": ConfiguredBatchRouter()}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def run_keys(result: dg.SensorResult) -> list[str]:
    return [r.run_key for r in result.run_requests or []]


def added_partitions(result: dg.SensorResult) -> list[str]:
    return [key for req in result.dynamic_partitions_requests or [] for key in req.partition_keys]


def materialise(
    instance: dg.DagsterInstance, batch_id: str, *, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition(batches.name, batch_id):
        instance.add_dynamic_partitions(batches.name, [batch_id])
    return dg.materialize(
        [batch],
        instance=instance,
        partition_key=batch_id,
        resources={"batchrouter": ConfiguredBatchRouter()},
        raise_on_error=raise_on_error,
    )


# -- manifest_sensor -------------------------------------------------------------------------------


def test_each_new_csv_parquet_and_jsonl_manifest_gets_one_run_keyed_by_its_batch_id(
    bucket: Path, instance: dg.DagsterInstance
) -> None:
    files = {"a.csv": csv_bytes(), "b.parquet": parquet_bytes(), "c.jsonl": jsonl_bytes()}
    for i, (name, data) in enumerate(files.items()):
        drop(bucket, name, data, mtime=1_800_000_000 + i)

    result = tick(instance)

    expected = [expected_batch_id(name, data) for name, data in files.items()]
    assert run_keys(result) == expected
    assert [r.partition_key for r in result.run_requests or []] == expected
    assert [r.tags["batchrouter/source"] for r in result.run_requests or []] == [f"manifests/{WS}/{n}" for n in files]
    assert {r.tags[STATE_TAG] for r in result.run_requests or []} == {"submitted"}
    assert added_partitions(result) == expected
    assert all(r.partitions_def_name == batches.name for r in result.dynamic_partitions_requests or [])
    for batch_id, (name, data) in zip(expected, files.items(), strict=True):
        assert (bucket / "batches" / batch_id / "source" / name).read_bytes() == data


def test_a_run_is_tagged_with_each_provider_its_batch_may_use_so_per_provider_run_limits_hold_it(
    bucket: Path, instance: dg.DagsterInstance
) -> None:
    claude = b"item_id,model,prompt\n1,claude-haiku-4-5,hello\n"
    drop(bucket, "a.csv", csv_bytes(), mtime=1_800_000_000)
    drop(bucket, "b.csv", claude, mtime=1_800_000_001)

    a, b = tick(instance).run_requests or []

    providers = lambda r: sorted(k.removeprefix(PROVIDER_TAG) for k in r.tags if k.startswith(PROVIDER_TAG))  # noqa: E731
    assert providers(a) == ["openai", "openrouter"]  # gpt-4o-mini, and its fallback route
    assert providers(b) == ["anthropic"]


def test_a_retick_with_the_returned_cursor_requests_nothing(bucket: Path, instance: dg.DagsterInstance) -> None:
    drop(bucket, "a.csv", csv_bytes())
    drop(bucket, "b.jsonl", jsonl_bytes())
    first = tick(instance)
    assert len(run_keys(first)) == 2

    again = tick(instance, first.cursor)

    assert run_keys(again) == []
    assert added_partitions(again) == []
    assert again.cursor == first.cursor


def test_a_restart_from_an_older_cursor_requests_the_same_run_keys(bucket: Path, instance: dg.DagsterInstance) -> None:
    drop(bucket, "a.csv", csv_bytes(tag="one"), mtime=1_800_000_000)
    first = tick(instance)
    drop(bucket, "b.csv", csv_bytes(tag="two"), mtime=1_800_000_100)
    second = tick(instance, first.cursor)
    assert len(run_keys(first)) == len(run_keys(second)) == 1
    batch_folders = sorted(p.name for p in (bucket / "batches").iterdir())

    replay_from_first = tick(instance, first.cursor)
    replay_from_scratch = tick(instance, None)

    # The same run keys: Dagster skips a run request whose run key it has seen, so a replay is harmless.
    assert run_keys(replay_from_first) == run_keys(second)
    assert run_keys(replay_from_scratch) == run_keys(first) + run_keys(second)
    assert sorted(p.name for p in (bucket / "batches").iterdir()) == batch_folders


def test_files_sharing_one_mtime_are_neither_missed_nor_duplicated(bucket: Path, instance: dg.DagsterInstance) -> None:
    same = 1_800_000_000.0
    a, b = csv_bytes(tag="a"), csv_bytes(tag="b")
    drop(bucket, "a.csv", a, mtime=same)
    drop(bucket, "b.csv", b, mtime=same)
    first = tick(instance)
    assert sorted(run_keys(first)) == sorted([expected_batch_id("a.csv", a), expected_batch_id("b.csv", b)])

    # A file that lands later but carries the very same timestamp.
    c = csv_bytes(tag="c")
    drop(bucket, "c.csv", c, mtime=same)
    second = tick(instance, first.cursor)
    third = tick(instance, second.cursor)

    assert run_keys(second) == [expected_batch_id("c.csv", c)]
    assert run_keys(third) == []


@pytest.mark.parametrize("name", ["notes.txt", "diagram.png"])
def test_a_file_that_is_not_a_manifest_gets_no_run_and_a_log_line(
    bucket: Path, instance: dg.DagsterInstance, capfd: pytest.CaptureFixture[str], name: str
) -> None:
    drop(bucket, name, b"\x89PNG\r\n\x1a\n not a manifest")

    result = tick(instance)

    assert run_keys(result) == []
    assert added_partitions(result) == []
    assert not (bucket / "batches").exists()
    assert f"ignoring manifests/{WS}/{name}: not a manifest" in capfd.readouterr().err
    assert run_keys(tick(instance, result.cursor)) == []


def test_hidden_files_and_files_in_nested_folders_get_no_run(bucket: Path, instance: dg.DagsterInstance) -> None:
    drop(bucket, ".a.csv.part", csv_bytes())  # an upload in progress
    drop(bucket, "archive/old.csv", csv_bytes(tag="old"))

    result = tick(instance)

    assert run_keys(result) == []
    assert not (bucket / "batches").exists()


def test_a_manifest_moved_in_with_an_mtime_older_than_the_cursor_still_gets_a_run(
    bucket: Path, instance: dg.DagsterInstance
) -> None:
    now = time.time()
    drop(bucket, "today.csv", csv_bytes(tag="today"), mtime=now - 60)
    first = tick(instance)
    assert len(run_keys(first)) == 1
    old = csv_bytes(tag="last-week")
    # As `mv` or `cp -p` leave it: modified a week ago, arrived just now.
    drop(bucket, "last-week.csv", old, mtime=now - 7 * 86_400)

    result = tick(instance, first.cursor)

    assert run_keys(result) == [expected_batch_id("last-week.csv", old)]


def test_an_unusable_manifest_gets_a_run_whose_manifest_asset_quarantines_it(
    bucket: Path, instance: dg.DagsterInstance
) -> None:
    data = rows(3, "bad").drop("model").write_csv().encode()  # the required `model` column is missing
    dropped = drop(bucket, "bad.csv", data)

    result = tick(instance)
    (batch_id,) = run_keys(result)
    run = materialise(instance, batch_id, raise_on_error=False)

    assert not run.success
    failed = [e.step_key for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failed == ["batch"]
    assert run.asset_materializations_for_node("batch") == []
    assert instance.get_run_by_id(run.run_id).tags[STATE_TAG] == "unusable_manifest"
    quarantined = sorted((bucket / "quarantine" / WS).iterdir())
    assert [p.name.endswith("-bad.csv") for p in quarantined] == [True, False]
    original, report = quarantined
    assert report.name == f"{original.name}.error.txt"
    assert original.read_bytes() == data
    assert "model" in report.read_text()
    assert not dropped.exists()
    status = json.loads((bucket / "batches" / batch_id / "status.json").read_text())
    assert status["status"] == "unusable_manifest"
    assert not (bucket / "batches" / batch_id / "quote.json").exists()


def test_a_manifest_under_an_invalid_workspace_name_does_not_block_other_manifests(
    bucket: Path, instance: dg.DagsterInstance
) -> None:
    bad = drop(bucket, "orders.csv", csv_bytes(tag="bad"), workspace="Acme Corp!", mtime=1_800_000_000)
    good = csv_bytes(tag="good")
    drop(bucket, "orders.csv", good, mtime=1_800_000_001)

    result = tick(instance)

    assert run_keys(result) == [expected_batch_id("orders.csv", good)]
    assert run_keys(tick(instance, result.cursor)) == []
    assert not bad.exists()
    (report,) = (bucket / "quarantine" / "Acme Corp!").glob("*.error.txt")
    assert "not a valid name" in report.read_text()


def test_a_manifest_dropped_for_a_suspended_workspace_is_quarantined_without_a_run(
    bucket: Path, instance: dg.DagsterInstance, capfd: pytest.CaptureFixture[str]
) -> None:
    Accounts(load_settings().database).set_suspended(WS, True, reason="unpaid invoice", actor="ops")
    data = csv_bytes(tag="held")
    dropped = drop(bucket, "held.csv", data)
    drop(bucket, "fine.csv", csv_bytes(tag="fine"), workspace="other-ws")

    result = tick(instance)

    assert [r.tags["batchrouter/workspace"] for r in result.run_requests or []] == ["other-ws"]
    assert not dropped.exists()
    original, report = sorted((bucket / "quarantine" / WS).iterdir())
    assert original.read_bytes() == data
    assert report.name == f"{original.name}.error.txt"
    assert "suspended" in report.read_text()
    assert f"quarantined manifests/{WS}/held.csv: workspace suspended" in capfd.readouterr().err
    assert run_keys(tick(instance, result.cursor)) == []


# -- approval gate and approval_sensor --------------------------------------------------------------


def _run_batch_job(instance: dg.DagsterInstance, batch_id: str) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(batches.name, [batch_id])
    return defs.resolve_job_def("batch_job").execute_in_process(instance=instance, partition_key=batch_id)


@pytest.fixture
def strict_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workspace `acme` auto-approves nothing above 1 micro-dollar, and has plenty of credit."""
    monkeypatch.setenv(f"BATCHROUTER_WORKSPACES__{WS.upper()}__AUTO_APPROVE_MAX_USD", "0.000001")
    Ledger(load_settings().database).grant(WS, 10_000_000, key="sensor-tests")


def _held_batch(bucket: Path, instance: dg.DagsterInstance) -> tuple[str, dg.ExecuteInProcessResult]:
    data = csv_bytes(4, tag="big")
    drop(bucket, "big.csv", data)
    (batch_id,) = run_keys(tick(instance))
    return batch_id, _run_batch_job(instance, batch_id)


@pytest.mark.usefixtures("strict_limit")
def test_a_batch_over_the_auto_approval_limit_stops_at_reservation_awaiting_approval(
    bucket: Path, instance: dg.DagsterInstance
) -> None:
    batch_id, run = _held_batch(bucket, instance)

    assert run.success
    assert instance.get_run_by_id(run.run_id).tags[STATE_TAG] == "awaiting_approval"
    materialised = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
    assert materialised == {"quote"}
    (check,) = run.get_asset_check_evaluations()
    assert (check.check_name, check.passed, check.severity) == (
        "approved_and_funded",
        False,
        dg.AssetCheckSeverity.WARN,
    )
    assert f"batchrouter approve {batch_id}" in (check.description or "")
    folder = bucket / "batches" / batch_id
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "awaiting_approval"
    assert f"batchrouter approve {batch_id}" in status["message"]
    quote_summary = json.loads((folder / "quote.json").read_text())
    assert status["reserve_usd_micros"] == quote_summary["reserve_usd_micros"] > 1
    assert Ledger(load_settings().database).batch_holds(batch_id) == []
    assert not (folder / "receipts.parquet").exists()
    assert not (folder / "dispatch").exists()


@pytest.mark.usefixtures("strict_limit")
def test_approval_sensor_requests_nothing_until_approved_then_a_batch_job_run_settles_the_batch(
    bucket: Path, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    batch_id, _ = _held_batch(bucket, instance)
    assert run_keys(tick(instance, sensor=approval_sensor)) == []

    assert cli.main(["approve", batch_id, "--by", "finance"]) == 0
    assert f"approved batch {batch_id}" in capsys.readouterr().out
    result = tick(instance, sensor=approval_sensor)

    assert run_keys(result) == [f"{batch_id}:approved"]
    assert [r.partition_key for r in result.run_requests or []] == [batch_id]
    tags = {k for r in result.run_requests or [] for k in r.tags}
    assert tags == {PROVIDER_TAG + "openai", PROVIDER_TAG + "openrouter"}
    resumed = defs.resolve_job_def("batch_job").execute_in_process(instance=instance, partition_key=batch_id)
    assert resumed.success
    assert instance.get_run_by_id(resumed.run_id).tags[STATE_TAG] == "completed"
    folder = bucket / "batches" / batch_id
    assert json.loads((folder / "status.json").read_text())["status"] == "completed"
    receipts = pl.read_parquet(folder / "receipts.parquet")
    assert receipts["status"].to_list() == ["succeeded"] * 4
    assert (folder / "outputs.parquet").exists()
    (hold,) = Ledger(load_settings().database).batch_holds(batch_id)
    assert (hold.status, hold.captured_usd_micros) == ("settled", receipts["cost_usd_micros"].sum())
    # Past the gate, the batch no longer waits: the sensor has nothing more to ask for.
    assert run_keys(tick(instance, sensor=approval_sensor)) == []


def test_an_object_dropped_at_approvals_batch_id_approves_a_batch_held_by_the_config_file_limit(
    bucket: Path, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "batchrouter.toml"
    config.write_text(f'[workspaces.{WS}]\nauto_approve_max_usd = "0.000001"\n')
    monkeypatch.setenv("BATCHROUTER_CONFIG", str(config))
    Ledger(load_settings().database).grant(WS, 10_000_000, key="sensor-tests")
    batch_id, run = _held_batch(bucket, instance)
    assert json.loads((bucket / "batches" / batch_id / "status.json").read_text())["status"] == "awaiting_approval"
    assert run_keys(tick(instance, sensor=approval_sensor)) == []

    (bucket / "approvals").mkdir()
    (bucket / "approvals" / batch_id).write_bytes(b"")
    result = tick(instance, sensor=approval_sensor)

    assert run_keys(result) == [f"{batch_id}:approved"]
    resumed = defs.resolve_job_def("batch_job").execute_in_process(instance=instance, partition_key=batch_id)
    assert resumed.success
    assert json.loads((bucket / "batches" / batch_id / "status.json").read_text())["status"] == "completed"
    assert (bucket / "batches" / batch_id / "receipts.parquet").exists()


@pytest.mark.usefixtures("strict_limit")
def test_an_awaiting_marker_whose_batch_folder_is_gone_does_not_block_other_approvals(
    bucket: Path, instance: dg.DagsterInstance
) -> None:
    batch_id, _ = _held_batch(bucket, instance)
    assert cli.main(["approve", batch_id]) == 0
    # A batch removed from the bucket by hand (or by a lifecycle rule) while it waited.
    (bucket / "awaiting_approval" / "acme-gone-0123456789").write_bytes(b"")

    result = tick(instance, sensor=approval_sensor)

    assert run_keys(result) == [f"{batch_id}:approved"]


def test_a_batch_within_the_auto_approval_limit_runs_through_without_waiting(
    bucket: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"BATCHROUTER_WORKSPACES__{WS.upper()}__AUTO_APPROVE_MAX_USD", "5")
    Ledger(load_settings().database).grant(WS, 10_000_000, key="sensor-tests")
    drop(bucket, "small.csv", csv_bytes(2, tag="small"))
    (batch_id,) = run_keys(tick(instance))

    run = _run_batch_job(instance, batch_id)

    assert run.success
    assert json.loads((bucket / "batches" / batch_id / "status.json").read_text())["status"] == "completed"
    assert not (bucket / "awaiting_approval" / batch_id).exists()
    assert run_keys(tick(instance, sensor=approval_sensor)) == []


def test_a_manifest_under_another_workspace_folder_becomes_a_batch_of_that_workspace(
    bucket: Path, instance: dg.DagsterInstance
) -> None:
    data = csv_bytes()
    drop(bucket, "a.csv", data, workspace="other-ws")
    (batch_id,) = run_keys(tick(instance))
    info = load_batch(Storage(load_settings().storage), batch_id)
    assert (info.workspace, info.source_key) == ("other-ws", "manifests/other-ws/a.csv")
