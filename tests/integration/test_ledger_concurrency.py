"""The overdraft race with real processes: many reserves at once against one DuckDB ledger file."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from pathlib import Path

import pytest
from ledger_race_worker import reserve_many

from batchrouter.money.ledger import InsufficientCredits, Ledger

pytestmark = pytest.mark.integration

USD = 1_000_000
PROCESSES = 6
ATTEMPTS = 5  # reserves per process: 30 attempts of 1 USD against 10 USD of credit
DEADLINE_S = 120


def test_concurrent_reserves_from_six_processes_never_take_more_than_the_balance(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.duckdb")
    ledger = Ledger(path)
    ledger.grant("acme", 10 * USD, key="g")

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=reserve_many, args=(path, w, ATTEMPTS, barrier, results)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(outcomes) < PROCESSES:
            try:
                outcomes.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    pytest.fail(f"only {len(outcomes)} of {PROCESSES} workers reported (exit codes {dead})")
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()

    assert [o["errors"] for o in outcomes] == [[]] * PROCESSES, "a reserve failed with something else than refusal"
    assert all(len(o["reserved"]) + o["refused"] == ATTEMPTS for o in outcomes)
    reserved = [b for o in outcomes for b in o["reserved"]]
    assert len(reserved) == 10
    assert sum(o["refused"] for o in outcomes) == PROCESSES * ATTEMPTS - 10
    assert len({o["pid"] for o in outcomes}) == PROCESSES

    balance = ledger.balance("acme")
    assert (balance.available_usd_micros, balance.held_usd_micros) == (0, 10 * USD)
    holds = ledger.holds(status="held")
    assert sorted(h.batch_id for h in holds) == sorted(reserved)
    assert sum(h.amount_usd_micros for h in holds) == 10 * USD
    report = ledger.verify()
    assert report["ok"], report["problems"]
    assert report["entries"] == 11


def test_concurrent_reserves_from_eight_threads_never_take_more_than_the_balance_nor_fail(tmp_path: Path) -> None:
    # Within one process DuckDB shares the open file between connections: a thread may open it while
    # another closes it, and two transactions may update the wallet row at once. Both must be retried.
    path = str(tmp_path / "ledger.duckdb")
    Ledger(path).grant("acme", 10 * USD, key="g")
    threads, barrier = 8, threading.Barrier(8)
    reserved: list[str] = []
    refused: list[str] = []
    errors: list[str] = []

    def work(worker: int) -> None:
        barrier.wait(timeout=30)
        for attempt in range(ATTEMPTS):
            batch = f"t{worker}-b{attempt}"
            try:
                Ledger(path).reserve("acme", batch, 1 * USD)
                reserved.append(batch)
            except InsufficientCredits:
                refused.append(batch)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=DEADLINE_S)
    assert not any(t.is_alive() for t in pool)
    assert errors == []
    assert (len(reserved), len(refused)) == (10, threads * ATTEMPTS - 10)
    ledger = Ledger(path)
    balance = ledger.balance("acme")
    assert (balance.available_usd_micros, balance.held_usd_micros) == (0, 10 * USD)
    assert sorted(h.batch_id for h in ledger.holds(status="held")) == sorted(reserved)
    assert ledger.verify()["ok"]
