"""Guards on input: payment card numbers and credentials are found (and only they), rejected by the
quote with `restricted_content`, never stored or logged, and let through when the policy allows."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient

from batchrouter.accounts import Accounts
from batchrouter.api import create_app
from batchrouter.catalog import Catalog
from batchrouter.config import LimitsConfig, RoutePolicy, Settings, load_settings
from batchrouter.guards import credential_kind, has_card_number, restricted
from batchrouter.ledger import Ledger
from batchrouter.manifest import read_manifest
from batchrouter.quote import Quote, build_quote

ALL_SCOPES = ["batches:read", "batches:write", "credits:read", "credits:write", "admin"]


# -- card numbers ------------------------------------------------------------------------------------------
def check_digit(body: str) -> str:
    """The Luhn check digit that completes `body` (written here independently of the guard)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card(length: int) -> str:
    body = ("4" + "539876012345678901234")[: length - 1]
    return body + check_digit(body)


def grouped(number: str, sep: str) -> str:
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


def test_the_test_card_numbers_are_luhn_valid() -> None:
    """The generator agrees with well-known test numbers, so the cases below mean what they say."""
    for known in ("4111111111111111", "378282246310005", "6011111111111117", "4222222222222"):
        assert check_digit(known[:-1]) == known[-1]


@pytest.mark.parametrize("sep", ["", " ", "-"], ids=["plain", "spaces", "dashes"])
@pytest.mark.parametrize("length", range(13, 20))
def test_a_luhn_valid_card_number_of_13_to_19_digits_is_found(length: int, sep: str) -> None:
    assert has_card_number(f"please charge {grouped(card(length), sep)} today")


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "Card: 3782 822463 10005, thanks",  # Amex grouping
        "my card is4111111111111111and that is it",
        "card 4111 1111 1111 1111 exp 12/28",
        "card 4111 1111 1111 1111 12/28",  # followed by its expiry
        "pay 4111 1111 1111 1111 123 now",  # followed by its CVV
        "qty 2 4111-1111-1111-1111",  # preceded by another number
        "first line\n6011 1111 1111 1117\nlast line",
    ],
)
def test_a_card_number_in_text_is_found(text: str) -> None:
    assert has_card_number(text)


@pytest.mark.parametrize("length", range(13, 20))
def test_a_luhn_invalid_run_is_not_a_card_number(length: int) -> None:
    valid = card(length)
    wrong = valid[:-1] + str((int(valid[-1]) + 1) % 10)
    assert not has_card_number(grouped(wrong, " "))
    assert not has_card_number(wrong)


@pytest.mark.parametrize(
    "text",
    [
        "reference " + "41111111111" + check_digit("41111111111"),  # Luhn-valid, but 12 digits
        "account 1234-5678-9012",
        "a 20-digit id " + "4539876012345678901" + check_digit("4539876012345678901"),  # Luhn-valid, too long
        "call +1 (415) 555-0132 or +44 20 7946 0958",
        "call 415-555-0132 or 212-555-0187",
        "on 2024-01-15, at 2024-01-15T10:30:00Z",
        "from 2024-01-15 to 2024-02-20",
        "Order #100-2345-6789 and invoice INV-2024-000123, PO 4500012345",
        "The meeting is at 10:30 on 15 January; bring 3 copies of the 250-page report for 12 people.",
        "",
    ],
)
def test_ordinary_numbers_and_prose_are_not_card_numbers(text: str) -> None:
    assert not has_card_number(text)


# -- credentials -------------------------------------------------------------------------------------------
# Assembled at run time, so no credential-shaped literal sits in the repository.
KEYS = {
    "private key": "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn\n-----END RSA PRIVATE KEY",
    "private key (PKCS#8)": "-----BEGIN " + "PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY",
    "private key (OpenSSH)": "-----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUA",
    "OpenAI project key": "sk-" + "proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5kL7n",
    "OpenAI legacy key": "sk-" + "T3BlbkFJ" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "Anthropic key": "sk-" + "ant-api03-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe9Dc8Ba7-_xyzAA",
    "AWS access key id": "AKIA" + "IOSFODNN7" + "EXAMPLE",
    "GitHub token": "gh" + "p_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
    "Stripe secret key": "sk" + "_live_" + "51HqLyjW4e2Rk9TgB7nVxQpZ3aC8dF0",
    "Slack bot token": "xox" + "b-" + "1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
    "Google API key": "AI" + "za" + "SyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
    "Google API key ending in a dash": "AI" + "za" + "SyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv-",
}
KINDS = {
    "private key": "private key",
    "private key (PKCS#8)": "private key",
    "private key (OpenSSH)": "private key",
    "OpenAI project key": "OpenAI or Anthropic API key",
    "OpenAI legacy key": "OpenAI or Anthropic API key",
    "Anthropic key": "OpenAI or Anthropic API key",
    "AWS access key id": "AWS access key",
    "GitHub token": "GitHub token",
    "Stripe secret key": "Stripe secret key",
    "Slack bot token": "Slack token",
    "Google API key": "Google API key",
    "Google API key ending in a dash": "Google API key",
}


@pytest.mark.parametrize("name", list(KEYS))
def test_a_credential_is_found_and_named_by_kind(name: str) -> None:
    assert credential_kind(f"use this: {KEYS[name]} for the call") == KINDS[name]
    assert credential_kind(KEYS[name]) == KINDS[name]


@pytest.mark.parametrize(
    "text",
    [
        "keep your private key safe and never share it",
        "the task-list and ask-project columns are sorted",
        "sk-short",
        "AKIA is not a word, and AKIAshort neither",
        "gh" + "p_tooShort123",
        "sk" + "_live_short",
        "xox" + "b-short",
        "AI" + "za is the start of a Google key; AI" + "zaTooShort",
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
    ],
)
def test_credential_lookalikes_are_not_credentials(text: str) -> None:
    assert credential_kind(text) is None


def test_the_vectorised_pass_finds_exactly_what_the_single_text_checks_find() -> None:
    texts = [
        *(f"x {v} y" for v in KEYS.values()),
        *(grouped(card(n), " ") for n in range(13, 20)),
        "card 4111 1111 1111 1111 123",
        "call 415-555-0132",
        "from 2024-01-15 to 2024-02-20",
        "nothing to see here",
        None,
    ]
    found = restricted(pl.Series(texts, dtype=pl.String)).to_list()
    expected = [
        None if t is None else (credential_kind(t) or ("payment card number" if has_card_number(t) else None))
        for t in texts
    ]
    assert found == expected
    assert found[-4:] == [None, None, None, None]
    assert all(kind is not None for kind in found[:-4])


# -- the quote --------------------------------------------------------------------------------------------
CARD = "4111 1111 1111 1111"
STRIPE_KEY = KEYS["Stripe secret key"]
SECRETS = [CARD, CARD.replace(" ", ""), STRIPE_KEY, KEYS["private key"].splitlines()[1]]


def manifest_csv() -> bytes:
    rows = [
        ["item_id", "model", "prompt", "system", "messages"],
        ["clean", "gpt-4o-mini", "Say this is a test!", "", ""],
        ["card", "gpt-4o-mini", f"charge {CARD} for the order", "", ""],
        ["stripe", "gpt-4o-mini", f"the key is {STRIPE_KEY}", "", ""],
        ["in-system", "gpt-4o-mini", "summarise", f"Secret: {KEYS['private key']}", ""],
        ["in-messages", "gpt-4o-mini", "", "",
         json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"card {CARD}"}])],
        ["order", "gpt-4o-mini", "Order #100-2345-6789 ships on 2024-01-15; call 415-555-0132", "", ""],
    ]  # fmt: skip
    buf = io.StringIO()
    pl.DataFrame({c: [r[i] for r in rows[1:]] for i, c in enumerate(rows[0])}).write_csv(buf)
    return buf.getvalue().encode()


def quote_of(catalog: Catalog, policy: RoutePolicy) -> Quote:
    manifest = read_manifest("m.csv", manifest_csv(), catalog=catalog, limits=LimitsConfig())
    return build_quote(manifest, workspace="acme", catalog=catalog, policy=policy, workers=1)


def test_the_quote_rejects_items_holding_restricted_content_with_the_kind_in_the_reason(catalog: Catalog) -> None:
    summary = quote_of(catalog, RoutePolicy()).summary()
    rejected = {r["item_id"]: r for r in summary["rejections"]}
    assert set(rejected) == {"card", "stripe", "in-system", "in-messages"}
    assert {r["code"] for r in rejected.values()} == {"restricted_content"}
    assert "payment card number" in rejected["card"]["reason"]
    assert "Stripe secret key" in rejected["stripe"]["reason"]
    assert "private key" in rejected["in-system"]["reason"]
    assert "payment card number" in rejected["in-messages"]["reason"]
    assert (summary["accepted"], summary["rejected"]) == (2, 4)


def test_the_quote_never_echoes_the_detected_value(catalog: Catalog) -> None:
    quote = quote_of(catalog, RoutePolicy())
    text = json.dumps(quote.summary()) + repr(quote.items.to_dicts())
    for secret in SECRETS:
        assert secret not in text


def test_allow_restricted_content_lets_such_items_through(catalog: Catalog) -> None:
    summary = quote_of(catalog, RoutePolicy(allow_restricted_content=True)).summary()
    assert (summary["accepted"], summary["rejected"]) == (6, 0)


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
    assert quote["rejected"] == 4
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
    assert (quote["accepted"], quote["rejected"]) == (6, 0)
