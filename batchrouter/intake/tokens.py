"""Token counts for quotes: exact for OpenAI encodings, a documented upper bound elsewhere.

Chat messages are counted the way OpenAI bills them: each message costs its content plus
`TOKENS_PER_MESSAGE` and its role (and `TOKENS_PER_NAME` plus the name, when one is given), and
every request adds `REPLY_PRIMING` for the assistant turn the model starts. For providers with no
public tokenizer (`tokenizer = "estimate"`), content is counted with o200k_base and multiplied by
the catalog's `token_factor` (rounded up per message), which the catalog sets above the highest
ratio seen for that provider's tokenizers, so the reservation stays an upper bound.

The tokenizer (bpe-openai, Rust) holds the GIL, so large inputs are counted in worker processes,
each over a contiguous slice, to use every core: forked from a single-threaded caller (they inherit
the Arrow buffers), or from a clean forkserver reading a memory-mapped Arrow file when other threads
run (a fork would copy the locks they hold).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa


def _bindings() -> Any:
    """bpe-openai's Rust extension, the only entry point with a non-allocating `count()`.

    It is loaded without the package's `__init__`, which reads three vocabularies into Python dicts to
    list their special tokens (about half a second of every command's start-up) and which the extension
    does not need: it loads the one vocabulary asked for itself. Another layout of the package falls back to
    the plain import.
    """
    name = "bpe_openai._bindings"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("bpe_openai")
    folders = list(spec.submodule_search_locations or []) if spec else []
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = [os.path.join(f, n) for f in folders for n in sorted(os.listdir(f)) if n.startswith("_bindings.")]
    found = [path for path in found if path.endswith(suffixes)]
    if not found:
        from bpe_openai import _bindings as plain

        return plain
    loader = importlib.machinery.ExtensionFileLoader(name, found[0])
    module_spec = importlib.util.spec_from_file_location(name, found[0], loader=loader)
    assert module_spec is not None
    module = importlib.util.module_from_spec(module_spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module


bpe = _bindings()

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Tool definitions, structured-output schemas, tool calls and predictions are billed as input. They are
# counted as their compact JSON (more tokens than the forms providers render them in: the cookbook's
# one-function tool is 87 tokens as JSON, billed 68 on gpt-4o) plus a framing allowance per request.
# Anthropic adds a tool-use system prompt of about 350 tokens on current models; the estimate allows 500.
TOOLS_OVERHEAD = 32
TOOLS_OVERHEAD_ESTIMATE = 500
SCHEMA_OVERHEAD = 16  # a json_schema response format: its framing, and key order differing from ours
# Claude's own framing of a request is larger than OpenAI's (a lone "hi" counts 15 tokens on Opus 4.7,
# where the o200k-based estimate gives 10): estimated requests carry this allowance on top.
ESTIMATE_REQUEST_OVERHEAD = 24
ESTIMATE_BASE = "o200k_base"
EXACT_ENCODINGS = ("o200k_base", "cl100k_base")

# Below this many characters, forking workers costs more than it saves.
PARALLEL_MIN_CHARS = 2_000_000

# Texts being counted in parallel, as Arrow arrays: forked workers read their slices straight from the
# Arrow buffers they inherit, so no Python string is built in the parent or copied into a worker. Only
# the parallel path uses it, under `_WORK_LOCK`, so concurrent callers never see each other's texts.
_WORK: list[pa.Array] = []
_WORK_LOCK = threading.Lock()
_SUBCHUNK = 4096


@lru_cache(maxsize=4)
def _tokenizer(encoding: str) -> Any:
    return bpe.tokenizer_for_encoding(encoding)


def _base(encoding: str) -> str:
    return ESTIMATE_BASE if encoding == "estimate" else encoding


def count_text(text: str, encoding: str) -> int:
    """Tokens in one text under `encoding` (an exact encoding, or `estimate` for its o200k base)."""
    return int(_tokenizer(_base(encoding)).count(text))


def _count_slice(args: tuple[int, str, int, int], arrays: list[pa.Array] | None = None) -> np.ndarray:
    segment, encoding, lo, hi = args
    count = _tokenizer(encoding).count
    texts = (_WORK if arrays is None else arrays)[segment]
    out = np.empty(hi - lo, dtype=np.int64)
    for start in range(lo, hi, _SUBCHUNK):
        chunk = texts.slice(start, min(_SUBCHUNK, hi - start)).to_pylist()
        out[start - lo : start - lo + len(chunk)] = [count(t) for t in chunk]
    return out


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _as_arrow(texts: Sequence[str] | pl.Series) -> tuple[pa.Array, np.ndarray]:
    """(the texts as one Arrow array, each text's length in bytes)."""
    series = texts if isinstance(texts, pl.Series) else pl.Series(list(texts), dtype=pl.String)
    series = series.rechunk()
    lengths = series.str.len_bytes().fill_null(0).to_numpy()
    return series.to_arrow(compat_level=pl.CompatLevel.newest()), lengths


def count_texts(texts: Sequence[str] | pl.Series, encoding: str, *, workers: int | None = None) -> np.ndarray:
    """Token count of each text, in order; parallel across processes for large inputs."""
    return count_segments([(encoding, texts)], workers=workers)[0]


def count_segments(
    segments: list[tuple[str, Sequence[str] | pl.Series]], *, workers: int | None = None
) -> list[np.ndarray]:
    """Token counts for several lists of texts, each under its own encoding, with one worker pool."""
    workers = default_workers() if workers is None else workers
    converted = [_as_arrow(texts) for _, texts in segments]
    arrays = [arr for arr, _ in converted]
    lengths = [lens for _, lens in converted]
    spans = [(i, _base(enc), 0, len(arr)) for i, ((enc, _), arr) in enumerate(zip(segments, arrays, strict=True))]
    total = int(sum(int(lens.sum()) for lens in lengths))
    if workers <= 1 or total < PARALLEL_MIN_CHARS:
        return [_count_slice(span, arrays) for span in spans]
    return _count_parallel(spans, arrays, lengths, workers)


def _count_parallel(
    spans: list[tuple[int, str, int, int]], arrays: list[pa.Array], lengths: list[np.ndarray], workers: int
) -> list[np.ndarray]:
    # Slices of roughly equal text volume, several per worker so a slow slice does not idle a core.
    pieces = workers * 8
    total = sum(int(lens.sum()) for lens in lengths)
    bounds = []
    for segment, encoding, _, n in spans:
        size = int(lengths[segment].sum())
        k = max(1, round(pieces * size / total)) if total else 1
        cuts: Any = np.searchsorted(np.cumsum(lengths[segment]), np.linspace(0, size, k + 1)[1:-1]) if k > 1 else []
        edges = [0, *sorted({int(c) for c in cuts if 0 < c < n}), n]
        bounds += [(segment, encoding, lo, hi) for lo, hi in zip(edges, edges[1:], strict=False) if hi > lo]
    if threading.active_count() == 1:
        parts = _count_forked(arrays, bounds, workers)
    else:
        parts = _count_in_forkserver(arrays, bounds, workers)
    out = []
    for segment, _, _, n in spans:
        mine = [p for b, p in zip(bounds, parts, strict=True) if b[0] == segment]
        out.append(np.concatenate(mine) if mine else np.zeros(n, dtype=np.int64))
    return out


def _count_forked(arrays: list[pa.Array], bounds: list[tuple[int, str, int, int]], workers: int) -> list[np.ndarray]:
    """fork: workers inherit the Arrow buffers instead of receiving texts through pipes.

    Only safe while this is the process's one thread: a fork copies locks other threads hold.
    """
    global _WORK
    with _WORK_LOCK:
        _WORK = arrays
        try:
            return _map_and_join(multiprocessing.get_context("fork"), workers, _count_slice, bounds)
        finally:
            _WORK = []


def _map_and_join(context: Any, workers: int, fn: Callable[[Any], np.ndarray], args: list[Any]) -> list[np.ndarray]:
    """`fn` over `args` in a pool of `workers`, whose workers then exit on their own (`close`, `join`).

    Not `with Pool(...)`: leaving it terminates the pool, and a worker the pool's own thread starts again
    during that terminate is never stopped, so the join waits for ever (seen once in a test run). Only a
    failure terminates the pool here, and its workers take SIGTERM's default (a handler the parent set, a
    server's say, would let them outlive it)."""
    pool = context.Pool(workers, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL))
    try:
        out: list[np.ndarray] = pool.map(fn, args, chunksize=1)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
    return out


def _count_in_forkserver(
    arrays: list[pa.Array], bounds: list[tuple[int, str, int, int]], workers: int
) -> list[np.ndarray]:
    """With other threads running (an API server, a Dagster run), workers come from a clean forkserver
    and memory-map the texts from an Arrow file in shared memory rather than inheriting them."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=folder, prefix="batchrouter-tokens-") as tmp:
        path = os.path.join(tmp, "texts.arrow")
        schema = pa.schema([("text", pa.large_string())])
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for array in arrays:
                writer.write_batch(pa.record_batch([array.cast(pa.large_string())], schema=schema))
        return _map_and_join(
            multiprocessing.get_context("forkserver"), workers, _count_file_slice, [(path, *b) for b in bounds]
        )


def _count_file_slice(args: tuple[str, int, str, int, int]) -> np.ndarray:
    path, segment, encoding, lo, hi = args
    with pa.memory_map(path) as source:
        texts = pa.ipc.open_file(source).get_batch(segment).column(0)
        return _count_slice((0, encoding, lo, hi), [texts])


def input_tokens(items: pl.DataFrame, *, workers: int | None = None) -> pl.Series:
    """Billed input tokens per item.

    Args:
        items: per item `system` (nullable), `prompt` (nullable), `messages` (nullable
            `list[struct{role, content, name}]`), `tokenizer` (`o200k_base`, `cl100k_base` or
            `estimate`) and `token_factor_milli` (the model's token factor x 1000).
        workers: processes for counting; default: one per available core.

    Prompt and system texts are counted column-wise, without building a row per message; a batch
    usually shares a handful of system prompts, so each distinct one is counted once. Only items
    given as `messages` are exploded into one row per message.
    """
    if items.height == 0:
        return pl.Series("input_tokens", [], dtype=pl.Int64)
    frame = items.select(
        "system",
        "prompt",
        "messages",
        "token_factor_milli",
        pl.col("tokenizer").replace({"estimate": ESTIMATE_BASE}).alias("encoding"),
        (pl.col("tokenizer") == "estimate").alias("estimated"),
        _optional(items, "billed_text", pl.String()),
        _optional(items, "features", pl.List(pl.String)),
    ).with_row_index("item")
    encodings = sorted(set(frame["encoding"].to_list()))
    segments: list[tuple[str, Sequence[str] | pl.Series]] = []
    plans = []
    for encoding in encodings:
        sub = frame.filter(pl.col("encoding") == encoding)
        prompts = sub.filter(pl.col("prompt").is_not_null()).select("item", "prompt")
        systems = sub.filter(pl.col("system").is_not_null()).select("item", "system")
        distinct = systems["system"].unique(maintain_order=True)
        chat = (
            sub.filter(pl.col("messages").is_not_null())
            .select("item", "token_factor_milli", "messages")
            .explode("messages")
            .select(
                "item",
                "token_factor_milli",
                pl.col("messages").struct.field("role").alias("role"),
                pl.col("messages").struct.field("content").alias("content"),
                pl.col("messages").struct.field("name").alias("name"),
            )
        )
        billed = sub.filter(pl.col("billed_text").is_not_null()).select("item", "billed_text")
        segments += [
            (encoding, prompts["prompt"]),
            (encoding, distinct),
            (encoding, chat["content"]),
            (encoding, billed["billed_text"]),
        ]
        plans.append((encoding, prompts, systems, distinct, chat, billed))
    counts = count_segments(segments, workers=workers)
    found: list[pl.DataFrame] = []
    for i, (encoding, prompts, systems, distinct, chat, billed) in enumerate(plans):
        prompt_n, system_n, chat_n, billed_n = counts[4 * i : 4 * i + 4]
        found.append(prompts.select("item", pl.Series("prompt_tokens", prompt_n, dtype=pl.Int64)))
        found.append(billed.select("item", pl.Series("billed_tokens", billed_n, dtype=pl.Int64)))
        table = pl.DataFrame({"system": distinct, "system_tokens": pl.Series(system_n, dtype=pl.Int64)})
        found.append(systems.join(table, on="system", how="left").select("item", "system_tokens"))
        if chat.height:
            found.append(_chat_tokens(chat.with_columns(content_tokens=pl.Series(chat_n, dtype=pl.Int64)), encoding))
    base = frame.select("item", "encoding", "token_factor_milli", "estimated", "features")
    for column in ("prompt_tokens", "system_tokens", "chat_tokens", "billed_tokens"):
        parts = [f for f in found if column in f.columns]
        if parts:
            base = base.join(pl.concat(parts), on="item", how="left", maintain_order="left")
        else:
            base = base.with_columns(pl.lit(None, pl.Int64).alias(column))
    roles = {e: (count_text("system", e), count_text("user", e)) for e in encodings}
    factor = pl.col("token_factor_milli")

    def message(tokens: str, role_tokens: pl.Expr) -> pl.Expr:
        scaled = (pl.col(tokens) * factor + 999) // 1000
        return pl.when(pl.col(tokens).is_not_null()).then(TOKENS_PER_MESSAGE + role_tokens + scaled).otherwise(0)

    system_role = pl.col("encoding").replace_strict({e: r[0] for e, r in roles.items()}, return_dtype=pl.Int64)
    user_role = pl.col("encoding").replace_strict({e: r[1] for e, r in roles.items()}, return_dtype=pl.Int64)
    tools_overhead = (
        pl.when(pl.col("features").list.contains("tools").fill_null(False))
        .then(pl.when(pl.col("estimated")).then(TOOLS_OVERHEAD_ESTIMATE).otherwise(TOOLS_OVERHEAD))
        .otherwise(0)
    )
    total = (
        REPLY_PRIMING
        + message("system_tokens", system_role)
        + message("prompt_tokens", user_role)
        + pl.col("chat_tokens").fill_null(0)
        + (pl.col("billed_tokens").fill_null(0) * factor + 999) // 1000
        + tools_overhead
        + pl.when(pl.col("features").list.contains("json_schema").fill_null(False)).then(SCHEMA_OVERHEAD).otherwise(0)
        + pl.when(pl.col("estimated")).then(ESTIMATE_REQUEST_OVERHEAD).otherwise(0)
    )
    return base.select(total.cast(pl.Int64).alias("input_tokens"))["input_tokens"]


def predicted_tokens(items: pl.DataFrame) -> pl.Series:
    """Per item, the tokens of its `prediction` (`predicted_text`), scaled like content; 0 without one.

    Rejected prediction tokens are billed at completion rates on top of the cap, so the reservation
    counts all of them as output.
    """
    out = np.zeros(items.height, dtype=np.int64)
    if "predicted_text" in items.columns:
        frame = items.select(
            pl.int_range(pl.len()).alias("i"),
            "predicted_text",
            "token_factor_milli",
            pl.col("tokenizer").replace({"estimate": ESTIMATE_BASE}).alias("encoding"),
        ).filter(pl.col("predicted_text").is_not_null())
        for (encoding,), group in frame.group_by(["encoding"]):
            counts = count_texts(group["predicted_text"], str(encoding), workers=1)
            scaled = (counts * group["token_factor_milli"].to_numpy() + 999) // 1000
            out[group["i"].to_numpy()] = scaled
    return pl.Series("predicted_tokens", out, dtype=pl.Int64)


def _optional(items: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    return pl.col(name) if name in items.columns else pl.lit(None, dtype).alias(name)


def _chat_tokens(chat: pl.DataFrame, encoding: str) -> pl.DataFrame:
    """Per item, the tokens of its `messages`: each adds its scaled content, its role and its name."""
    roles = {r: count_text(r, encoding) for r in chat["role"].unique().to_list()}
    names = {n: TOKENS_PER_NAME + count_text(n, encoding) for n in chat["name"].drop_nulls().unique().to_list()}
    scaled = (pl.col("content_tokens") * pl.col("token_factor_milli") + 999) // 1000
    role = pl.col("role").replace_strict(roles, return_dtype=pl.Int64)
    name = pl.col("name").replace_strict(names, default=0, return_dtype=pl.Int64).fill_null(0) if names else pl.lit(0)
    return chat.group_by("item").agg((TOKENS_PER_MESSAGE + role + scaled + name).sum().alias("chat_tokens"))
