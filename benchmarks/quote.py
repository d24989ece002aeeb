"""Quote benchmark: a 1,000,000-item manifest, end to end (read, validate, count, route, price).

Prints items/s, peak memory, cores used, and the ratio of quote time to the bare tokenizer's time
over the very same texts: the plainest parallel count (forked workers, equal slices, one count()
per text already in memory as a Python string), with as many processes as the quote uses, and
with one process. Goal on a 2-core machine: under 60 s and 4 GB, ratio <= 1.3, both cores used.

The quote runs in a fresh child process reading the manifest file, so its peak memory is its own.

    .venv/bin/python benchmarks/quote.py [--items N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from bpe_openai import _bindings as bpe

from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import LimitsConfig, RoutePolicy
from batchrouter.intake import tokens
from batchrouter.intake.manifest import read_manifest
from batchrouter.intake.sample import sample_manifest
from batchrouter.pricing.quote import build_quote

_TEXTS: list[str] = []


def _bare_slice(bounds: tuple[int, int]) -> int:
    count = bpe.tokenizer_for_encoding("o200k_base").count
    return sum(count(t) for t in _TEXTS[bounds[0] : bounds[1]])


def bare_tokenizer(texts: list[str], workers: int) -> float:
    """Seconds for the plainest parallel count: forked workers, equal slices, a count() per text."""
    global _TEXTS
    _TEXTS = texts
    step = -(-len(texts) // (workers * 8))
    bounds = [(lo, min(lo + step, len(texts))) for lo in range(0, len(texts), step)]
    start = time.perf_counter()
    if workers == 1:
        for b in bounds:
            _bare_slice(b)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_bare_slice, bounds, chunksize=1)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def quote_file(path: str) -> dict[str, float]:
    """Run one quote of the manifest at `path`; the figures of this process and its workers."""
    catalog = load_catalog()
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    data = Path(path).read_bytes()
    manifest = read_manifest(path, data, catalog=catalog, limits=LimitsConfig())
    quote = build_quote(manifest, workspace="bench", catalog=catalog, policy=RoutePolicy())
    summary = quote.summary()
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    return {
        "wall": wall,
        "cpu": cpu,
        "accepted": summary["accepted"],
        "reserve": summary["reserve_usd_micros"],
        "peak_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--quote-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quote_only:
        print(json.dumps(quote_file(args.quote_only)))
        return
    workers = tokens.default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.parquet")
        sample_manifest(args.items).write_parquet(path)
        size = os.path.getsize(path)
        os.sync()  # the just-written file's write-back must not run during the timed quote
        child = subprocess.run(
            [sys.executable, __file__, "--quote-only", path], check=True, capture_output=True, text=True
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        frame = pl.read_parquet(path, columns=["system", "prompt"])
    texts = frame["system"].to_list() + frame["prompt"].to_list()
    del frame
    chars = sum(map(len, texts))
    bare_n = bare_tokenizer(texts, workers)
    bare_one = bare_tokenizer(texts, 1)
    assert result["accepted"] == args.items
    wall = result["wall"]
    print(f"manifest: {args.items:,} items, {size / 1e6:,.0f} MB Parquet, {chars / 1e6:,.0f} M characters")
    print(f"quote:          {wall:6.2f} s  {args.items / wall:,.0f} items/s   (goal < 60 s)")
    print(f"bare tokenizer: {bare_n:6.2f} s  same texts, {workers} processes")
    print(f"bare tokenizer: {bare_one:6.2f} s  same texts, one process")
    print(f"ratio quote / bare tokenizer ({workers} processes): {wall / bare_n:.2f}   (goal <= 1.3)")
    print(f"ratio quote / bare tokenizer (one process):  {wall / bare_one:.2f}")
    print(f"cores used during quote: {result['cpu'] / wall:.2f} of {os.cpu_count()}")
    print(
        f"peak RSS of the quote: main process {result['peak_self_mb']:,.0f} MB, "
        f"each worker at most {result['peak_worker_mb']:,.0f} MB (shared pages counted in both)   (goal < 4,096 MB)"
    )
    print(f"reserve {result['reserve']:,} micro-USD")


if __name__ == "__main__":
    main()
