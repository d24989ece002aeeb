"""The built-in simulator outlives a run: provider batches one process made are there for the next.

Found with the official SDKs against `batchrouter serve` (issue 11): each run started a simulator of
its own and stopped it at the end, so the next run, the sensor or the API's executor asked a fresh
simulator for the batch, was told it did not exist, and sent its lines online at twice the price.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from charges import assert_charged_by_catalog

from batchrouter.access.actors import CLI
from batchrouter.batches import batch_lane
from batchrouter.batches.states import BatchState
from batchrouter.core import detached, errors
from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import LanesConfig, Settings, SimulatorConfig
from batchrouter.engine import BatchRouter
from batchrouter.simulator import shared

pytestmark = pytest.mark.integration

SCALE = "1440"  # a day of provider time in a wall minute
DEADLINE_S = 180.0  # wall seconds for the batch to end, on a loaded machine


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchrouter.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)  # fmt: skip


def lock_files(database: str) -> list[Path]:
    return sorted(Path(database).parent.glob(f"{Path(database).name}.simulator-*.lock"))


def test_provider_batches_one_run_made_are_collected_by_the_next_run_at_the_batch_price(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "BATCHROUTER_SIMULATOR__BATCH_TIME_SCALE": SCALE,
           "BATCHROUTER_SIMULATOR__LATENCY_MS": "0", "BATCHROUTER_SIMULATOR__BATCH_MEDIAN_S": "600",
           "BATCHROUTER_SIMULATOR__BATCH_SIGMA": "0.3", "BATCHROUTER_LANES__TIME_SCALE": SCALE}  # fmt: skip
    database = env["BATCHROUTER_DATABASE"]
    rows = ["item_id,model,prompt,max_tokens"] + [f"i{i},gpt-4o-mini,Summarise note {i} in one line.,32"
                                                  for i in range(8)]  # fmt: skip
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    assert cli("credits", "grant", "--workspace", "acme", "--usd", "5", "--key", "g1", env=env).returncode == 0

    first = cli("run", str(manifest), "--workspace", "acme", "--deadline", "24h", "--json", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["state"] == "waiting_on_provider"
    # The run has ended; its simulator has not: one process, holding the provider batch.
    (lock,) = lock_files(database)
    assert detached.locked(lock)

    deadline = time.monotonic() + DEADLINE_S
    while True:  # each look is a new process, as a user running the command again
        again = cli("run", str(manifest), "--workspace", "acme", "--deadline", "24h", "--json", env=env)
        assert again.returncode == 0, again.stderr
        summary: dict[str, Any] = json.loads(again.stdout)
        if summary["state"] != "waiting_on_provider":
            break
        assert time.monotonic() < deadline, f"still waiting after {DEADLINE_S:g} s: {summary}"
        time.sleep(0.5)  # the loop's pace, not synchronisation: the deadline above bounds it

    assert summary["state"] == "completed" and summary["succeeded"] == 8
    receipts = pl.read_parquet(Path(env["BATCHROUTER_STORAGE__ROOT"]).rglob("receipts.parquet").__next__())
    assert set(receipts["lane"]) == {"batch"}, "a batch line went online: the next run did not find the batch"
    catalog = load_catalog()
    assert_charged_by_catalog(catalog, receipts, lambda row: "batch")
    # Every run used the same simulator, which made exactly one provider batch.
    assert lock_files(database) == [lock]
    url = json.loads(lock.with_suffix(".json").read_text())["url"]
    made = httpx.get(f"{url}/_batches/openai", timeout=10).json()["data"]
    assert len(made) == 1
    assert shared.stop(database) == 1 and not detached.locked(lock)


def test_one_simulator_serves_every_process_and_another_starts_for_other_settings(tmp_path: Path) -> None:
    database = str(tmp_path / "db.duckdb")
    config = SimulatorConfig(latency_ms=0)
    probe = ("import sys; from batchrouter.simulator import shared; from batchrouter.core.config import "
             "SimulatorConfig; print(shared.url_for(sys.argv[1], SimulatorConfig(latency_ms=0)))")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", probe, database], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]  # fmt: skip
    urls = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(urls) == 1 and urls == {shared.url_for(database, config)}

    other = shared.url_for(database, SimulatorConfig(latency_ms=0, seed=9))
    assert other not in urls and len(lock_files(database)) == 2
    assert shared.stop(database) == 2
    assert not any(detached.locked(lock) for lock in lock_files(database))


def test_a_simulator_that_died_is_replaced_by_a_new_one(tmp_path: Path) -> None:
    database = str(tmp_path / "db.duckdb")
    config = SimulatorConfig(latency_ms=0)
    shared.url_for(database, config)
    (lock,) = lock_files(database)
    info = json.loads(lock.with_suffix(".json").read_text())
    os.kill(int(info["pid"]), 9)  # its discovery file stays behind, naming a port nobody answers
    deadline = time.monotonic() + 60
    while detached.locked(lock):
        assert time.monotonic() < deadline, "the killed simulator still holds its lock"
        time.sleep(0.05)

    second = shared.url_for(database, config)

    assert httpx.get(second.removesuffix("/v1") + "/_stats", timeout=10).status_code == 200
    assert json.loads(lock.with_suffix(".json").read_text())["pid"] != info["pid"] and detached.locked(lock)
    assert shared.stop(database) == 1


def test_a_simulator_that_cannot_start_is_an_error_of_its_own_naming_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = str(tmp_path / "db.duckdb")
    started: list[list[str]] = []

    def exits_at_once(database: str, config: SimulatorConfig, lock_fd: int, idle: float) -> list[str]:
        started.append([database])
        return [sys.executable, "-c", "raise SystemExit(3)"]  # as a child that cannot bind or import would

    monkeypatch.setattr(shared, "_command", exits_at_once)

    with pytest.raises(errors.SimulatorUnavailable) as raised:
        shared.url_for(database, SimulatorConfig(latency_ms=0), timeout_s=120)

    assert raised.value.code == "simulator_unavailable" and raised.value.retryable
    assert f"{database}.simulator-" in str(raised.value) and ".log" in str(raised.value)
    assert len(started) == shared.MAX_STARTS  # tried again, a bounded number of times


def test_an_idle_simulator_stays_until_every_batch_s_results_are_read_then_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHROUTER_SIMULATOR_IDLE_S", "1")
    database = str(tmp_path / "db.duckdb")
    config = SimulatorConfig(latency_ms=0, batch_time_scale=1440, batch_median_s=600, batch_sigma=0)
    url = shared.url_for(database, config)
    (lock,) = lock_files(database)
    request = {"custom_id": "a", "params": {"model": "claude-sonnet-4-20250514", "max_tokens": 16,
                                            "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    made = httpx.post(f"{url}/messages/batches", json={"requests": [request]}, headers=headers, timeout=30).json()
    log = lock.with_suffix(".log")

    def holding() -> int:
        return int(httpx.get(url.removesuffix("/v1") + "/_shared", timeout=30).json()["unseen"])

    deadline = time.monotonic() + 120
    while True:
        got = httpx.get(f"{url}/messages/batches/{made['id']}", headers=headers, timeout=30).json()
        if got["processing_status"] == "ended":
            break
        assert time.monotonic() < deadline, f"the batch did not end: {got}"
        time.sleep(0.2)  # the loop's pace; the deadline above bounds it
    # Ended, retrieved and listed (as another run's submit lists the newest batch): still held for its results.
    listed = httpx.get(f"{url}/messages/batches", params={"limit": 1}, headers=headers, timeout=30).json()
    assert [b["id"] for b in listed["data"]] == [made["id"]]
    assert holding() == 1

    results = httpx.get(got["results_url"], headers=headers, timeout=30)
    assert results.status_code == 200 and '"succeeded"' in results.text
    assert holding() == 0

    deadline = time.monotonic() + 120
    while detached.locked(lock):  # read: nothing holds it once it has been idle for a second
        assert time.monotonic() < deadline, f"the idle simulator did not exit: {log.read_text()}"
        time.sleep(0.1)
    assert "idle for 1 s with every provider batch's results read" in log.read_text()
    assert not lock.with_suffix(".json").exists()


def test_a_discovery_file_left_by_a_dead_simulator_is_not_trusted_even_if_its_port_answers(tmp_path: Path) -> None:
    config = SimulatorConfig(latency_ms=0)
    dead, alive = str(tmp_path / "a.duckdb"), str(tmp_path / "b.duckdb")
    shared.url_for(dead, config)
    other = shared.url_for(alive, config)
    (lock,) = lock_files(dead)
    info = json.loads(lock.with_suffix(".json").read_text())
    os.kill(int(info["pid"]), 9)
    deadline = time.monotonic() + 60
    while detached.locked(lock):
        assert time.monotonic() < deadline, "the killed simulator still holds its lock"
        time.sleep(0.05)
    # Its file now names a port another simulator answers on (as a reused port would).
    lock.with_suffix(".json").write_text(json.dumps({**info, "url": other.removesuffix("/v1")}))

    assert shared.running_url(dead, shared.key(config)) is None
    fresh = shared.url_for(dead, config)
    assert fresh != other and detached.locked(lock)
    assert shared.stop(dead) == 1 and shared.stop(alive) == 1


@pytest.mark.parametrize(
    ("quiet_s", "unseen", "named", "stops"),
    [
        (0.5, 0, True, False),  # busy
        (2.0, 0, True, True),  # idle, nothing to show
        (2.0, 3, True, False),  # idle, but batches whose end nobody has seen
        (shared.HOLD_S + 1, 3, True, True),  # nobody has asked for a week
        (0.5, 0, False, True),  # its discovery file was removed or names another process
    ],
)
def test_when_a_simulator_stops(quiet_s: float, unseen: int, named: bool, stops: bool) -> None:
    assert (shared.stop_reason(quiet_s=quiet_s, idle_s=1.0, unseen=unseen, named=named) is not None) == stops


def test_a_batch_made_before_the_simulator_settings_changed_is_collected_from_the_simulator_that_holds_it(
    settings: Settings,
) -> None:
    def engine_with(seed: int) -> BatchRouter:
        sim = SimulatorConfig(latency_ms=0, max_output_words=12, seed=seed, batch_time_scale=1440,
                              batch_median_s=600, batch_sigma=0.3)  # fmt: skip
        return BatchRouter(settings.model_copy(update={"simulator": sim, "lanes": LanesConfig(time_scale=1440)}))

    before = engine_with(seed=1)
    before.ledger.grant("acme", 5_000_000, key="grant")
    rows = ["item_id,model,prompt,max_tokens"] + [f"i{i},gpt-4o-mini,Summarise note {i}.,32" for i in range(4)]
    view = before.batches.create(("\n".join(rows) + "\n").encode(), filename="m.csv", workspace="acme", actor=CLI,
                                 deadline="24h")  # fmt: skip
    assert before.batches.advance(view.batch_id, actor=CLI).state == BatchState.WAITING_ON_PROVIDER

    after = engine_with(seed=2)  # the operator changed [simulator]: new batches go to another simulator
    deadline = time.monotonic() + DEADLINE_S
    while (final := after.batches.advance(view.batch_id, actor=CLI)).state == BatchState.WAITING_ON_PROVIDER:
        assert time.monotonic() < deadline, f"still waiting after {DEADLINE_S:g} s"
        time.sleep(0.5)  # the loop's pace; the deadline above bounds it

    assert final.state == BatchState.COMPLETED and final.succeeded == 4
    receipts = after.storage.read_parquet(*after.batches.info(view.batch_id).folder("receipts.parquet"))
    assert set(receipts["lane"]) == {"batch"}, "the provider batch was looked for in the new simulator"
    records = batch_lane.BatchLane(after.storage, after.settings, after.catalog, after.batches.info(view.batch_id),
                                   record=lambda result: None).sent()  # fmt: skip
    assert {r.simulator for r in records} == {shared.key(before.settings.simulator)}


def test_batches_whose_results_were_read_long_ago_are_forgotten_the_others_kept() -> None:
    # The long-lived simulator's memory stays bounded: `_prune` drops what was read `KEEP_S` ago.
    from aiohttp.test_utils import TestClient, TestServer

    from batchrouter.simulator import build_app

    async def scenario() -> tuple[int, int, list[str], int]:
        app = build_app(SimulatorConfig(latency_ms=0, batch_time_scale=1440, batch_median_s=60, batch_sigma=0))
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        request = {"custom_id": "a", "params": {"model": "claude-sonnet-4-20250514", "max_tokens": 16,
                                                "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
        async with TestClient(TestServer(app)) as client:
            ids = []
            for _ in range(2):
                made = await client.post("/v1/messages/batches", json={"requests": [request]}, headers=headers)
                ids.append((await made.json())["id"])
            deadline = time.monotonic() + 120
            while True:
                got = await (await client.get(f"/v1/messages/batches/{ids[0]}", headers=headers)).json()
                if got["processing_status"] == "ended":
                    break
                assert time.monotonic() < deadline, f"the batch did not end: {got}"
                await asyncio.sleep(0.1)  # the loop's pace; the deadline above bounds it
            assert (await client.get(f"/v1/messages/batches/{ids[0]}/results", headers=headers)).status == 200
            kept_now = shared._prune(app, keep_s=3600)  # read a moment ago: kept
            dropped = shared._prune(app, keep_s=0)  # read before now: forgotten; the unread one stays
            listed = await (await client.get("/v1/messages/batches", headers=headers)).json()
            missing = await client.get(f"/v1/messages/batches/{ids[0]}", headers=headers)
            return kept_now, dropped, [b["id"] for b in listed["data"]], missing.status

    kept_now, dropped, listed, missing = asyncio.run(scenario())
    assert (kept_now, dropped, missing) == (0, 1, 404)
    assert len(listed) == 1
