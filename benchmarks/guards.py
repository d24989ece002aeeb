"""Guards benchmark: recall and false-positive rate over the labelled set, and scan speed.

The labelled set (`tests/guardset.py`) is built at run time from real text on this machine plus
generated cards and credentials in every field an item sends. Prints recall, false-positive rate
(overall and per category), and how long `guards.scan` takes as a ratio to a plain literal
`str.contains` over the same texts in the same run: once over the labelled set (number-heavy, many
candidates), once over sample-manifest items (ordinary prompts, as quotes see them).
Goal: recall >= 99%, false positives <= 0.5%.

    .venv/bin/python benchmarks/guards.py [--items N]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from guardset import Sample, items_frame, labelled_set  # noqa: E402

from batchrouter.intake import guards
from batchrouter.intake.sample import sample_manifest  # noqa: E402


def best_of(runs: int, fn: object) -> float:
    assert callable(fn)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def baseline(frame: pl.DataFrame) -> None:
    """A plain literal search over every text column the guard scans."""
    exprs = [pl.col(c).str.contains("BEGIN", literal=True) for c in ("system", "prompt", "params", "metadata")]
    exprs.append(pl.col("messages").list.eval(pl.element().struct.field("content").str.contains("BEGIN", literal=True)))
    frame.select(exprs)


def accuracy(samples: list[Sample], found: list[dict[str, str | None]]) -> None:
    by: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for sample, f in zip(samples, found, strict=True):
        wrong = (f["kind"] != sample.expected) if sample.expected else f["kind"] is not None
        by[sample.category][0] += 1
        by[sample.category][1] += wrong
    positives = [s for s in samples if s.expected]
    negatives = [s for s in samples if not s.expected]
    missed = sum(by[c][1] for c in ("card", "credential"))
    flagged = sum(v[1] for c, v in by.items() if c not in ("card", "credential"))
    print(f"labelled set: {len(samples):,} items, {len(positives):,} positive, {len(negatives):,} negative")
    print(f"recall:               {1 - missed / len(positives):7.2%}   (goal >= 99%)")
    print(f"false-positive rate:  {flagged / len(negatives):7.2%}   (goal <= 0.5%)")
    for category, (n, wrong) in sorted(by.items()):
        label = "missed" if category in ("card", "credential") else "flagged"
        print(f"  {category:<13} {n:5,} items, {wrong:3} {label}")


def speed(name: str, frame: pl.DataFrame) -> None:
    chars = sum(
        int(frame[c].str.len_chars().sum() or 0)
        for c in ("system", "prompt", "params", "metadata")
        if c in frame.columns
    )
    if "messages" in frame.columns:
        contents = frame["messages"].list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
        chars += int(contents.sum() or 0)
    base = best_of(3, lambda: baseline(frame))
    scan = best_of(3, lambda: guards.scan(frame))
    print(
        f"{name}: {frame.height:,} items, {chars / 1e6:,.0f} M characters: scan {scan:.3f} s "
        f"({chars / scan / 1e6:,.0f} M chars/s), literal str.contains {base:.3f} s, ratio {scan / base:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200_000, help="sample-manifest items for the speed run")
    args = parser.parse_args()
    samples = labelled_set()
    frame = items_frame(samples)
    accuracy(samples, guards.scan(frame).to_dicts())
    speed("labelled set x20", pl.concat([frame] * 20))
    sample = sample_manifest(args.items)
    prompts = sample.select(
        "system",
        "prompt",
        "metadata",
        pl.lit(None, pl.String).alias("params"),
        pl.lit(None, guardset_messages()).alias("messages"),
    )
    speed("sample manifest", prompts)


def guardset_messages() -> pl.DataType:
    return items_frame([]).schema["messages"]


if __name__ == "__main__":
    main()
