"""Guards on input: payment card numbers and credentials are found (and only they), in every field an
item sends, rejected by the quote with `restricted_content` naming the field and the format, never
stored or logged, and let through kind by kind when the policy allows."""

from __future__ import annotations

import collections
import io
import json
import logging
import random
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from guardset import REALFILES, Sample, card_number, check_digit, credentials, items_frame, labelled_set
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from batchrouter.access.accounts import Accounts
from batchrouter.api import create_app
from batchrouter.core.catalog import Catalog
from batchrouter.core.config import LimitsConfig, RoutePolicy, Settings, load_settings
from batchrouter.intake import guards
from batchrouter.intake.guards import credential_kind, find_card, has_card_number
from batchrouter.intake.manifest import ITEM_SCHEMA, read_manifest
from batchrouter.money.ledger import Ledger
from batchrouter.pricing.quote import Quote, build_quote, reject_restricted

ALL_SCOPES = ["batches:read", "batches:write", "credits:read", "credits:write", "admin"]
# Assembled at run time, so no credential-shaped literal sits in the repository.
CARD = "4111 1111 1111 1111"
STRIPE_KEY = "sk" + "_live_" + "51HqLyjW4e2Rk9TgB7nVxQpZ3aC8dF0"
PEM = (
    "-----BEGIN "
    + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn2HqLyjW4e2Rk9TgB7nVxQpZ3a\n-----END RSA PRIVATE KEY"
)
GITHUB = "gh" + "p_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
AMEX = "3782-822463-10005"
SECRETS = [CARD, CARD.replace(" ", ""), STRIPE_KEY, PEM.splitlines()[1], GITHUB, AMEX]


# -- the labelled set ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled() -> tuple[list[Sample], list[dict[str, str | None]]]:
    samples = labelled_set()
    return samples, guards.scan(items_frame(samples)).to_dicts()


def test_the_labelled_set_is_large_real_and_varied(labelled: tuple[list[Sample], list[dict[str, str | None]]]) -> None:
    samples, _ = labelled
    negatives = collections.Counter(s.category for s in samples if s.expected is None and s.category != "lookalike")
    assert sum(negatives.values()) >= 300, negatives
    assert {"legal", "code", "tables", "multilingual", "prose"} <= set(negatives), negatives
    if REALFILES.is_dir():
        assert "medical" in negatives
    texts = " ".join(s.item.get("prompt") or "" for s in samples if s.expected is None)
    scripts = {"HANGUL", "CJK", "HIRAGANA", "LATIN"}
    assert scripts <= {unicodedata.name(c, "?").split()[0] for c in set(texts) if c.isalpha()}
    positives = collections.Counter(s.field for s in samples if s.expected is not None)
    assert len(positives) >= 10 and min(positives.values()) >= 10, positives


def test_recall_is_at_least_99_percent(labelled: tuple[list[Sample], list[dict[str, str | None]]]) -> None:
    samples, found = labelled
    positives = [(s, f) for s, f in zip(samples, found, strict=True) if s.expected is not None]
    missed = [s.name for s, f in positives if f["kind"] != s.expected]
    assert len(missed) <= 0.01 * len(positives), missed[:20]


def test_false_positives_are_at_most_half_a_percent(labelled: tuple[list[Sample], list[dict[str, str | None]]]) -> None:
    samples, found = labelled
    negatives = [(s, f) for s, f in zip(samples, found, strict=True) if s.expected is None]
    flagged = [(s.name, f["format"]) for s, f in negatives if f["kind"] is not None]
    assert len(flagged) <= 0.005 * len(negatives), flagged[:20]


def test_each_finding_names_the_field_it_is_in(labelled: tuple[list[Sample], list[dict[str, str | None]]]) -> None:
    samples, found = labelled
    wrong = [(s.name, f["field"]) for s, f in zip(samples, found, strict=True) if s.expected and f["field"] != s.field]
    assert wrong == []


def test_the_vectorised_scan_finds_exactly_what_the_exact_check_finds(
    labelled: tuple[list[Sample], list[dict[str, str | None]]],
) -> None:
    """The cheap prefilter drops no text the exact check would flag."""
    samples, found = labelled
    exact = [guards.find_in_item(s.item) for s in samples]
    assert [f["field"] for f in found] == [None if e is None else e.field for e in exact]
    assert [f["format"] for f in found] == [None if e is None else e.format for e in exact]


def test_a_message_struct_without_the_raw_field_is_scanned_too() -> None:
    samples = [s for s in labelled_set() if s.expected is not None and "tool_calls" not in (s.field or "")]
    found = guards.scan(items_frame(samples, raw=False))
    assert found["kind"].to_list() == [s.expected for s in samples]


def test_scanning_only_one_kind_finds_only_that_kind(
    labelled: tuple[list[Sample], list[dict[str, str | None]]],
) -> None:
    samples, _ = labelled
    frame = items_frame(samples)
    only_cards = guards.scan(frame, credentials=False)["kind"].to_list()
    only_credentials = guards.scan(frame, cards=False)["kind"].to_list()
    assert set(only_cards) == {"card", None} and set(only_credentials) == {"credential", None}
    assert all(k == "card" for s, k in zip(samples, only_cards, strict=True) if s.expected == "card")
    assert all(k == "credential" for s, k in zip(samples, only_credentials, strict=True) if s.expected == "credential")


# -- card numbers ----------------------------------------------------------------------------------------
def visa(length: int = 16, seed: int = 1) -> str:
    return card_number("4", length, random.Random(seed))


def test_the_test_card_numbers_are_luhn_valid() -> None:
    """The generator agrees with well-known test numbers, so the cases below mean what they say."""
    for known in ("4111111111111111", "378282246310005", "6011111111111117", "4222222222222"):
        assert check_digit(known[:-1]) == known[-1]


@pytest.mark.parametrize(
    ("text", "issuer"),
    [
        ("4111 1111 1111 1111", "Visa"),
        ("4111-1111-1111-1111", "Visa"),
        ("Card: 3782 822463 10005, thanks", "American Express"),
        ("Diners 3056 930902 5904", "Diners Club"),
        ("mc 2223 0031 2200 3222 and more", "Mastercard"),
        ("mc 5555555555554444", "Mastercard"),
        ("card 4111 1111 1111 1111 exp 12/28", "Visa"),
        ("pay 4111 1111 1111 1111 123 now", "Visa"),  # followed by its CVV
        ("qty 2 4111-1111-1111-1111", "Visa"),  # another number, another separator
        ("qty 2 4111111111111111", "Visa"),
        ("on 2024-01-15 4111 1111 1111 1111", "Visa"),
        ("first line\n6011 1111 1111 1117\nlast line", "Discover"),
        ("카드번호4111111111111111입니다", "Visa"),  # no space in Korean, still not a word of Latin letters
        ("JCB 3530111333300000", "JCB"),
        ("UnionPay 6200000000000005", "UnionPay"),
    ],
)
def test_a_card_number_in_text_is_found_with_its_issuer(text: str, issuer: str) -> None:
    assert find_card(text) == issuer


@pytest.mark.parametrize("length", [13, 16, 19])
def test_a_luhn_invalid_run_is_not_a_card_number(length: int) -> None:
    valid = visa(length)
    wrong = valid[:-1] + str((int(valid[-1]) + 1) % 10)
    assert has_card_number(valid)
    assert not has_card_number(wrong)


@pytest.mark.parametrize(
    "text",
    [
        "reference 41111111111" + check_digit("41111111111"),  # Luhn-valid, but 12 digits
        "a 20-digit id 4539876012345678901" + check_digit("4539876012345678901"),  # Luhn-valid, too long
        "a Luhn-valid number no issuer uses: 1234567812345670",
        "my card is" + "4111111111111111" + "and that is it",  # inside a word
        "ref_4111111111111111, x4111111111111111",
        "12-4111111111111111 and 4111111111111111-7",  # hyphenated into a longer id
        "0.4111111111111111 and 41111111.11111111",  # decimals
        "4111 1111-1111 1111",  # separators must be consistent
        "4111 1111 1111 1111 1111",  # five groups: a row of numbers, not a card
        "| 8 4111 1111 1111 1111 3 |",  # inside a longer run of a table's numbers
        "+4111111111111111",
        "call +1 (415) 555-0132 or +44 20 7946 0958",
        "on 2024-01-15, at 2024-01-15T10:30:00Z, from 2024-01-15 to 2024-02-20",
        "Order #100-2345-6789 and invoice INV-2024-000123, PO 4500012345",
        "1961 9 1 제162조 ①증인신문은 2013 4 5 제1234조 2020 12 8 법률 제17572호",
        "",
    ],
)
def test_numbers_that_are_not_written_as_cards_are_not_card_numbers(text: str) -> None:
    assert not has_card_number(text)


@pytest.mark.skipif(not (REALFILES / "kmmlu_batchinput.jsonl").exists(), reason="the real files are not here")
def test_korean_legal_text_full_of_dates_and_article_numbers_has_no_card(catalog: Catalog) -> None:
    data = (REALFILES / "kmmlu_batchinput.jsonl").read_bytes()
    manifest = read_manifest("kmmlu.jsonl", data, catalog=catalog, limits=LimitsConfig())
    found = guards.scan(manifest.items)
    assert found["kind"].null_count() == manifest.rows


@pytest.mark.skipif(not REALFILES.is_dir(), reason="the real files are not here")
@pytest.mark.parametrize("name", sorted(p.name for p in REALFILES.glob("*.jsonl")) if REALFILES.is_dir() else [])
def test_no_real_batch_file_holds_a_card_or_credential_anywhere_in_its_bodies(name: str) -> None:
    """Every line's whole body (tools, schemas, image data URLs included) walked as JSON."""
    lines = [ln for ln in (REALFILES / name).read_text(encoding="utf-8").split("\n") if ln.strip()]
    flagged = [n for n, ln in enumerate(lines, 1) if guards.find_in_json(json.dumps(json.loads(ln)["body"]))]
    assert flagged == []


# -- credentials -----------------------------------------------------------------------------------------
def test_every_credential_format_is_found_alone_and_in_a_sentence() -> None:
    for name, value in credentials(random.Random(3)):
        assert credential_kind(value) is not None, name
        assert credential_kind(f"use this: {value} for the call") is not None, name


@pytest.mark.parametrize(
    "text",
    [
        "keep your private key safe and never share it",
        "the task-list and ask-project columns are sorted",
        "sk-short, sk-..., sk-proj-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "AKIA is not a word, and AKIAshort neither; AKIA" + "IOSFODNN7EXAMPLE is AWS's documented example",
        "gh" + "p_tooShort123 and gh" + "p_" + "x" * 36,
        "sk" + "_live_short; publishable keys are public: pk" + "_live_" + "51HqLyjW4e2Rk9TgB7nVxQpZ3aC8dF0",
        "xox" + "b-short and xox" + "b-your-token-here",
        "AI" + "za is the start of a Google key; AI" + "zaTooShort",
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
        "OPENAI_API_KEY=${OPENAI_API_KEY} and ANTHROPIC_API_KEY=<your key>",
    ],
)
def test_credential_lookalikes_and_placeholders_are_not_credentials(text: str) -> None:
    assert credential_kind(text) is None


def test_a_secret_labelled_by_its_json_key_is_found_in_params() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYq8Rz2nLpTj"
    found = guards.find_in_json(json.dumps({"tools": [{"config": {"aws_secret_access_key": secret}}]}))
    assert found == ("tools", "credential", "AWS secret access key")


def test_json_nested_too_deep_to_walk_is_checked_as_text() -> None:
    deep = "[" * 50_000 + json.dumps(f"card {CARD}") + "]" * 50_000
    assert guards.find_in_json(deep) == ("", "card", "Visa")
    assert guards.find_in_json("[" * 50_000 + "]" * 50_000) is None


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.from_regex(r"[0-9 -]{10,30}"), max_size=5
    ),
    st.sampled_from(["", CARD, AMEX, GITHUB, STRIPE_KEY]),
)
def test_any_text_scans_without_error_and_as_the_exact_check_says(parts: list[str], secret: str) -> None:
    text = " | ".join([*parts[:2], secret, *parts[2:]])
    items = pl.DataFrame({"prompt": [text], "params": [json.dumps({"stop": parts})]})
    found = guards.scan(items).row(0, named=True)
    exact = guards.find_in_item({"prompt": text, "params": json.dumps({"stop": parts})})
    assert found["field"] == (None if exact is None else exact.field)
    if secret:
        assert found["kind"] is not None


def test_a_key_that_is_itself_restricted_is_not_used_as_the_field_name() -> None:
    assert guards.find_in_json(json.dumps({"4111111111111111": "x"})) == ("", "card", "Visa")
    # Even when credentials are allowed, a credential-shaped key is not echoed as the field of a card.
    assert guards.find_in_json(json.dumps({GITHUB: CARD}), credentials=False) == ("", "card", "Visa")


# -- the quote --------------------------------------------------------------------------------------------


def manifest_csv() -> bytes:
    rows = [
        ["item_id", "model", "prompt", "system", "messages", "metadata"],
        ["clean", "gpt-4o-mini", "Say this is a test!", "", "", ""],
        ["card", "gpt-4o-mini", f"charge {CARD} for the order", "", "", ""],
        ["stripe", "gpt-4o-mini", f"the key is {STRIPE_KEY}", "", "", ""],
        ["in-system", "gpt-4o-mini", "summarise", f"Secret: {PEM}", "", ""],
        ["in-messages", "gpt-4o-mini", "", "",
         json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"card {CARD}"}]), ""],
        ["in-name", "gpt-4o-mini", "", "", json.dumps([{"role": "user", "content": "hi", "name": GITHUB}]), ""],
        ["in-metadata", "gpt-4o-mini", "hello", "", "", json.dumps({"billing": {"card": AMEX}})],
        ["order", "gpt-4o-mini", "Order #100-2345-6789 ships on 2024-01-15; call 415-555-0132", "", "", ""],
    ]  # fmt: skip
    buf = io.StringIO()
    pl.DataFrame({c: [r[i] for r in rows[1:]] for i, c in enumerate(rows[0])}).write_csv(buf)
    return buf.getvalue().encode()


def quote_of(catalog: Catalog, policy: RoutePolicy, data: bytes | None = None, name: str = "m.csv") -> Quote:
    manifest = read_manifest(name, data or manifest_csv(), catalog=catalog, limits=LimitsConfig())
    return build_quote(manifest, workspace="acme", catalog=catalog, policy=policy, workers=1)


def test_the_quote_rejects_restricted_items_naming_the_field_and_the_format(catalog: Catalog) -> None:
    summary = quote_of(catalog, RoutePolicy()).summary()
    rejected = {r["item_id"]: (r["code"], r["field"], r["reason"]) for r in summary["rejections"]}
    assert {k: v[:2] for k, v in rejected.items()} == {
        "card": ("restricted_content", "prompt"),
        "stripe": ("restricted_content", "prompt"),
        "in-system": ("restricted_content", "system"),
        "in-messages": ("restricted_content", "messages[1].content"),
        "in-name": ("restricted_content", "messages[0].name"),
        "in-metadata": ("restricted_content", "metadata.billing"),
    }
    assert rejected["card"][2].startswith("prompt holds a payment card number (Visa)")
    assert "allow_cards" in rejected["card"][2]
    assert "a credential (Stripe secret key)" in rejected["stripe"][2] and "allow_credentials" in rejected["stripe"][2]
    assert "a credential (private key (PEM))" in rejected["in-system"][2]
    assert "a credential (GitHub token)" in rejected["in-name"][2]
    assert "a payment card number (American Express)" in rejected["in-metadata"][2]
    assert (summary["accepted"], summary["rejected"]) == (2, 6)


def jsonl_manifest() -> bytes:
    def line(custom_id: str, **body: object) -> str:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    tool = {"type": "function", "function": {"name": "pay", "parameters": {"type": "object", "properties": {
        "card": {"type": "string", "examples": [CARD]}}}}}  # fmt: skip
    return "\n".join([
        line("clean", tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        line("in-tools", tools=[tool]),
        line("in-user", user=GITHUB),
        line("in-stop", stop=["END", STRIPE_KEY]),
        line("in-response-format", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "description": f"use {AMEX}"}}}),
    ]).encode()  # fmt: skip


def test_the_quote_scans_every_passed_on_body_field(catalog: Catalog) -> None:
    summary = quote_of(catalog, RoutePolicy(), jsonl_manifest(), "m.jsonl").summary()
    rejected = {r["item_id"]: r["field"] for r in summary["rejections"] if r["code"] == "restricted_content"}
    assert rejected == {
        "in-tools": "params.tools",
        "in-user": "params.user",
        "in-stop": "params.stop",
        "in-response-format": "params.response_format",
    }


def test_the_quote_never_echoes_the_detected_value(catalog: Catalog) -> None:
    for quote in (quote_of(catalog, RoutePolicy()), quote_of(catalog, RoutePolicy(), jsonl_manifest(), "m.jsonl")):
        text = json.dumps(quote.summary()) + repr(quote.items.to_dicts())
        assert [s[:6] for s in SECRETS if s in text] == []


def test_allow_restricted_content_lets_both_kinds_through(catalog: Catalog) -> None:
    summary = quote_of(catalog, RoutePolicy(allow_restricted_content=True)).summary()
    assert (summary["accepted"], summary["rejected"]) == (8, 0)


def test_allow_cards_lets_only_cards_through(catalog: Catalog) -> None:
    summary = quote_of(catalog, RoutePolicy(allow_cards=True)).summary()
    assert {r["item_id"] for r in summary["rejections"]} == {"stripe", "in-system", "in-name"}


def test_allow_credentials_lets_only_credentials_through(catalog: Catalog) -> None:
    summary = quote_of(catalog, RoutePolicy(allow_credentials=True)).summary()
    assert {r["item_id"] for r in summary["rejections"]} == {"card", "in-messages", "in-metadata"}


def test_a_tool_call_in_a_raw_message_is_rejected_by_name_and_redacted() -> None:
    """With the message struct's `raw` field (the original message JSON), its tool calls are scanned."""

    call = {"role": "assistant", "tool_calls": [{"function": {"name": "pay", "arguments": json.dumps({"card": CARD})}}]}
    items = items_frame(
        [Sample("s", "card", {"messages": [{"role": "user", "content": "pay"}, {"raw": json.dumps(call)}]}, "card")]
    ).with_columns(
        pl.lit(1, pl.UInt32).alias("item"),
        *(pl.lit(None, pl.String).alias(c) for c in ("reject_code", "reject_field", "reject_reason")),
    )
    out = reject_restricted(items, redact=True).row(0, named=True)
    assert (out["reject_code"], out["reject_field"]) == ("restricted_content", "messages[1].tool_calls")
    assert out["messages"] is None and CARD not in out["reject_reason"]


def test_redaction_drops_every_scanned_column_of_a_rejected_item(catalog: Catalog) -> None:

    manifest = read_manifest("m.csv", manifest_csv(), catalog=catalog, limits=LimitsConfig())
    out = reject_restricted(manifest.items.with_row_index("item"), redact=True)
    assert set(guards.SCANNED_COLUMNS) <= set(ITEM_SCHEMA)
    rejected = out.filter(pl.col("reject_code") == "restricted_content")
    assert rejected.height == 6
    assert rejected.select(guards.SCANNED_COLUMNS).null_count().row(0) == (6,) * len(guards.SCANNED_COLUMNS)
    assert [s[:6] for s in SECRETS if s in repr(out.to_dicts())] == []


# -- what the API stores and logs -------------------------------------------------------------------------
def client_for(settings: Settings) -> tuple[TestClient, dict[str, str]]:
    accounts = Accounts(settings.database)
    accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
    key, _ = accounts.create_key("acme", name="k", scopes=ALL_SCOPES, created_by="owner@acme.test", actor="test")
    Ledger(settings.database).grant("acme", 5_000_000, key="grant")
    return TestClient(create_app(settings)), {"Authorization": f"Bearer {key}"}


@pytest.fixture
def stored(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[Path, str, dict[str, object]]]:
    """A quote preview and a batch created from it through the API (executor "sensor": nothing runs).

    Yields the storage root, the batch id and the quote; caplog holds every log record written."""
    settings = load_settings()
    client, headers = client_for(settings)
    with client, caplog.at_level(logging.DEBUG):
        quote = client.post("/v1/quotes?filename=m.csv", content=manifest_csv(), headers=headers)
        assert quote.status_code == 201, quote.text
        batch = client.post("/v1/batches", json={"quote_id": quote.json()["quote_id"]}, headers=headers)
        assert batch.status_code == 201, batch.text
        yield Path(settings.storage.root), batch.json()["batch_id"], quote.json()


def contents(path: Path) -> str:
    """A file's bytes as text, and for Parquet (compressed) every decoded value too."""
    text = path.read_bytes().decode("utf-8", "replace")
    if path.suffix == ".parquet":
        text += repr(pl.read_parquet(path).to_dicts())
    return text


def holding_secrets(files: list[Path]) -> list[str]:
    return [f"{f.name}: {s[:6]}..." for f in files for s in SECRETS if s in contents(f)]


def test_the_quote_preview_answer_and_stored_quote_never_contain_the_value(
    stored: tuple[Path, str, dict[str, object]],
) -> None:
    root, _, quote = stored
    assert quote["rejected"] == 6
    for secret in SECRETS:
        assert secret not in json.dumps(quote)
    files = [p for p in (root / "quotes" / "acme").rglob("*") if p.is_file() and "source" not in p.parts]
    assert [p.name for p in files] == ["quote.json"]
    assert holding_secrets(files) == []


def test_the_batch_quote_route_and_status_files_never_contain_the_value(
    stored: tuple[Path, str, dict[str, object]],
) -> None:
    root, batch_id, _ = stored
    folder = root / "batches" / batch_id
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.parquet" and "source" not in p.parts]
    assert {"quote.parquet", "quote.json", "items.parquet", "status.json"} <= {p.name for p in files}
    assert holding_secrets(files) == []


def test_the_batch_manifest_parquet_never_contains_the_value(stored: tuple[Path, str, dict[str, object]]) -> None:
    root, batch_id, _ = stored
    assert holding_secrets([root / "batches" / batch_id / "manifest.parquet"]) == []


def test_the_value_is_never_logged(
    stored: tuple[Path, str, dict[str, object]], caplog: pytest.LogCaptureFixture
) -> None:
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in SECRETS:
        assert secret not in logged


def test_the_api_quote_lets_restricted_items_through_when_the_workspace_policy_allows(tmp_path: Path) -> None:
    settings = load_settings(workspaces={"acme": {"policy": {"allow_restricted_content": True}}})
    client, headers = client_for(settings)
    with client:
        quote = client.post("/v1/quotes?filename=m.csv", content=manifest_csv(), headers=headers).json()
    assert (quote["accepted"], quote["rejected"]) == (8, 0)
