"""Usage report benchmark: `usage_daily` over 10,000,000 synthetic receipts in Parquet.

Writes the receipts under a temporary storage root (100 batch folders, as real batches would be),
then times `SELECT * FROM usage_daily` through the same DuckDB views `batchrouter sql` uses.
Goal on this machine: under 2 s.

    .venv/bin/python benchmarks/report.py [--rows N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from batchrouter.core.config import load_settings
from batchrouter.output.receipts import RECEIPT_COLUMNS
from batchrouter.output.reporting import connect

BATCHES = 100


def synthetic_receipts(rows: int, seed: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-10-01T00:00:00", "us")
    finished = start + rng.integers(0, 30 * 86_400 * 10**6, rows).astype("timedelta64[us]")
    models = np.array(["gpt-4o-mini", "claude-haiku-4-5", "gpt-5.4-nano", "llama-3.1-8b-instruct"])
    providers = np.array(["openai", "anthropic", "openai", "selfhosted"])
    pick = rng.integers(0, 4, rows)
    inputs = rng.integers(20, 4000, rows)
    outputs = rng.integers(1, 800, rows)
    frame = pl.DataFrame(
        {
            "item_id": pl.int_range(0, rows, eager=True).cast(pl.String),
            "workspace": rng.choice(np.array(["acme", "globex", "initech", "umbrella"]), rows),
            "route": models[pick],
            "provider": providers[pick],
            "model": models[pick],
            "status": np.where(rng.random(rows) < 0.98, "succeeded", "failed"),
            "attempts": rng.integers(1, 3, rows),
            "input_tokens": inputs,
            "output_tokens": outputs,
            "cached_tokens": np.zeros(rows, dtype=np.int64),
            "reserve_usd_micros": inputs + outputs * 4,
            "cost_usd_micros": (inputs * 15 + outputs * 60) // 100,
            "cost_source": np.full(rows, "catalog"),
            "latency_ms": rng.integers(100, 3000, rows),
            "started_at": pl.Series(finished).dt.replace_time_zone("UTC"),
            "finished_at": pl.Series(finished).dt.replace_time_zone("UTC"),
        }
    )
    return frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        frame = synthetic_receipts(args.rows)
        per = -(-args.rows // BATCHES)
        for b in range(BATCHES):
            part = frame.slice(b * per, per).with_columns(pl.lit(f"batch-{b:03d}").alias("batch_id"))
            for col in RECEIPT_COLUMNS:
                if col not in part.columns:
                    part = part.with_columns(pl.lit(None, pl.String).alias(col))
            folder = Path(tmp, "storage", "batches", f"batch-{b:03d}")
            folder.mkdir(parents=True)
            part.select(RECEIPT_COLUMNS).write_parquet(folder / "receipts.parquet")
        del frame
        settings = load_settings(storage={"root": str(Path(tmp, "storage"))}, database=str(Path(tmp, "ledger.duckdb")))
        with connect(settings) as con:
            timings = []
            for _ in range(3):
                start = time.perf_counter()
                rows = con.execute("SELECT * FROM usage_daily").fetchall()
                timings.append(time.perf_counter() - start)
            total = con.execute("SELECT sum(items) FROM usage_daily").fetchone()
    assert total is not None
    print(
        f"usage_daily over {args.rows:,} receipts in {BATCHES} batch files: {len(rows):,} rows out "
        f"({total[0]:,} items counted)"
    )
    print(f"time: first {timings[0]:.2f} s, best {min(timings):.2f} s   (goal < 2 s)")


if __name__ == "__main__":
    main()
