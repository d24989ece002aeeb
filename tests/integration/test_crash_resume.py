"""A `batchrouter run` killed mid-dispatch resumes from its checkpoint: no item lost, none recorded twice."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from processes import kill_group

from batchrouter.cli import main
from batchrouter.core.batch_info import batch_id_for
from batchrouter.core.config import SimulatorConfig
from batchrouter.simulator import running_simulator

pytestmark = pytest.mark.integration

ITEMS = 300
WORKSPACE = "w"


def write_manifest(path: Path, items: int) -> bytes:
    rows = ["item_id,model,prompt,max_tokens"]
    rows += [f"t{i:04d},gpt-4o-mini,Classify support ticket {i}: refund request,16" for i in range(items)]
    rows.append("bad,no-such-model,this row is rejected,16")
    data = ("\n".join(rows) + "\n").encode()
    path.write_bytes(data)
    return data


def storage_root() -> Path:
    return Path(os.environ["BATCHROUTER_STORAGE__ROOT"])


def chunk_files(batch_id: str) -> list[Path]:
    return sorted((storage_root() / "batches" / batch_id / "dispatch" / "chunks").glob("*.parquet"))


def chunk_rows(batch_id: str) -> pl.DataFrame:
    """Every row of every chunk, duplicates included."""
    return pl.concat([pl.read_parquet(p) for p in chunk_files(batch_id)], how="vertical_relaxed")


def grant_credits() -> None:
    assert main(["credits", "grant", "--workspace", WORKSPACE, "--usd", "100"]) == 0


def run_command(manifest: Path) -> list[str]:
    return [sys.executable, "-m", "batchrouter.cli", "run", str(manifest), "--workspace", WORKSPACE, "--json"]


def test_killed_run_resumes_without_losing_or_repeating_an_item(tmp_path: Path) -> None:
    manifest = tmp_path / "crash.csv"
    data = write_manifest(manifest, ITEMS)
    batch_id = batch_id_for(WORKSPACE, hashlib.sha256(data).hexdigest())
    grant_credits()
    env = {
        **os.environ,
        "BATCHROUTER_SIMULATOR__LATENCY_MS": "300",
        "BATCHROUTER_SIMULATOR__LATENCY_SHAPE": "fixed",
        "BATCHROUTER_SIMULATOR__RPM": "6000",
        "BATCHROUTER_SIMULATOR__MAX_OUTPUT_WORDS": "12",
        "BATCHROUTER_DISPATCH__CHECKPOINT_ITEMS": "10",
    }
    stderr = (tmp_path / "run1.err").open("wb")
    proc = subprocess.Popen(
        run_command(manifest), env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not chunk_files(batch_id):
            assert proc.poll() is None, f"the run exited early: {(tmp_path / 'run1.err').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint chunk appeared within 60 s"
            time.sleep(0.01)  # polling interval, not synchronisation: the loop waits on the chunk itself
    finally:
        kill_group(proc)
        stderr.close()
    assert proc.returncode == -signal.SIGKILL
    receipts = storage_root() / "batches" / batch_id / "receipts.parquet"
    assert not receipts.exists(), "the run finished before it was killed; the test did not test a crash"

    before = chunk_rows(batch_id)
    assert 0 < before.height < ITEMS
    assert before["item_id"].is_unique().all()

    done = subprocess.run(run_command(manifest), env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = json.loads(done.stdout)
    assert (summary["status"], summary["succeeded"], summary["failed"], summary["rejected"]) == (
        "completed",
        ITEMS,
        0,
        1,
    )

    final = pl.read_parquet(receipts)
    assert final.height == ITEMS + 1  # one row per manifest row
    assert final["item_id"].is_unique().all()
    accepted = final.filter(pl.col("status") != "rejected")
    assert accepted["status"].unique().to_list() == ["succeeded"]
    assert final.filter(pl.col("status") == "rejected")["item_id"].to_list() == ["bad"]

    every_row = chunk_rows(batch_id)
    assert every_row.height == ITEMS  # each item recorded once, across both runs
    assert every_row["item_id"].is_unique().all()
    # The items recorded before the kill kept their first result: the second run did not send them again.
    kept = before.select("item_id", "finished_at").join(
        final.select("item_id", pl.col("finished_at").alias("final_finished_at")), on="item_id"
    )
    assert kept.height == before.height
    assert (kept["finished_at"] == kept["final_finished_at"]).all()


def test_running_a_finished_batch_again_dispatches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "done.csv"
    data = write_manifest(manifest, 20)
    batch_id = batch_id_for(WORKSPACE, hashlib.sha256(data).hexdigest())
    grant_credits()
    capsys.readouterr()
    with running_simulator(SimulatorConfig(latency_ms=5, max_output_words=12)) as url:
        config = tmp_path / "sim.toml"
        config.write_text(f'[providers.openai]\nkind = "simulator"\nwire = "openai"\nbase_url = "{url}"\n')

        def stats() -> dict[str, int]:
            with urllib.request.urlopen(url.replace("/v1", "/_stats"), timeout=5) as r:
                return dict(json.loads(r.read()))

        args = ["run", str(manifest), "--workspace", WORKSPACE, "--json", "--config", str(config)]
        assert main(args) == 0
        first = json.loads(capsys.readouterr().out)
        assert first["succeeded"] == 20
        requests, chunks = stats()["requests"], chunk_files(batch_id)
        receipts = pl.read_parquet(storage_root() / "batches" / batch_id / "receipts.parquet")

        assert main(args) == 0
        second = json.loads(capsys.readouterr().out)
        assert stats()["requests"] == requests
        assert chunk_files(batch_id) == chunks
    assert (second["status"], second["succeeded"], second["cost_usd_micros"]) == (
        "completed",
        20,
        first["cost_usd_micros"],
    )
    assert pl.read_parquet(storage_root() / "batches" / batch_id / "receipts.parquet").equals(receipts)
