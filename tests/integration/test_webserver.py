"""`dagster dev` for real: the daemon's manifest sensor sees a dropped manifest and runs batch_job to SUCCESS."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrouter import cli
from batchrouter.core.batch_info import batch_id_for
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WS = "acme"
START_DEADLINE_S = 120
RUN_DEADLINE_S = 240
DEV_WARNINGS = "ignore:Function `dev_command` is superseded"  # as the Makefile's `make dev` runs it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer
    return dict(answer["data"])


LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { __typename ... on Runs { results { runId status jobName tags { key value } } } }
}
"""


class DagsterDev:
    def __init__(self, home: Path, env: dict[str, str], log: Path) -> None:
        self.home, self.env, self.log = home, env, log
        self.proc, self.port = self._start()

    def _start(self) -> tuple[subprocess.Popen[bytes], int]:
        port = _free_port()
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc, port

    def crash_and_restart(self) -> None:
        """SIGKILL the whole deployment (webserver, daemon, code server, run workers) at once, as a machine
        that lost power would, then start it again on the same instance."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc, self.port = self._start()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def wait_until(self, what: str, deadline_s: float, probe: Any) -> Any:
        """Poll `probe` until it returns something truthy; fail with the server's log at the deadline."""
        deadline = time.monotonic() + deadline_s
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {self.proc.returncode} before {what}:\n{self.log_tail()}")
            try:
                found = probe()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {deadline_s} s:\n{self.log_tail()}")
            time.sleep(1.0)  # poll interval, not synchronisation: the deadline above bounds the wait


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """A TOML config in tmp: its own bucket and ledger. The isolation fixture's environment overrides
    are removed so the config file is what the server and this test both read. A test parametrising
    `config` indirectly gives more lines of the `[simulator]` table."""
    monkeypatch.delenv("BATCHROUTER_STORAGE__ROOT", raising=False)
    monkeypatch.delenv("BATCHROUTER_DATABASE", raising=False)
    path = tmp_path / "batchrouter.toml"
    path.write_text(
        f'database = "{tmp_path / "ledger.duckdb"}"\n\n[storage]\nroot = "{tmp_path / "bucket"}"\n\n'
        "[simulator]\nlatency_ms = 5\n" + getattr(request, "param", "")
    )
    monkeypatch.setenv("BATCHROUTER_CONFIG", str(path))
    return path


@pytest.fixture
def dagster_dev(config: Path, tmp_path: Path) -> Iterator[DagsterDev]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "pipelines" / "dagster.yaml", home / "dagster.yaml")  # as `make dev` does
    env = {**os.environ, "DAGSTER_HOME": str(home), "BATCHROUTER_CONFIG": str(config), "PYTHONWARNINGS": DEV_WARNINGS}
    dev = DagsterDev(home, env, tmp_path / "dagster-dev.log")
    try:
        yield dev
    finally:
        _stop_group(dev.proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop dagster dev and everything it started (webserver, daemon, code servers, run workers)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _location_loaded(port: int) -> bool:
    data = graphql(port, LOCATIONS)["workspaceOrError"]
    entries = data.get("locationEntries") or []
    for entry in entries:
        if entry["locationOrLoadError"] and entry["locationOrLoadError"]["__typename"] == "PythonError":
            pytest.fail(f"code location {entry['name']} failed to load: {entry['locationOrLoadError']['message']}")
    return any(e["name"] == "pipelines.definitions" and e["loadStatus"] == "LOADED" for e in entries)


def test_dagster_dev_with_the_projects_dagster_yaml_starts_without_warnings(dagster_dev: DagsterDev) -> None:
    dagster_dev.wait_until("loaded code location", START_DEADLINE_S, lambda: _location_loaded(dagster_dev.port))
    dagster_dev.wait_until("the daemon's first sensor tick", START_DEADLINE_S, lambda: _sensor_ticked(dagster_dev.port))

    # Run retries (pipelines/dagster.yaml) start the daemon's event-log consumer, which says once, on a
    # new instance, that it reads run failures from now on: what a new instance should do.
    warnings = [line for line in dagster_dev.log_tail().splitlines() if "warning" in line.lower()
                and not ("EventLogConsumerDaemon" in line and "No cursor for event type" in line)]  # fmt: skip
    assert warnings == []
    assert "telemetry" not in dagster_dev.log_tail().lower()


TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) { ... on Sensor { sensorState { ticks(limit: 1) { status } } } }
}
"""


def _sensor_ticked(port: int) -> bool:
    selector = {"repositoryLocationName": "pipelines.definitions", "repositoryName": "__repository__",
                "sensorName": "manifest_sensor"}  # fmt: skip
    sensor = graphql(port, TICKS, {"selector": selector})["sensorOrError"]
    return bool(sensor.get("sensorState", {}).get("ticks"))


def test_a_manifest_dropped_in_the_bucket_runs_batch_job_to_success_under_dagster_dev(
    dagster_dev: DagsterDev, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["credits", "grant", "--workspace", WS, "--usd", "2", "--key", "webserver-test"]) == 0
    dagster_dev.wait_until("loaded code location", START_DEADLINE_S, lambda: _location_loaded(dagster_dev.port))

    frame = pl.DataFrame(
        {
            "item_id": [f"w-{i}" for i in range(4)],
            "model": ["gpt-4o-mini"] * 4,
            "prompt": [f"Say hello to visitor {i}." for i in range(4)],
            "max_tokens": [32] * 4,
        }
    )
    data = frame.write_csv().encode()
    batch_id = batch_id_for(WS, hashlib.sha256(data).hexdigest())
    drop = tmp_path / "bucket" / "manifests" / WS / "visitors.csv"
    drop.parent.mkdir(parents=True)
    staged = drop.with_name(".visitors.csv.part")  # hidden while written, then renamed: never read half-written
    staged.write_bytes(data)
    staged.rename(drop)

    run_filter = {"filter": {"pipelineName": "batch_job", "tags": [{"key": "dagster/partition", "value": batch_id}]}}

    def finished_run() -> dict[str, Any] | None:
        runs = graphql(dagster_dev.port, RUNS, run_filter)["runsOrError"]["results"]
        done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return done[0] if done else None

    run = dagster_dev.wait_until(f"finished batch_job run for {batch_id}", RUN_DEADLINE_S, finished_run)

    assert run["status"] == "SUCCESS", dagster_dev.log_tail()
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert (tags["dagster/run_key"], tags["dagster/sensor_name"]) == (batch_id, "manifest_sensor")
    assert (tags["batchrouter/workspace"], tags["batchrouter/state"]) == (WS, "completed")
    folder = tmp_path / "bucket" / "batches" / batch_id
    outputs = pl.read_parquet(folder / "outputs.parquet")
    receipts = pl.read_parquet(folder / "receipts.parquet")
    assert outputs["item_id"].to_list() == [f"w-{i}" for i in range(4)]
    assert receipts["status"].to_list() == ["succeeded"] * 4
    ledger = Ledger(str(tmp_path / "ledger.duckdb"))
    assert ledger.balance(WS).spent_usd_micros == receipts["cost_usd_micros"].sum() > 0
    assert ledger.verify()["ok"]


RUN_TIMES = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status startTime endTime tags { key value } } } }
}
"""


def test_two_batches_on_one_provider_run_one_after_the_other_under_its_run_limit(
    dagster_dev: DagsterDev, tmp_path: Path
) -> None:
    assert cli.main(["credits", "grant", "--workspace", WS, "--usd", "2", "--key", "webserver-limit"]) == 0
    dagster_dev.wait_until("loaded code location", START_DEADLINE_S, lambda: _location_loaded(dagster_dev.port))
    folder = tmp_path / "bucket" / "manifests" / WS
    folder.mkdir(parents=True)
    for name in ("first", "second"):  # both in one sensor tick: both runs are asked for at once
        staged = folder / f".{name}.csv.part"
        staged.write_text("item_id,model,prompt\n" + "".join(f"{name}-{i},gpt-4o-mini,Hello {i}\n" for i in range(8)))
    for name in ("first", "second"):
        (folder / f".{name}.csv.part").rename(folder / f"{name}.csv")

    def both_finished() -> list[dict[str, Any]] | None:
        runs = graphql(dagster_dev.port, RUN_TIMES, {"filter": {"pipelineName": "batch_job"}})["runsOrError"]["results"]
        done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return done if len(done) == 2 else None

    runs = dagster_dev.wait_until("two finished batch_job runs", RUN_DEADLINE_S, both_finished)

    assert [r["status"] for r in runs] == ["SUCCESS", "SUCCESS"], dagster_dev.log_tail()
    assert all({"key": "batchrouter/provider.openai", "value": "true"} in r["tags"] for r in runs)
    # The limit of one run per provider: the later run started only once the earlier one had ended.
    earlier, later = sorted(runs, key=lambda r: r["startTime"])
    assert later["startTime"] >= earlier["endTime"]


DEAD_RUN_TIMES = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status tags { key value } } } }
}
"""


def drop_and_wait_for_answers(dagster_dev: DagsterDev, tmp_path: Path, name: str, items: int) -> tuple[str, str]:
    """Grant credit, drop a manifest of `items` and wait until its run has answers in its checkpoint:
    (batch id, the run's worker as it tagged itself)."""
    from assets.batch import WORKER_TAG

    assert cli.main(["credits", "grant", "--workspace", WS, "--usd", "2", "--key", f"webserver-{name}"]) == 0
    dagster_dev.wait_until("loaded code location", START_DEADLINE_S, lambda: _location_loaded(dagster_dev.port))

    data = ("item_id,model,prompt\n" + "".join(f"k{i},gpt-4o-mini,Hello {i}\n" for i in range(items))).encode()
    batch_id = batch_id_for(WS, hashlib.sha256(data).hexdigest())
    drop = tmp_path / "bucket" / "manifests" / WS / f"{name}.csv"
    drop.parent.mkdir(parents=True)
    drop.with_name(f".{name}.csv.part").write_bytes(data)
    drop.with_name(f".{name}.csv.part").rename(drop)
    chunks = tmp_path / "bucket" / "batches" / batch_id / "dispatch" / "chunks"

    def worker_with_answers() -> str | None:
        for run in batch_runs(dagster_dev, batch_id):
            tags = {t["key"]: t["value"] for t in run["tags"]}
            if run["status"] == "STARTED" and WORKER_TAG in tags and chunks.is_dir() and any(chunks.glob("*.parquet")):
                return tags[WORKER_TAG]
        return None

    worker: str = dagster_dev.wait_until("a run with answers in its checkpoint", RUN_DEADLINE_S, worker_with_answers)
    return batch_id, worker


def batch_runs(dagster_dev: DagsterDev, batch_id: str) -> list[dict[str, Any]]:
    run_filter = {"filter": {"pipelineName": "batch_job", "tags": [{"key": "dagster/partition", "value": batch_id}]}}
    found: list[dict[str, Any]] = graphql(dagster_dev.port, DEAD_RUN_TIMES, run_filter)["runsOrError"]["results"]
    return found


def chunk_items(tmp_path: Path, batch_id: str) -> dict[str, set[str]]:
    chunks = tmp_path / "bucket" / "batches" / batch_id / "dispatch" / "chunks"
    return {p.name: set(pl.read_parquet(p)["item_id"]) for p in chunks.glob("*.parquet")}


def assert_retried_to_success_and_charged_once(
    dagster_dev: DagsterDev, tmp_path: Path, batch_id: str, items: int, before: dict[str, set[str]]
) -> dict[str, dict[str, Any]]:
    """The killed run failed, one retry of it (Dagster's run retries) succeeded; every item answered once,
    nothing recorded before the kill sent again, and the ledger charged exactly the receipts."""

    def retried_to_success() -> list[dict[str, Any]] | None:
        found = batch_runs(dagster_dev, batch_id)
        return found if any(r["status"] == "SUCCESS" for r in found) else None

    found = dagster_dev.wait_until("a retry of the killed run to succeed", RUN_DEADLINE_S, retried_to_success)
    by_status = {r["status"]: r for r in found}
    assert sorted(r["status"] for r in found) == ["FAILURE", "SUCCESS"], dagster_dev.log_tail()
    retry_tags = {t["key"]: t["value"] for t in by_status["SUCCESS"]["tags"]}
    assert retry_tags["dagster/parent_run_id"] == by_status["FAILURE"]["runId"]  # Dagster's own run retry
    assert retry_tags["batchrouter/state"] == "completed"
    receipts = pl.read_parquet(tmp_path / "bucket" / "batches" / batch_id / "receipts.parquet")
    assert receipts.height == receipts["item_id"].n_unique() == items and set(receipts["status"]) == {"succeeded"}
    after = chunk_items(tmp_path, batch_id)
    assert before.items() <= after.items()  # what the killed run had recorded was kept...
    answered_before = set().union(*before.values())
    assert answered_before and all(not (ids & answered_before) for name, ids in after.items() if name not in before)
    ledger = Ledger(str(tmp_path / "ledger.duckdb"))  # ... and not one of those items was sent again
    assert ledger.balance(WS).spent_usd_micros == receipts["cost_usd_micros"].sum() > 0
    assert ledger.balance(WS).held_usd_micros == 0
    assert ledger.verify()["ok"]
    return by_status


@pytest.mark.parametrize("config", ["rpm = 120\n"], indirect=True)  # 2 requests a second: a run to kill
def test_a_batch_run_whose_worker_is_killed_is_run_again_from_its_checkpoint_and_charged_once(
    dagster_dev: DagsterDev, tmp_path: Path
) -> None:
    # The code server sees its run worker die and fails the run; the instance's run retries run it again.
    batch_id, worker = drop_and_wait_for_answers(dagster_dev, tmp_path, "killed", 60)

    os.kill(int(worker.split(" pid ")[1].split()[0]), signal.SIGKILL)
    before = chunk_items(tmp_path, batch_id)

    assert_retried_to_success_and_charged_once(dagster_dev, tmp_path, batch_id, 60, before)


@pytest.mark.parametrize("config", ["rpm = 120\n"], indirect=True)
def test_a_batch_run_left_started_by_a_crashed_deployment_is_failed_by_the_sensor_and_run_again(
    dagster_dev: DagsterDev, tmp_path: Path
) -> None:
    # Everything dies at once, the code server too: nothing but dead_run_sensor can tell the run is over.
    batch_id, worker = drop_and_wait_for_answers(dagster_dev, tmp_path, "crashed", 60)

    dagster_dev.crash_and_restart()
    before = chunk_items(tmp_path, batch_id)
    dagster_dev.wait_until("loaded code location", START_DEADLINE_S, lambda: _location_loaded(dagster_dev.port))

    by_status = assert_retried_to_success_and_charged_once(dagster_dev, tmp_path, batch_id, 60, before)
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_dev.home)) as instance:
        events = instance.all_logs(by_status["FAILURE"]["runId"])
    failures = [e.dagster_event.message for e in events if e.dagster_event and e.dagster_event.is_run_failure]
    assert failures == [f"its run worker ({worker}) is gone; the run retries go on from the checkpoint"]
