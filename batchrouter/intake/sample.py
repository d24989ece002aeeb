"""Deterministic sample manifests with a realistic prompt-length mix (demo, tests, benchmarks)."""

from __future__ import annotations

import numpy as np
import polars as pl

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no what up out who them some "
    "could into time only new like other about more these two may first then do any than its now my made "
    "over did down way people after many must years before much where your well back our through just "
    "customer invoice shipment order refund delivery account balance contract summary report quarter revenue "
    "translate classify extract sentiment review product feature bug request support ticket priority urgent "
    "analysis dataset model latency throughput pipeline schedule warehouse inventory supplier compliance "
    "policy privacy security incident resolution escalation agreement renewal pricing discount forecast"
).split()

_TASKS = (
    "Summarise the following text in two sentences:",
    "Classify the sentiment of this review as positive, negative or neutral:",
    "Extract every company name and date from the text below as JSON:",
    "Translate the following passage into French:",
    "Answer the customer's question politely and concisely:",
)

DEFAULT_MODEL_MIX = {"gpt-4o-mini": 0.6, "claude-haiku-4-5": 0.2, "gpt-5.4-nano": 0.1, "llama-3.1-8b-instruct": 0.1}


def sample_manifest(
    items: int, *, seed: int = 7, model_mix: dict[str, float] | None = None, median_chars: int = 600
) -> pl.DataFrame:
    """A manifest of `items` rows: item_id, model, system, prompt, max_tokens, metadata, plus `team`.

    Prompt lengths are log-normal (median `median_chars`, long tail to 24,000 characters), which is
    how real batch workloads look: mostly short classification or extraction prompts, a few long
    documents. `team` is an extra column, carried as metadata.
    """
    rng = np.random.default_rng(seed)
    mix = model_mix or DEFAULT_MODEL_MIX
    corpus = " ".join(rng.choice(_WORDS, size=400_000).tolist())
    lengths = np.clip(rng.lognormal(np.log(median_chars), 0.9, size=items), 20, 24_000).astype(np.int64)
    starts = rng.integers(0, len(corpus) - 24_001, size=items)
    tasks = rng.integers(0, len(_TASKS), size=items)
    prompts = [
        f"{_TASKS[t]}\n\n{corpus[s : s + n]}"
        for t, s, n in zip(tasks.tolist(), starts.tolist(), lengths.tolist(), strict=True)
    ]
    names = list(mix)
    probs = np.array([mix[n] for n in names], dtype=float)
    models = rng.choice(names, size=items, p=probs / probs.sum())
    caps = np.array([None, 256, 512, 1024], dtype=object)[rng.choice(4, size=items, p=[0.4, 0.3, 0.2, 0.1])]
    return pl.DataFrame(
        {
            "item_id": [f"item-{i:07d}" for i in range(items)],
            "model": models.tolist(),
            "system": ["You are a careful assistant. Reply in plain text."] * items,
            "prompt": prompts,
            "max_tokens": pl.Series(caps.tolist(), dtype=pl.Int64),
            "metadata": [f'{{"source": "sample", "n": {i}}}' for i in range(items)],
            "team": rng.choice(["growth", "support", "research"], size=items).tolist(),
        }
    )
