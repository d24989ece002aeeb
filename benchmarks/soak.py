"""Soak: many processes reserving, settling and voiding at once through the control service.

While `--burners` processes keep every core busy, `--processes` worker processes each run `--ops`
rounds against one fresh database, through the control service they start themselves: reserve
(refused when the workspace is out of credit), then settle (sometimes above the hold), void, or
leave the hold open. Every acknowledged operation is written down by its worker. Afterwards,
with the service stopped, the file itself is checked: every acknowledged operation is in the
journal with its postings (a missing one is a *loss*), no refused reservation left anything,
`ledger verify` passes (balanced, nothing half-applied, wallets = replay, no overdraft).

Prints operations, throughput as a ratio to the same operations run by one process in the same
run (no burners), and losses, which must be zero. Exit status 1 when anything was lost or wrong.

    .venv/bin/python benchmarks/soak.py [--processes 16] [--ops 200] [--burners 2] [--json]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

WORKSPACES = ("soak-a", "soak-b", "soak-c", "soak-d")
MAX_HOLD = 50_000  # micro-dollars per reservation


def _bare_import(name: str) -> Any:
    """Import a batchrouter module without the package's `__init__` (the whole engine; seconds per process)."""
    if "batchrouter" not in sys.modules:
        spec = importlib.util.find_spec("batchrouter")
        if spec is not None and spec.submodule_search_locations:
            package = types.ModuleType("batchrouter")
            package.__path__ = list(spec.submodule_search_locations)
            sys.modules["batchrouter"] = package
    return importlib.import_module(name)


def worker(database: str, worker_id: int, ops: int, seed: int, out_path: str) -> None:
    """`ops` rounds; each acknowledged operation is appended to `out_path` as one JSON line before the next."""
    ledger_module = _bare_import("batchrouter.money.ledger")
    ledger = ledger_module.Ledger(database)
    rng = random.Random(seed)
    with open(out_path, "w") as out:

        def note(**record: Any) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        for i in range(ops):
            workspace = WORKSPACES[rng.randrange(len(WORKSPACES))]
            batch = f"soak-w{worker_id}-b{i}"
            amount = rng.randint(1, MAX_HOLD)
            try:
                entry = ledger.reserve(workspace, batch, amount)
            except ledger_module.InsufficientCredits:
                note(op="refused", batch=batch)
                continue
            note(op="reserve", batch=batch, entry=entry.entry_id)
            choice = rng.random()
            if choice < 0.6:
                entry = ledger.settle(batch, rng.randint(0, amount * 6 // 5))
                note(op="settle", batch=batch, entry=entry.entry_id)
            elif choice < 0.9:
                entry = ledger.void(batch, reason="soak")
                note(op="void", batch=batch, entry=entry.entry_id)


def _grant(ledger: Any, processes: int, ops: int) -> None:
    # About half of what the rounds would spend and hold: late reservations are refused, none may overdraw.
    per_workspace = processes * ops * MAX_HOLD // (8 * len(WORKSPACES))
    for workspace in WORKSPACES:
        ledger.grant(workspace, max(per_workspace, 1), key=f"soak-grant-{workspace}")


def check(database: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Stop the service, then read the file itself: losses, leftovers of refusals, verify."""
    control = _bare_import("batchrouter.core.control")
    ledger_module = _bare_import("batchrouter.money.ledger")
    import duckdb

    control.stop(database)
    acked = [r for r in records if r["op"] != "refused"]
    refused = {r["batch"] for r in records if r["op"] == "refused"}
    with duckdb.connect(database, read_only=True) as con:
        found = {
            entry_id: (op, batch_id, int(n))
            for entry_id, op, batch_id, n in con.execute(
                "SELECT j.entry_id, j.op, j.batch_id, count(p.entry_id) FROM journal j "
                "LEFT JOIN postings p USING (entry_id) GROUP BY ALL"
            ).fetchall()
        }
    lost = [r for r in acked if r["entry"] not in found or found[r["entry"]][:2] != (r["op"], r["batch"])]
    without_postings = [r for r in acked if r["entry"] in found and found[r["entry"]][2] == 0]
    leftovers = sorted({b for _, b, _ in found.values() if b in refused})
    os.environ["BATCHROUTER_CONTROL"] = "direct"
    try:
        report = ledger_module.Ledger(database).verify()
    finally:
        os.environ.pop("BATCHROUTER_CONTROL", None)
    return {
        "acknowledged": len(acked),
        "refused": len(refused),
        "lost": len(lost),
        "without_postings": len(without_postings),
        "refusals_with_entries": len(leftovers),
        "verify_ok": report["ok"],
        "problems": report["problems"][:10],
    }


def soak(
    folder: Path, *, processes: int, ops: int, burners: int, seed: int = 7, timeout_s: float = 600.0
) -> dict[str, Any]:
    """Run the soak in `folder` and return its figures (see the module docstring)."""
    ledger_module = _bare_import("batchrouter.money.ledger")
    database = str(folder / "soak.duckdb")
    _grant(ledger_module.Ledger(database), processes, ops)
    outs = [folder / f"worker-{w}.jsonl" for w in range(processes)]
    burning = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL) for _ in range(burners)
    ]
    try:
        started = time.perf_counter()
        workers = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", database, str(w), str(ops), str(seed * 1000 + w), str(out)],
                stdin=subprocess.DEVNULL,
            )
            for w, out in enumerate(outs)
        ]
        deadline = time.monotonic() + timeout_s
        codes = []
        for p in workers:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        elapsed = time.perf_counter() - started
    finally:
        for p in burning:
            p.kill()
            p.wait()
    records = [json.loads(line) for out in outs if out.exists() for line in out.read_text().splitlines()]
    result = check(database, records)
    operations = len(records)
    return {"processes": processes, "burners": burners, "operations": operations, "seconds": round(elapsed, 2),
            "ops_per_s": round(operations / elapsed, 1), "worker_exit_codes": sorted(set(codes)), **result}  # fmt: skip


def baseline(folder: Path, *, operations: int, seed: int = 7) -> float:
    """Operations per second of one process running about as many operations alone (no burners)."""
    ledger_module = _bare_import("batchrouter.money.ledger")
    database = str(folder / "baseline.duckdb")
    _grant(ledger_module.Ledger(database), 1, operations)
    out = folder / "baseline.jsonl"
    started = time.perf_counter()
    rounds = max(1, operations * 10 // 19)  # a round is a reserve and, nine times in ten, its resolution
    worker(database, 0, rounds, seed, str(out))
    elapsed = time.perf_counter() - started
    done = len(out.read_text().splitlines())
    _bare_import("batchrouter.core.control").stop(database)
    return done / elapsed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--worker"]:
        database, worker_id, ops, seed, out = args[1:6]
        worker(database, int(worker_id), int(ops), int(seed), out)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--ops", type=int, default=200, help="rounds per process")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(args)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        figures = soak(folder, processes=opts.processes, ops=opts.ops, burners=opts.burners)
        alone = baseline(folder, operations=figures["operations"] // opts.processes)
    figures["baseline_ops_per_s"] = round(alone, 1)
    figures["throughput_ratio"] = round(figures["ops_per_s"] / alone, 2)
    bad = figures["lost"] or figures["without_postings"] or figures["refusals_with_entries"] or not figures["verify_ok"]
    if opts.json:
        print(json.dumps(figures))
    else:
        print(f"soak: {figures['operations']} operations from {opts.processes} processes with {opts.burners} "
              f"burners in {figures['seconds']} s: {figures['ops_per_s']} ops/s, "
              f"{figures['throughput_ratio']}x one process alone ({figures['baseline_ops_per_s']} ops/s)")  # fmt: skip
        print(
            f"acknowledged {figures['acknowledged']}, refused {figures['refused']}, lost {figures['lost']}, "
            f"without postings {figures['without_postings']}, verify {'OK' if figures['verify_ok'] else 'FAILED'}"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
