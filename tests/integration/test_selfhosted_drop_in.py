"""OpenAI's Batch API for a self-hosted OpenAI-compatible server, driven only through the official `openai` SDK.

A vLLM-like server has no Batch API of its own: a provider of kind `openai_compatible` (here the
built-in simulator, which speaks OpenAI's wire) gets one from `batchrouter serve`. The batch file is
fanned out online at the server's `max_concurrency` and no further, billed at the route's configured
prices, and a server killed mid-batch picks the batch up again on restart, answering and charging each
line once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from dropin_sdk import ASAP, RUN_DEADLINE_S, USD, Server, jsonl, key_for, lines, request, start_api, wait_done
from openai import OpenAI
from processes import kill_group

from batchrouter.access.accounts import Accounts
from batchrouter.core.config import SimulatorConfig
from batchrouter.money.ledger import Ledger
from batchrouter.simulator import running_simulator

pytestmark = pytest.mark.integration

CONCURRENCY = 8
MODELS = ("house-llama", "house-qwen")  # two models the one server serves: its concurrency is shared
# Whole micro-dollars per token (2 and 3 USD per million), so a line's price is read off its usage.
INPUT_USD_PER_MTOK, OUTPUT_USD_PER_MTOK = 2, 3
START_DEADLINE_S = 60.0


SERVER = """
[providers.gpu]
kind = "openai_compatible"
base_url = "{url}"
api_key_env = "GPU_API_KEY"
max_concurrency = {concurrency}
"""
MODEL = """
[[models]]
name = "{name}"
provider = "gpu"
upstream = "{name}-8b-instruct"
input_usd_per_mtok = {input}
output_usd_per_mtok = {output}
context_window = 32768
max_output_tokens = 4096
tokenizer = "estimate"
token_factor = 1.25
trains_on_inputs = false
retention_days = 0
"""


def config_text(url: str) -> str:
    """The workspace's config: one self-hosted server and the models it serves."""
    models = [MODEL.format(name=name, input=INPUT_USD_PER_MTOK, output=OUTPUT_USD_PER_MTOK) for name in MODELS]
    return SERVER.format(url=url, concurrency=CONCURRENCY) + "".join(models)


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/_stats", timeout=10) as r:
        return dict(json.loads(r.read()))


def batch_file(n: int, *, prefix: str = "l") -> bytes:
    return jsonl([request(f"{prefix}-{i}", MODELS[i % len(MODELS)], f"Summarise ticket {i} in a line.")
                  for i in range(n)])  # fmt: skip


def assert_answered_by_the_server(output: list[dict[str, Any]], expected: set[str]) -> None:
    """One output line per request, each answered by a gpu route and billed at its configured prices."""
    ids = [line["custom_id"] for line in output]
    assert len(ids) == len(set(ids)) and set(ids) == expected
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body, route = line["response"]["body"], line["batchrouter"]
        assert body["choices"][0]["message"]["content"]
        assert (route["provider"], route["lane"]) == ("gpu", "online")
        assert body["model"] in MODELS and route["route"] == f"gpu:{body['model']}-8b-instruct"
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        expected_cost = INPUT_USD_PER_MTOK * usage["prompt_tokens"] + OUTPUT_USD_PER_MTOK * usage["completion_tokens"]
        assert route["cost_usd_micros"] == expected_cost


def assert_charged_once(database: str, batch_id: str, output: list[dict[str, Any]]) -> None:
    ledger = Ledger(database)
    (hold,) = ledger.batch_holds(batch_id)
    assert hold.status == "settled"
    assert hold.captured_usd_micros == sum(line["batchrouter"]["cost_usd_micros"] for line in output)
    assert hold.captured_usd_micros <= hold.amount_usd_micros
    assert ledger.verify()["ok"]


# -- the API in a thread of this process, on the self-hosted config -------------------------------------------
@pytest.fixture
def gpu() -> Iterator[str]:
    """The self-hosted server: each answer takes a second, so a wave of requests is in flight at once."""
    with running_simulator(SimulatorConfig(latency_ms=1000, latency_shape="fixed", max_output_words=12)) as url:
        yield url


@pytest.fixture
def api(gpu: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    config = tmp_path / "batchrouter.toml"
    config.write_text(config_text(gpu))
    monkeypatch.setenv("BATCHROUTER_CONFIG", str(config))
    monkeypatch.setenv("GPU_API_KEY", "gpu-key")
    yield from start_api(monkeypatch)


def test_a_batch_file_runs_on_the_self_hosted_server_online_at_its_configured_prices(api: Server, gpu: str) -> None:
    client = api.client()
    data = batch_file(6)
    uploaded = client.files.create(file=("gpu.jsonl", data), purpose="batch")
    # A 24h window: a route with a batch lane would wait on its provider's Batch API; this server has none.
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")

    done = wait_done(client, batch.id)

    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 6, 0)
    assert done.output_file_id is not None and done.error_file_id is None
    output = lines(client.files.content(done.output_file_id).read())
    assert_answered_by_the_server(output, {f"l-{i}" for i in range(6)})
    assert stats(gpu)["requests"] == 6  # each line sent once, to this server
    assert_charged_once(api.settings.database, batch.id, output)


def test_the_server_is_kept_at_its_max_concurrency_and_never_above(api: Server, gpu: str) -> None:
    client = api.client()
    lines_n = 4 * CONCURRENCY  # four waves of a second each, across both models
    uploaded = client.files.create(file=("wide.jsonl", batch_file(lines_n)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata=ASAP)  # fmt: skip

    done = wait_done(client, batch.id)

    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == lines_n
    seen = stats(gpu)
    assert seen["requests"] == lines_n and seen["in_flight"] == 0
    assert seen["max_in_flight"] == CONCURRENCY, seen


# -- `batchrouter serve` as its own process, killed mid-batch and started again ------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`batchrouter serve` in a session of its own; returns once `/healthz` answers."""
    command = [sys.executable, "-m", "batchrouter.cli", "serve", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        assert proc.poll() is None, f"serve exited at start: {log.read_text()[-2000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "serve did not answer /healthz in time"
        time.sleep(0.05)  # poll interval, not synchronisation: the deadline above bounds the wait


def chunk_rows(folder: Path) -> pl.DataFrame:
    paths = sorted((folder / "dispatch" / "chunks").glob("*.parquet"))
    if not paths:
        return pl.DataFrame({"item_id": []}, schema={"item_id": pl.String()})
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


def test_a_server_killed_mid_batch_resumes_it_on_restart_answering_and_charging_each_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines_n = 12 * CONCURRENCY
    sim = SimulatorConfig(latency_ms=300, latency_shape="fixed", max_output_words=12)
    with running_simulator(sim) as gpu:
        config = tmp_path / "batchrouter.toml"
        config.write_text(config_text(gpu))
        monkeypatch.setenv("BATCHROUTER_CONFIG", str(config))
        database = os.environ["BATCHROUTER_DATABASE"]
        accounts = Accounts(database)
        key = key_for(accounts, "acme")
        Ledger(database).grant("acme", 5 * USD, key="grant-acme")
        env = {**os.environ, "GPU_API_KEY": "gpu-key", "BATCHROUTER_API__EXECUTOR": "inline",
               "BATCHROUTER_DISPATCH__CHECKPOINT_ITEMS": str(CONCURRENCY)}  # fmt: skip
        port = free_port()
        log = tmp_path / "serve.log"
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)

        first = start_serve(port, env, log)
        try:
            uploaded = client.files.create(file=("crash.jsonl", batch_file(lines_n)), purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")  # fmt: skip
            folder = Path(os.environ["BATCHROUTER_STORAGE__ROOT"]) / "batches" / batch.id
            deadline = time.monotonic() + RUN_DEADLINE_S
            # Killed once some lines are recorded and others are being answered by the server.
            while chunk_rows(folder).height == 0 or stats(gpu)["in_flight"] == 0:
                assert first.poll() is None, f"serve exited: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "no line was recorded while others were in flight"
                time.sleep(0.01)  # poll interval, not synchronisation: the loop waits on the records
        finally:
            kill_group(first)
        assert first.returncode == -signal.SIGKILL
        while stats(gpu)["in_flight"]:  # the server finishes what the dead process sent (answers nobody reads)
            assert time.monotonic() < deadline, "the server still had requests in flight long after the kill"
            time.sleep(0.05)  # poll interval, not synchronisation: the loop waits on the server's count
        sent_before = stats(gpu)["requests"]
        recorded = chunk_rows(folder)
        assert not (folder / "receipts.parquet").exists(), "the batch finished before the kill: no crash tested"
        assert 0 < recorded.height < lines_n and recorded["item_id"].is_unique().all()
        assert sent_before > recorded.height  # lines were in flight when the server died

        second = start_serve(port, env, log)
        try:
            done = wait_done(client, batch.id)
            assert done.status == "completed", (done.model_extra or {}).get("state")
            assert done.output_file_id is not None and done.error_file_id is None
            output = lines(client.files.content(done.output_file_id).read())
        finally:
            kill_group(second)
        sent_after = stats(gpu)["requests"] - sent_before

    assert done.request_counts is not None and done.request_counts.completed == lines_n
    assert_answered_by_the_server(output, {f"l-{i}" for i in range(lines_n)})
    # The restart sent only the lines nobody had recorded: those answered before the kill kept their answer.
    assert sent_after == lines_n - recorded.height
    every_row = chunk_rows(folder)
    assert every_row.height == lines_n and every_row["item_id"].is_unique().all()  # each line recorded once
    assert_charged_once(database, batch.id, output)
