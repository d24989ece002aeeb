"""A batch's life after the first run: the sweeper, re-execution, retrying failed items, status,
the daily usage report and two batches run side by side."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.reporting import usage_report
from batchrouter import cli
from batchrouter.access.actors import CLI
from batchrouter.batches import lifecycle
from batchrouter.batches.settlement import sweep
from batchrouter.core.batch_info import BatchInfo, load_batch
from batchrouter.core.config import SimulatorConfig, load_settings
from batchrouter.core.storage import Storage
from batchrouter.engine import BatchRouter
from batchrouter.money.ledger import Ledger, usd
from batchrouter.simulator import running_simulator
from pipelines.definitions import defs
from pipelines.partitions import batches
from pipelines.resources import ConfiguredBatchRouter

pytestmark = pytest.mark.dagster

WS = "acme"
CREDIT = 10_000_000
ALL_CHECKS_PASS = {
    "approved_and_funded": True,
    "every_item_accounted_once": True,
    "no_failed_items": True,
    "ledger_matches_receipts": True,
    "reserve_covers_actual": True,
}


@pytest.fixture(autouse=True)
def _fast_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_SIMULATOR__LATENCY_MS", "5")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def storage() -> Storage:
    return Storage(load_settings().storage)


@pytest.fixture
def ledger() -> Ledger:
    ledger = Ledger(load_settings().database)
    ledger.grant(WS, CREDIT, key="lifecycle-credit")
    return ledger


def manifest_csv(prompts: list[str], *, tag: str = "item") -> bytes:
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


def plain_prompts(n: int, tag: str = "note") -> list[str]:
    return [f"Summarise {tag} {i} in one line." for i in range(n)]


def new_batch(storage: Storage, instance: dg.DagsterInstance, data: bytes, name: str = "m.csv") -> BatchInfo:
    view = BatchRouter().batches.submit(data, filename=name, workspace=WS)
    instance.add_dynamic_partitions(batches.name, [view.batch_id])
    return load_batch(storage, view.batch_id)


def run_batch_job(instance: dg.DagsterInstance, info: BatchInfo) -> dg.ExecuteInProcessResult:
    """The whole batch job for the batch's partition, as a UI re-execution or a backfill runs it."""
    result = defs.resolve_job_def("batch_job").execute_in_process(instance=instance, partition_key=info.batch_id)
    assert result.success
    return result


def reserve_only(storage: Storage, info: BatchInfo, *, and_dispatch: bool = False) -> None:
    """Up to the reservation (or the dispatch), then stop: a run that died before settling."""
    engine = BatchRouter()
    data = storage.read_bytes(*info.folder("source", info.source_name))
    assert engine.batches.create(data, filename=info.source_name, workspace=WS, actor=CLI).state == "reserved"
    if and_dispatch:
        lifecycle.stage_dispatch(storage, engine.settings, engine.catalog, info)


def journal_ops(ledger: Ledger, batch_id: str) -> list[tuple[str, str]]:
    return [
        (row["op"], row["batch_id"])
        for row in ledger.history(WS)
        if row["batch_id"] and row["batch_id"].split("~r")[0] == batch_id
    ]


def chunk_files(storage: Storage, info: BatchInfo) -> list[str]:
    return storage.list(*info.folder("dispatch", "chunks"))


def receipts(storage: Storage, info: BatchInfo) -> pl.DataFrame:
    return storage.read_parquet(*info.folder("receipts.parquet"))


def status_of(storage: Storage, info: BatchInfo) -> dict:
    return storage.read_json(*info.folder("status.json"))


def age_status(storage: Storage, info: BatchInfo, by: timedelta) -> None:
    """Pretend the batch's last heartbeat was `by` ago: what a run that died long ago leaves behind."""
    record = status_of(storage, info)
    record["at"] = (datetime.now(UTC) - by).isoformat(timespec="seconds")
    storage.write_json(record, *info.folder("status.json"))


# -- the sweeper ------------------------------------------------------------------------------------


def test_sweeper_expires_the_hold_of_a_batch_whose_status_stopped_moving_and_leaves_a_live_one(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    dead = new_batch(storage, instance, manifest_csv(plain_prompts(3, "dead")), "dead.csv")
    live = new_batch(storage, instance, manifest_csv(plain_prompts(3, "live")), "live.csv")
    for info in (dead, live):
        reserve_only(storage, info)
    age_status(storage, dead, timedelta(hours=2))
    (dead_hold,) = ledger.batch_holds(dead.batch_id)
    (live_hold,) = ledger.batch_holds(live.batch_id)

    swept = sweep(storage, load_settings(), stale_after=timedelta(minutes=30))

    assert swept == [{"hold": dead.batch_id, "released_usd_micros": dead_hold.amount_usd_micros}]
    assert ledger.batch_holds(dead.batch_id)[0].status == "expired"
    assert ledger.batch_holds(live.batch_id)[0].status == "held"
    dead_status = status_of(storage, dead)
    assert (dead_status["status"], dead_status["hold"]) == ("failed", dead.batch_id)
    assert status_of(storage, live)["status"] == "reserved"
    balance = ledger.balance(WS)
    assert (balance.held_usd_micros, balance.available_usd_micros) == (
        live_hold.amount_usd_micros,
        CREDIT - live_hold.amount_usd_micros,
    )
    assert ledger.verify()["ok"]


def test_sweep_job_in_process_expires_a_dead_batch_using_the_configured_stale_after(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHROUTER_DISPATCH__STALE_AFTER_MINUTES", "10")
    dead = new_batch(storage, instance, manifest_csv(plain_prompts(2, "dead")), "dead.csv")
    fresh = new_batch(storage, instance, manifest_csv(plain_prompts(2, "fresh")), "fresh.csv")
    for info in (dead, fresh):
        reserve_only(storage, info)
    age_status(storage, dead, timedelta(minutes=11))
    age_status(storage, fresh, timedelta(minutes=9))

    result = defs.resolve_job_def("sweep_job").execute_in_process(instance=instance)

    assert result.success
    assert [h.status for h in ledger.batch_holds(dead.batch_id)] == ["expired"]
    assert [h.status for h in ledger.batch_holds(fresh.batch_id)] == ["held"]
    assert status_of(storage, dead)["status"] == "failed"
    assert ledger.verify()["ok"]


def test_a_swept_batch_run_again_reserves_a_new_round_and_settles_exactly_its_receipts(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    info = new_batch(storage, instance, manifest_csv(plain_prompts(3)))
    reserve_only(storage, info)
    age_status(storage, info, timedelta(hours=1))
    assert len(sweep(storage, load_settings(), stale_after=timedelta(minutes=30))) == 1

    run_batch_job(instance, info)

    holds = ledger.batch_holds(info.batch_id)
    assert [(h.batch_id, h.status) for h in holds] == [(info.batch_id, "expired"), (f"{info.batch_id}~r1", "settled")]
    assert sum(h.captured_usd_micros for h in holds) == receipts(storage, info)["cost_usd_micros"].sum() > 0
    assert ledger.balance(WS).held_usd_micros == 0
    assert ledger.verify()["ok"]


def test_a_run_that_died_after_dispatching_is_charged_its_receipts_once_when_run_again(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    info = new_batch(storage, instance, manifest_csv(plain_prompts(3)))
    reserve_only(storage, info, and_dispatch=True)  # outputs and receipts written, never settled
    age_status(storage, info, timedelta(hours=1))
    assert len(sweep(storage, load_settings(), stale_after=timedelta(minutes=30))) == 1
    chunks = chunk_files(storage, info)

    run_batch_job(instance, info)

    paid = receipts(storage, info)["cost_usd_micros"].sum()
    holds = ledger.batch_holds(info.batch_id)
    assert [(h.batch_id, h.status) for h in holds] == [(info.batch_id, "expired"), (f"{info.batch_id}~r1", "settled")]
    assert holds[1].amount_usd_micros == paid  # the new round reserves just the unsettled cost
    assert sum(h.captured_usd_micros for h in holds) == paid > 0
    assert chunk_files(storage, info) == chunks  # nothing was sent again
    assert ledger.balance(WS).spent_usd_micros == paid
    assert ledger.verify()["ok"]


# -- re-execution -----------------------------------------------------------------------------------


def test_materialising_a_batch_twice_reserves_and_settles_once_and_dispatches_nothing_again(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    info = new_batch(storage, instance, manifest_csv(plain_prompts(5)))
    run_batch_job(instance, info)
    chunks = chunk_files(storage, info)
    dispatch_files = storage.list(*info.folder("dispatch"))
    first_receipts = receipts(storage, info)
    balance = ledger.balance(WS)

    again = run_batch_job(instance, info)

    assert journal_ops(ledger, info.batch_id) == [("reserve", info.batch_id), ("settle", info.batch_id)]
    assert chunk_files(storage, info) == chunks
    assert storage.list(*info.folder("dispatch")) == dispatch_files  # no new health file: nothing was sent
    assert receipts(storage, info).equals(first_receipts)
    assert ledger.balance(WS) == balance
    (settled,) = [e for e in again.get_asset_materialization_events() if e.asset_key.path == ["settlement"]]
    assert len(settled.materialization.metadata["holds"].value.records) == 1  # no second round
    assert storage.read_json(*info.folder("settlement.json"))["already_settled"] is True
    checks = {c.check_name: c.passed for c in again.get_asset_check_evaluations()}
    assert checks == ALL_CHECKS_PASS


@pytest.fixture
def shared_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """One simulator across runs (it counts attempts per prompt), only the `openai` route, no fallback,
    two attempts per item with a tiny back-off."""
    with running_simulator(SimulatorConfig(latency_ms=5)) as url:
        config = tmp_path / "batchrouter.toml"
        config.write_text(
            f'[providers.openai]\nkind = "simulator"\nwire = "openai"\nbase_url = "{url}"\n\n'
            f'[workspaces.{WS}.policy]\nallowed_providers = ["openai"]\nmax_fallbacks = 0\n\n'
            "[dispatch]\nmax_attempts = 2\nbackoff_base_s = 0.01\n"
        )
        monkeypatch.setenv("BATCHROUTER_CONFIG", str(config))
        yield url


def simulator_requests(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/_stats", timeout=5) as response:
        return int(json.loads(response.read())["requests"])


def test_re_executing_a_batch_retries_only_its_failed_items_under_a_second_hold(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger, shared_simulator: str
) -> None:
    prompts = [
        *plain_prompts(3),
        "Transient trouble one [[sim:500*2]]",  # fails both attempts of the first run, then succeeds
        "Transient trouble two [[sim:500*2]]",
        "Always refused [[sim:400]]",  # a terminal error, every time
    ]
    info = new_batch(storage, instance, manifest_csv(prompts))
    run_batch_job(instance, info)
    first = receipts(storage, info)
    failed_ids = first.filter(pl.col("status") == "failed")["item_id"].to_list()
    assert failed_ids == ["item-3", "item-4", "item-5"]
    sent_before = simulator_requests(shared_simulator)

    rerun = run_batch_job(instance, info)

    # Only the three failed items were sent again, one request each.
    assert simulator_requests(shared_simulator) - sent_before == 3
    second = receipts(storage, info)
    assert second["status"].to_list() == ["succeeded"] * 5 + ["failed"]
    kept = ["item_id", "provider_request_id", "finished_at", "cost_usd_micros"]
    ok_first = first.filter(pl.col("status") == "succeeded").select(kept)
    assert second.filter(pl.col("item_id").is_in(ok_first["item_id"].implode())).select(kept).equals(ok_first)
    holds = ledger.batch_holds(info.batch_id)
    assert [(h.batch_id, h.status) for h in holds] == [(info.batch_id, "settled"), (f"{info.batch_id}~r1", "settled")]
    assert holds[1].amount_usd_micros == first.filter(pl.col("item_id").is_in(failed_ids))["reserve_usd_micros"].sum()
    assert holds[0].captured_usd_micros == first["cost_usd_micros"].sum()
    assert sum(h.captured_usd_micros for h in holds) == second["cost_usd_micros"].sum()
    assert ledger.balance(WS).spent_usd_micros == second["cost_usd_micros"].sum()
    assert ledger.verify()["ok"]
    checks = {c.check_name: c.passed for c in rerun.get_asset_check_evaluations()}
    assert checks == {**ALL_CHECKS_PASS, "no_failed_items": False}  # the one always refused


def test_a_terminally_failing_item_stays_failed_and_costs_nothing_across_rounds(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    info = new_batch(storage, instance, manifest_csv([*plain_prompts(2), "No way [[sim:400]]"]))
    run_batch_job(instance, info)
    run_batch_job(instance, info)

    final = receipts(storage, info)
    assert final["status"].to_list() == ["succeeded", "succeeded", "failed"]
    outputs = storage.read_parquet(*info.folder("outputs.parquet"))
    assert outputs.filter(pl.col("status") == "failed")["error_code"].to_list() == ["http_400"]
    holds = ledger.batch_holds(info.batch_id)
    assert [h.batch_id for h in holds] == [info.batch_id, f"{info.batch_id}~r1"]
    assert holds[1].captured_usd_micros == 0
    assert sum(h.captured_usd_micros for h in holds) == final["cost_usd_micros"].sum()
    assert ledger.verify()["ok"]


# -- status -----------------------------------------------------------------------------------------


def test_status_json_shows_status_items_quote_vs_actual_cost_by_route_and_holds(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    data = manifest_csv([*plain_prompts(3), "Refused [[sim:400]]", "   "])  # one failure, one rejection
    info = new_batch(storage, instance, data)
    run_batch_job(instance, info)
    capsys.readouterr()

    assert cli.main(["status", info.batch_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)

    final = receipts(storage, info)
    quoted = storage.read_json(*info.folder("quote.json"))
    assert shown["batch_id"] == info.batch_id
    assert shown["status"] == "partially_failed"
    assert shown["items_by_status"] == {"failed": 1, "rejected": 1, "succeeded": 3}
    assert shown["quote"]["reserve_usd_micros"] == quoted["reserve_usd_micros"]
    assert shown["quote"]["expected_usd_micros"] == quoted["expected_usd_micros"]
    assert (shown["quote"]["accepted"], shown["quote"]["rejected"]) == (4, 1)
    assert shown["actual_usd_micros"] == final["cost_usd_micros"].sum()
    assert shown["cost_by_route"] == [
        {"route": "openai:gpt-4o-mini", "items": 4, "cost_usd_micros": final["cost_usd_micros"].sum()}
    ]
    (hold,) = shown["holds"]
    assert hold == {
        "hold": info.batch_id,
        "status": "settled",
        "reserved_usd_micros": quoted["reserve_usd_micros"],
        "captured_usd_micros": final["cost_usd_micros"].sum(),
    }


# -- usage report -----------------------------------------------------------------------------------


def test_usage_report_for_today_writes_the_days_usage_with_the_receipts_total(
    storage: Storage, instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    info = new_batch(storage, instance, manifest_csv([*plain_prompts(3), "Refused [[sim:400]]"]))
    run_batch_job(instance, info)
    today = datetime.now(UTC).date().isoformat()
    paid = receipts(storage, info)

    # Today's partition is not yet a partition of the daily definition (the schedule reports whole
    # days), so the asset is invoked directly with today's key.
    with dg.build_asset_context(partition_key=today, resources={"batchrouter": ConfiguredBatchRouter()}) as context:
        result = usage_report(context)

    report = storage.read_parquet("reports", "usage_daily", f"day={today}", "usage.parquet")
    assert report["cost_usd_micros"].sum() == paid["cost_usd_micros"].sum() > 0
    assert (report["items"].sum(), report["succeeded"].sum()) == (4, 3)
    assert set(report["workspace"]) == {WS}
    assert result.metadata["cost"] == usd(int(paid["cost_usd_micros"].sum()))


# -- two batches side by side -----------------------------------------------------------------------


def test_two_manifests_run_by_two_concurrent_cli_processes_both_complete_and_the_ledger_verifies(
    storage: Storage, ledger: Ledger, tmp_path: Path
) -> None:
    folder = Path(storage.path("manifests", WS))
    folder.mkdir(parents=True)
    paths = []
    for tag in ("north", "south"):
        path = folder / f"{tag}.csv"
        path.write_bytes(manifest_csv(plain_prompts(6, tag), tag=tag))
        paths.append(path)

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "batchrouter.cli", "run", str(path), "--workspace", WS, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=os.environ.copy(),
            cwd=tmp_path,
        )
        for path in paths
    ]
    outputs = []
    deadline = time.monotonic() + 120
    for proc in procs:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert proc.returncode == 0, err.decode()[-2000:]
        outputs.append(json.loads(out))

    assert len({o["batch_id"] for o in outputs}) == 2
    spent = 0
    for summary, tag in zip(outputs, ("north", "south"), strict=True):
        assert (summary["status"], summary["succeeded"], summary["failed"]) == ("completed", 6, 0)
        info = load_batch(storage, summary["batch_id"])
        assert info.source_name == f"{tag}.csv"
        outs = storage.read_parquet(*info.folder("outputs.parquet"))
        assert outs["item_id"].to_list() == [f"{tag}-{i}" for i in range(6)]
        assert outs["output_text"].null_count() == 0
        paid = receipts(storage, info)["cost_usd_micros"].sum()
        assert summary["settlement"]["captured_usd_micros"] == paid
        spent += paid
    balance = ledger.balance(WS)
    assert (balance.spent_usd_micros, balance.held_usd_micros) == (spent, 0)
    assert ledger.verify()["ok"]
