"""Amounts are checked by one rule at every entry point; operator keys cannot take a batch's keys."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

from batchrouter.cli import main
from batchrouter.core.amounts import MAX_USD_MICROS, AmountError, charge_lines, check_micros, micros_up, usd_to_micros
from batchrouter.core.config import load_settings
from batchrouter.core.errors import ConfigError
from batchrouter.money.ledger import InvalidAmount, InvalidKey, Ledger


@pytest.fixture(autouse=True)
def _alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_CONTROL", "direct")


@pytest.mark.parametrize(
    "exact, charged",
    [
        ([], []),
        ([5_000_000, 7_000_000], [5, 7]),  # whole micro-dollars stay as they are
        ([1_500_000, 1_500_000], [2, 1]),
        ([400_000] * 5, [1, 0, 1, 0, 0]),  # 2.0 micro-dollars in all: per line, 5
        ([0, 1, 0], [0, 1, 0]),
        ([999_999, 1, 1], [1, 0, 1]),
    ],
)
def test_a_group_pays_its_exact_total_rounded_up_once(exact: list[int], charged: list[int]) -> None:
    assert charge_lines(exact) == charged


def test_each_line_pays_its_exact_cost_rounded_down_or_up_and_the_group_its_total_rounded_up() -> None:
    import random

    rng = random.Random(11)
    for _ in range(200):
        sizes = (0, rng.randrange(1, 10**6), rng.randrange(10**6, 10**9))
        exact = [rng.choice(sizes) for _ in range(rng.randrange(1, 40))]
        charged = charge_lines(exact)
        assert sum(charged) == -(-sum(exact) // 10**6)
        for pico, micros in zip(exact, charged, strict=True):
            assert pico // 10**6 <= micros <= -(-pico // 10**6)


@pytest.mark.parametrize("text, micros", [("12.5", 12_500_000), ("0.000001", 1), ("7", 7_000_000),
                                          (Decimal("1.50"), 1_500_000), (2.25, 2_250_000), (3, 3_000_000)])  # fmt: skip
def test_plain_usd_amounts_convert_exactly(text: object, micros: int) -> None:
    assert usd_to_micros(text, field="amount") == micros


BAD_USD = ["nan", "NaN", "inf", "-inf", "Infinity", "1e3", "1E-3", "-1", "+1", "0x10", "1.0000001", "", " ", "1,000",
           float("nan"), float("inf"), 1e20, Decimal("NaN"), True, None, "0"]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_USD)
def test_nan_infinity_exponents_signs_and_junk_are_refused_with_the_field_named(bad: object) -> None:
    with pytest.raises(AmountError) as caught:
        usd_to_micros(bad, field="--usd")
    assert "--usd" in str(caught.value)


def test_amounts_over_the_documented_maximum_are_refused() -> None:
    assert check_micros(MAX_USD_MICROS, field="x") == MAX_USD_MICROS
    with pytest.raises(AmountError, match="over the maximum"):
        check_micros(MAX_USD_MICROS + 1, field="x")
    with pytest.raises(AmountError, match="over the maximum"):
        usd_to_micros("1000000001", field="x")


@pytest.mark.parametrize("bad", [-1, 1.5, float("nan"), MAX_USD_MICROS + 1, True, "5"])
def test_every_ledger_operation_refuses_a_bad_amount_and_writes_nothing(tmp_path: Path, bad: object) -> None:
    ledger = Ledger(tmp_path / "ledger.duckdb")
    ledger.grant("acme", 1_000_000, key="g")
    ledger.reserve("acme", "held", 10)
    for call in (lambda: ledger.grant("acme", bad, key="g2"), lambda: ledger.purchase("acme", bad, key="s2"),  # type: ignore[arg-type]
                 lambda: ledger.reserve("acme", "b", bad), lambda: ledger.settle("held", bad)):  # type: ignore[arg-type]  # fmt: skip
        with pytest.raises(InvalidAmount):
            call()
    assert ledger.verify()["entries"] == 2


def test_an_operator_key_cannot_take_a_batch_key_so_it_never_blocks_the_batch(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.duckdb")
    for key in ("reserve:b1", "settle:b1", "void:b1", "expire:b1", "", "x" * 201, "bad\nkey"):
        with pytest.raises(InvalidKey):
            ledger.grant("acme", 1_000_000, key=key)
    ledger.grant("acme", 1_000_000, key="first-grant")
    assert ledger.reserve("acme", "b1", 500_000).idempotency_key == "reserve:b1"
    assert ledger.settle("b1", 100).op == "settle"


@pytest.mark.parametrize("usd", ["nan", "inf", "1e3", "-5", "0", "1000000001", "0.0000001"])
def test_credits_grant_refuses_a_bad_usd_amount_with_exit_2(usd: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["credits", "grant", "--workspace", "acme", "--usd", usd]) == 2
    assert "--usd" in capsys.readouterr().err
    assert Ledger(os.environ["BATCHROUTER_DATABASE"]).verify()["entries"] == 0


def test_credits_grant_refuses_an_internal_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["credits", "grant", "--workspace", "acme", "--usd", "1", "--key", "reserve:b1"]) == 2
    assert "belong to batches" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "1e3", "-1", "1000000001"])
def test_config_amounts_follow_the_same_rule(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BATCHROUTER_WORKSPACES", json.dumps({"acme": {"auto_approve_max_usd": value}}))
    with pytest.raises(ConfigError, match="auto_approve_max_usd"):
        load_settings()
    monkeypatch.delenv("BATCHROUTER_WORKSPACES")
    monkeypatch.setenv("BATCHROUTER_BILLING__PACKS", json.dumps({"big": value}))
    with pytest.raises(ConfigError, match="pack big"):
        load_settings()


@pytest.mark.parametrize(("pico", "micros"), [(0, 0), (1, 1), (999_999, 1), (1_000_000, 1), (1_000_001, 2)])
def test_micros_up_rounds_any_part_of_a_micro_dollar_up(pico: int, micros: int) -> None:
    assert micros_up(pico) == micros
