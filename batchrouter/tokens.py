"""Token counts for quotes: exact for OpenAI encodings, a documented upper bound elsewhere.

Chat messages are counted the way OpenAI bills them: each message costs its content plus
`TOKENS_PER_MESSAGE` and its role (and `TOKENS_PER_NAME` plus the name, when one is given), and
every request adds `REPLY_PRIMING` for the assistant turn the model starts. For providers with no
public tokenizer (`tokenizer = "estimate"`), content is counted with o200k_base and multiplied by
the catalog's `token_factor` (rounded up per message), which the catalog sets above the highest
ratio seen for that provider's tokenizers, so the reservation stays an upper bound.

The tokenizer (bpe-openai, Rust) holds the GIL, so large inputs are counted in forked worker
processes, each over a contiguous slice, to use every core.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl
from bpe_openai import _bindings as bpe  # the only entry point with a non-allocating count()

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
ESTIMATE_BASE = "o200k_base"
EXACT_ENCODINGS = ("o200k_base", "cl100k_base")

# Below this many characters, forking workers costs more than it saves.
PARALLEL_MIN_CHARS = 2_000_000

_WORK: Sequence[str] = ()


@lru_cache(maxsize=4)
def _tokenizer(encoding: str) -> Any:
    return bpe.tokenizer_for_encoding(encoding)


def count_text(text: str, encoding: str) -> int:
    """Tokens in one text under `encoding` (an exact encoding, or `estimate` for its o200k base)."""
    return int(_tokenizer(_base(encoding)).count(text))


def _base(encoding: str) -> str:
    return ESTIMATE_BASE if encoding == "estimate" else encoding


def _count_slice(args: tuple[str, int, int]) -> np.ndarray:
    encoding, lo, hi = args
    count = _tokenizer(encoding).count
    return np.fromiter((count(t) for t in _WORK[lo:hi]), dtype=np.int64, count=hi - lo)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def count_texts(texts: Sequence[str], encoding: str, *, workers: int | None = None) -> np.ndarray:
    """Token count of each text, in order; parallel across processes for large inputs."""
    encoding = _base(encoding)
    n = len(texts)
    workers = default_workers() if workers is None else workers
    total_chars = sum(map(len, texts)) if workers > 1 else 0
    if workers <= 1 or total_chars < PARALLEL_MIN_CHARS:
        global _WORK
        _WORK = texts
        try:
            return _count_slice((encoding, 0, n))
        finally:
            _WORK = ()
    return _count_parallel(texts, encoding, workers, total_chars)


def _count_parallel(texts: Sequence[str], encoding: str, workers: int, total_chars: int) -> np.ndarray:
    global _WORK
    # Slices of roughly equal text volume; several per worker so a slow slice does not idle a core.
    target = max(1, total_chars // (workers * 8))
    bounds, acc, lo = [], 0, 0
    for i, t in enumerate(texts):
        acc += len(t)
        if acc >= target:
            bounds.append((encoding, lo, i + 1))
            lo, acc = i + 1, 0
    if lo < len(texts):
        bounds.append((encoding, lo, len(texts)))
    _WORK = texts
    try:
        # fork: workers inherit the texts instead of receiving them through pipes.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_count_slice, bounds, chunksize=1)
    finally:
        _WORK = ()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def input_tokens(
    messages: pl.Series, tokenizer: pl.Series, factor_milli: pl.Series, *, workers: int | None = None
) -> pl.Series:
    """Billed input tokens per item.

    Args:
        messages: `list[struct{role, content, name}]` per item, already validated (non-empty).
        tokenizer: the item model's tokenizer name (`o200k_base`, `cl100k_base` or `estimate`).
        factor_milli: the model's token factor x 1000 (1000 for exact encodings).
        workers: processes for counting; default: one per available core.
    """
    frame = pl.DataFrame(
        {"messages": messages, "tokenizer": tokenizer, "factor_milli": factor_milli}
    ).with_row_index("item")
    flat = (
        frame.explode("messages")
        .with_columns(
            pl.col("messages").struct.field("role").alias("role"),
            pl.col("messages").struct.field("content").alias("content"),
            pl.col("messages").struct.field("name").alias("name"),
            pl.col("tokenizer").replace({"estimate": ESTIMATE_BASE}).alias("encoding"),
        )
        .drop("messages")
        .with_row_index("pos")
        .sort("encoding", "pos")
    )
    counts = np.zeros(flat.height, dtype=np.int64)
    name_counts = np.zeros(flat.height, dtype=np.int64)
    role_counts = np.zeros(flat.height, dtype=np.int64)
    offset = 0
    for encoding, group in flat.group_by("encoding", maintain_order=True):
        size = group.height
        counts[offset : offset + size] = count_texts(group["content"].to_list(), str(encoding[0]), workers=workers)
        roles = {r: count_text(r, str(encoding[0])) for r in group["role"].unique().to_list()}
        role_counts[offset : offset + size] = group["role"].replace_strict(roles, return_dtype=pl.Int64).to_numpy()
        named = group["name"].is_not_null().to_numpy()
        if named.any():
            names = group["name"].to_list()
            name_counts[offset : offset + size][named] = [
                TOKENS_PER_NAME + count_text(names[i], str(encoding[0])) for i in np.flatnonzero(named)
            ]
        offset += size
    per_message = flat.select("item", "factor_milli").with_columns(
        content=pl.Series(counts),
        role=pl.Series(role_counts),
        name=pl.Series(name_counts),
    )
    scaled = (pl.col("content") * pl.col("factor_milli") + 999) // 1000
    totals = (
        per_message.group_by("item")
        .agg((TOKENS_PER_MESSAGE + pl.col("role") + scaled + pl.col("name")).sum().alias("tokens"))
        .sort("item")
    )
    out = frame.select("item").join(totals, on="item", how="left")["tokens"].fill_null(0) + REPLY_PRIMING
    return out.rename("input_tokens")
