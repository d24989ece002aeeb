"""Exact input-token counts, billed the way OpenAI bills chat requests, and the estimate tokenizer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from decimal import Decimal
from typing import Any

import bpe_openai
import numpy as np
import pytest

from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import LimitsConfig, ModelConfig, RoutePolicy
from batchrouter.intake import tokens
from batchrouter.intake.manifest import read_manifest
from batchrouter.pricing.quote import build_quote

O200K = bpe_openai.get_encoding("o200k_base")
CL100K = bpe_openai.get_encoding("cl100k_base")


@pytest.fixture
def catalog() -> Catalog:
    """The built-in catalog plus a cl100k_base model: gpt-3.5-turbo is retired, so a [[models]] entry serves it."""
    legacy = ModelConfig(
        name="gpt-3.5-turbo",
        provider="legacy",
        upstream="gpt-3.5-turbo-0125",
        input_usd_per_mtok=Decimal("0.50"),
        output_usd_per_mtok=Decimal("1.50"),
        context_window=16385,
        max_output_tokens=4096,
        tokenizer="cl100k_base",
    )
    return load_catalog([legacy])


# The example conversation of OpenAI's cookbook "How to count tokens with tiktoken" (section 6). The
# cookbook shows the OpenAI API itself reporting usage.prompt_tokens = 129 for it on gpt-3.5-turbo
# (cl100k_base) and 124 on gpt-4o-mini (o200k_base).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": (
            "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."
        ),
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": (
            "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."
        ),
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

TEXTS = [
    "Say this is a test!",
    "Привет, как дела? 😀🎉",
    "日本語のテキストです",
    "नमस्ते दुनिया",
    "<|endoftext|> is plain text here",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n",
    "🧑‍💻👩🏽‍🚀 emoji with joiners",
    "a" * 5000,
]


def counted(catalog: Catalog, model: str, *requests: list[dict[str, Any]], workers: int = 1) -> list[int]:
    """Input tokens of one JSONL item per message list, as the quote counts them."""
    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": messages, "max_tokens": 10},
            }
        )
        for i, messages in enumerate(requests)
    ]
    manifest = read_manifest("t.jsonl", "\n".join(lines).encode(), catalog=catalog, limits=LimitsConfig())
    assert manifest.rejected.height == 0
    quote = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=workers)
    return quote.items["input_tokens"].to_list()


def by_hand(messages: list[dict[str, Any]], encoding: Any) -> int:
    """OpenAI's formula: per message 3 + role + content (+ 1 + name), plus 3 for the reply priming."""
    total = 3
    for message in messages:
        total += 3 + len(encoding.encode_ordinary(message["role"]))
        total += len(encoding.encode_ordinary(message["content"]))
        if "name" in message:
            total += 1 + len(encoding.encode_ordinary(message["name"]))
    return total


def test_openai_reference_prompt_is_13_tokens_on_o200k(catalog: Catalog) -> None:
    # OpenAI's API reference example: one user message "Say this is a test!" reports prompt_tokens 13
    # (3 per message + 1 for "user" + 6 content tokens + 3 reply priming).
    assert counted(catalog, "gpt-4o-mini", [{"role": "user", "content": "Say this is a test!"}]) == [13]


def test_cookbook_conversation_with_names_is_124_tokens_on_o200k(catalog: Catalog) -> None:
    assert counted(catalog, "gpt-4o-mini", COOKBOOK_MESSAGES) == [124]


def test_cookbook_conversation_with_names_is_129_tokens_on_cl100k(catalog: Catalog) -> None:
    assert counted(catalog, "gpt-3.5-turbo", COOKBOOK_MESSAGES) == [129]


def test_each_message_adds_three_plus_its_role(catalog: Catalog) -> None:
    one = [{"role": "user", "content": "Hello there"}]
    two = [{"role": "assistant", "content": "Hello there"}, *one]
    small, large = counted(catalog, "gpt-4o-mini", one, two)
    assert small == by_hand(one, O200K)
    # The extra message costs 3 + its role ("assistant" is one token) + its content.
    assert large - small == 3 + 1 + len(O200K.encode_ordinary("Hello there"))


def test_a_name_adds_one_plus_the_name_tokens(catalog: Catalog) -> None:
    plain = [{"role": "user", "content": "Hello"}]
    named = [{"role": "user", "name": "example_user", "content": "Hello"}]
    without, with_name = counted(catalog, "gpt-4o-mini", plain, named)
    # "example_user" is 2 tokens in o200k_base ("example", "_user").
    assert len(O200K.encode_ordinary("example_user")) == 2
    assert with_name - without == 1 + 2


def test_system_column_is_counted_as_a_message_before_the_prompt(catalog: Catalog) -> None:
    data = b"item_id,model,system,prompt,max_tokens\n1,gpt-4o-mini,You are terse.,Say this is a test!,10\n"
    manifest = read_manifest("t.csv", data, catalog=catalog, limits=LimitsConfig())
    quote = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)
    expected = by_hand(
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say this is a test!"}], O200K
    )
    # Two messages: 3 + 1 + 4 ("You are terse.") + 3 + 1 + 6 + 3 reply priming = 21.
    assert expected == 21
    assert quote.items["input_tokens"].to_list() == [expected]


def test_cl100k_model_is_counted_with_cl100k(catalog: Catalog) -> None:
    text = "नमस्ते दुनिया"  # 13 tokens in cl100k_base, 5 in o200k_base
    assert len(CL100K.encode_ordinary(text)) != len(O200K.encode_ordinary(text))
    messages = [{"role": "user", "content": text}]
    assert counted(catalog, "gpt-3.5-turbo", messages) == [by_hand(messages, CL100K)]
    assert counted(catalog, "gpt-4o-mini", messages) == [by_hand(messages, O200K)]


def test_estimate_tokenizer_scales_o200k_content_by_the_factor_rounding_up(catalog: Catalog) -> None:
    # claude-haiku-4-5: factor 1.5. "Say this is a test!" is 6 o200k tokens -> ceil(9.0) = 9;
    # 3 + 1 (role) + 9 + 3 (priming) = 16, plus the request allowance for Claude's own framing.
    extra = tokens.ESTIMATE_REQUEST_OVERHEAD
    assert counted(catalog, "claude-haiku-4-5", [{"role": "user", "content": "Say this is a test!"}]) == [16 + extra]
    # llama-3.1-8b-instruct: factor 1.25 -> ceil(7.5) = 8; 3 + 1 + 8 + 3 = 15.
    assert counted(catalog, "llama-3.1-8b-instruct", [{"role": "user", "content": "Say this is a test!"}]) == [
        15 + extra
    ]


def test_estimate_tokenizer_rounds_up_per_message_not_per_request(catalog: Catalog) -> None:
    # "hi" is 1 o200k token; x 1.5 = 1.5 -> 2 per message. Two messages: 2 x (3 + 1 + 2) + 3 = 15,
    # whereas rounding the sum once (ceil(3.0) = 3) would give 14.
    assert len(O200K.encode_ordinary("hi")) == 1
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]
    assert counted(catalog, "claude-haiku-4-5", messages) == [15 + tokens.ESTIMATE_REQUEST_OVERHEAD]


def test_estimate_tokenizer_matches_ceil_formula_for_longer_texts(catalog: Catalog) -> None:
    texts = ["Привет, как дела? 😀🎉", "a" * 5000, "The quick brown fox jumps over the lazy dog. " * 40]
    results = counted(catalog, "llama-3.1-8b-instruct", *[[{"role": "user", "content": t}] for t in texts])
    for text, got in zip(texts, results, strict=True):
        content = math.ceil(len(O200K.encode_ordinary(text)) * 5 / 4)  # factor 1.25, exact in integers
        assert got == 3 + 1 + content + 3 + tokens.ESTIMATE_REQUEST_OVERHEAD


def test_items_of_different_encodings_in_one_manifest_keep_their_own_counts(catalog: Catalog) -> None:
    text = "Привет, как дела? 😀🎉"
    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": text}]},
            }
        )
        for i, model in enumerate(["gpt-3.5-turbo", "gpt-4o-mini", "claude-haiku-4-5", "gpt-3.5-turbo"])
    ]
    manifest = read_manifest("t.jsonl", "\n".join(lines).encode(), catalog=catalog, limits=LimitsConfig())
    quote = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)
    cl, o = len(CL100K.encode_ordinary(text)), len(O200K.encode_ordinary(text))
    claude = 7 + math.ceil(o * 3 / 2) + tokens.ESTIMATE_REQUEST_OVERHEAD
    assert quote.items["input_tokens"].to_list() == [7 + cl, 7 + o, claude, 7 + cl]


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_count_agrees_with_bpe_openai_encode_ordinary(encoding: str) -> None:
    reference = bpe_openai.get_encoding(encoding)
    expected = [len(reference.encode_ordinary(t)) for t in TEXTS]
    assert [tokens.count_text(t, encoding) for t in TEXTS] == expected
    assert tokens.count_texts(TEXTS, encoding, workers=1).tolist() == expected


def test_parallel_counting_forks_and_matches_serial_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "Grüße", "日本語", "😀", "token", "count", "\n", "  "]
    texts = [" ".join(rng.choice(words, size=int(n)).tolist()) for n in rng.integers(50, 400, size=6000)]
    assert sum(map(len, texts)) > tokens.PARALLEL_MIN_CHARS
    calls: list[int] = []
    real = tokens._count_parallel

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens, "_count_parallel", spy)
    serial = tokens.count_texts(texts, "o200k_base", workers=1)
    assert calls == []
    parallel = tokens.count_texts(texts, "o200k_base", workers=2)
    assert calls == [1]
    assert parallel.tolist() == serial.tolist()
    assert serial[:50].tolist() == [len(O200K.encode_ordinary(t)) for t in texts[:50]]


def test_parallel_quote_over_mixed_encodings_matches_serial_quote(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = tokens._count_parallel
    monkeypatch.setattr(tokens, "_count_parallel", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(11)
    words = ["alpha", "beta", "Grüße", "日本語", "😀", "token", "count", "policy", "invoice"]
    models = ["gpt-4o-mini", "gpt-3.5-turbo", "claude-haiku-4-5"]
    lines = ["item_id,model,prompt,max_tokens"]
    for i, n in enumerate(rng.integers(100, 800, size=1500).tolist()):
        lines.append(f"{i},{models[i % 3]},{' '.join(rng.choice(words, size=n).tolist())},16")
    data = ("\n".join(lines) + "\n").encode()
    assert len(data) > tokens.PARALLEL_MIN_CHARS
    manifest = read_manifest("big.csv", data, catalog=catalog, limits=LimitsConfig())
    serial = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)
    assert calls == []
    parallel = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=2)
    assert calls == [1]
    assert parallel.items["input_tokens"].to_list() == serial.items["input_tokens"].to_list()
    assert parallel.items.equals(serial.items)


def test_shared_system_prompt_is_counted_for_every_item_under_its_own_encoding(catalog: Catalog) -> None:
    system = "You are a careful assistant. Reply in plain text. Привет 😀"
    rows = [
        ("1", "gpt-4o-mini", system, "first question"),
        ("2", "gpt-3.5-turbo", system, "first question"),
        ("3", "gpt-4o-mini", system, "a second, longer question about invoices"),
        ("4", "claude-haiku-4-5", system, "first question"),
        ("5", "gpt-4o-mini", "Other system.", "first question"),
        ("6", "gpt-4o-mini", "", "no system at all"),
    ]
    data = "item_id,model,system,prompt\n" + "".join(f'{i},{m},"{s}","{p}"\n' for i, m, s, p in rows)
    manifest = read_manifest("t.csv", data.encode(), catalog=catalog, limits=LimitsConfig())
    quote = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)

    def expected(model: str, sys_text: str, prompt: str) -> int:
        messages = ([{"role": "system", "content": sys_text}] if sys_text else []) + [
            {"role": "user", "content": prompt}
        ]
        if model == "claude-haiku-4-5":  # estimate: ceil(o200k content x 1.5) per message
            content = sum(3 + 1 + math.ceil(len(O200K.encode_ordinary(m["content"])) * 3 / 2) for m in messages)
            return 3 + content + tokens.ESTIMATE_REQUEST_OVERHEAD
        return by_hand(messages, CL100K if model == "gpt-3.5-turbo" else O200K)

    assert quote.items["input_tokens"].to_list() == [expected(m, s, p) for _, m, s, p in rows]


def test_system_column_is_counted_before_a_messages_column(catalog: Catalog) -> None:
    messages = [{"role": "user", "name": "bob", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]
    cell = json.dumps(messages).replace('"', '""')
    data = f'item_id,model,system,messages\n1,gpt-4o-mini,Be brief.,"{cell}"\n'.encode()
    manifest = read_manifest("t.csv", data, catalog=catalog, limits=LimitsConfig())
    quote = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)
    assert quote.items["input_tokens"].to_list() == [
        by_hand([{"role": "system", "content": "Be brief."}, *messages], O200K)
    ]


def test_parallel_quote_with_a_lone_item_of_another_encoding_matches_serial_quote(catalog: Catalog) -> None:
    # Skewed segments: thousands of o200k items, one cl100k item, two estimate items, some empty contents.
    rng = np.random.default_rng(5)
    words = ["alpha", "beta", "Grüße", "日本語", "😀", "token"]
    lines = []
    for i in range(2500):
        model = {1234: "gpt-3.5-turbo", 5: "claude-haiku-4-5", 2499: "claude-haiku-4-5"}.get(i, "gpt-4o-mini")
        text = " ".join(rng.choice(words, size=int(rng.integers(50, 300))).tolist())
        messages = [{"role": "user", "content": text}]
        if i % 7 == 0:
            messages.insert(0, {"role": "assistant", "content": ""})
        lines.append(
            json.dumps(
                {
                    "custom_id": str(i),
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": messages},
                }
            )
        )
    data = "\n".join(lines).encode()
    assert len(data) > tokens.PARALLEL_MIN_CHARS
    manifest = read_manifest("big.jsonl", data, catalog=catalog, limits=LimitsConfig())
    serial = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)
    parallel = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=2)
    assert parallel.items["input_tokens"].to_list() == serial.items["input_tokens"].to_list()
    lone = json.loads(lines[1234])["body"]["messages"]
    assert serial.items["input_tokens"][1234] == by_hand(lone, CL100K)


def _sigterm_is_default(_: int) -> bool:
    import signal

    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_counting_workers_can_be_terminated_whatever_handler_the_parent_set() -> None:
    # A SIGTERM handler in the parent (a server's) is inherited by forked workers; a worker that keeps it
    # outlives a terminate, and the pool's join waits for ever.
    import multiprocessing
    import signal

    from batchrouter.intake.tokens import _map_and_join

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        got = _map_and_join(multiprocessing.get_context("fork"), 2, _sigterm_is_default, [0, 1, 2, 3])  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == [True, True, True, True]


def test_counting_loads_the_tokenizer_extension_without_the_package_init_and_counts_as_the_package_does() -> None:
    """The package's `__init__` reads three vocabularies into Python to list special tokens; start-up skips it."""
    script = (
        "import sys, json\n"
        "from batchrouter.intake import tokens\n"
        "texts = ['hello world', 'Classify ticket 7: refund request', 'naïve café — 日本語 🙂', 'a' * 5000]\n"
        "counts = {e: [tokens.count_text(t, e) for t in texts] for e in ('o200k_base', 'cl100k_base')}\n"
        "print(json.dumps({'init_ran': 'bpe_openai.compat' in sys.modules, 'counts': counts}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    seen = json.loads(done.stdout)
    assert seen["init_ran"] is False
    texts = ["hello world", "Classify ticket 7: refund request", "naïve café — 日本語 🙂", "a" * 5000]
    assert seen["counts"] == {
        "o200k_base": [len(O200K.encode(t)) for t in texts],
        "cl100k_base": [len(CL100K.encode(t)) for t in texts],
    }
    # In this process the package was imported first: the loader hands back the package's own extension.
    assert tokens._bindings() is sys.modules["bpe_openai._bindings"]
