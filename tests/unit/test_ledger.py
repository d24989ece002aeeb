"""The credit ledger: every operation, its idempotency, holds, and the proof `verify()` gives."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from batchrouter.money.ledger import (
    HoldError,
    IdempotencyConflict,
    InsufficientCredits,
    Ledger,
    LedgerError,
    usd,
)

USD = 1_000_000


@pytest.fixture(autouse=True)
def _alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ledger's own logic, in a process that is alone with its file: no control service.
    monkeypatch.setenv("BATCHROUTER_CONTROL", "direct")


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    # Every ledger commit is fsynced; memory-backed /dev/shm (when there is one) keeps these tests quick.
    folder = Path(tempfile.mkdtemp(prefix="ledger-", dir="/dev/shm" if os.path.isdir("/dev/shm") else tmp_path))
    try:
        yield Ledger(folder / "ledger.duckdb")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def journal_count(ledger: Ledger) -> int:
    return ledger.verify()["entries"]


def balances(ledger: Ledger, workspace: str) -> tuple[int, int, int, int]:
    b = ledger.balance(workspace)
    return b.available_usd_micros, b.held_usd_micros, b.spent_usd_micros, b.credited_usd_micros


def replay(path: str, workspace: str) -> tuple[int, int, int]:
    """available, held, spent recomputed from the postings alone."""
    with duckdb.connect(path, read_only=True) as con:
        rows = dict(
            con.execute(
                "SELECT split_part(account, ':', 3), sum(amount_usd_micros) FROM postings "
                "WHERE account LIKE ? GROUP BY ALL",
                [f"workspace:{workspace}:%"],
            ).fetchall()
        )
    return int(rows.get("available", 0)), int(rows.get("held", 0)), int(rows.get("spent", 0))


# -- grant and purchase --------------------------------------------------------------------------------
def test_grant_credits_the_available_balance(ledger: Ledger) -> None:
    entry = ledger.grant("acme", 10 * USD, key="g1", memo="welcome")
    assert (entry.op, entry.workspace, entry.amount_usd_micros, entry.memo, entry.replayed) == (
        "grant",
        "acme",
        10 * USD,
        "welcome",
        False,
    )
    assert balances(ledger, "acme") == (10 * USD, 0, 0, 10 * USD)


def test_purchase_credits_the_available_balance(ledger: Ledger) -> None:
    entry = ledger.purchase("acme", 50 * USD, key="stripe:cs_test_1")
    assert entry.op == "purchase"
    assert balances(ledger, "acme") == (50 * USD, 0, 0, 50 * USD)


def test_grant_with_the_same_key_and_body_returns_the_original_entry_replayed(ledger: Ledger) -> None:
    first = ledger.grant("acme", 10 * USD, key="g1")
    again = ledger.grant("acme", 10 * USD, key="g1")
    assert again.replayed is True
    assert (again.entry_id, again.created_at, again.amount_usd_micros) == (
        first.entry_id,
        first.created_at,
        first.amount_usd_micros,
    )
    assert balances(ledger, "acme") == (10 * USD, 0, 0, 10 * USD)
    assert journal_count(ledger) == 1


@pytest.mark.parametrize(
    "other",
    [
        lambda lg: lg.grant("acme", 11 * USD, key="g1"),
        lambda lg: lg.grant("other", 10 * USD, key="g1"),
        lambda lg: lg.purchase("acme", 10 * USD, key="g1"),
    ],
    ids=["other-amount", "other-workspace", "other-op"],
)
def test_reusing_a_grant_key_for_a_different_body_raises_idempotency_conflict(ledger: Ledger, other) -> None:
    ledger.grant("acme", 10 * USD, key="g1")
    with pytest.raises(IdempotencyConflict):
        other(ledger)
    assert journal_count(ledger) == 1
    assert balances(ledger, "acme") == (10 * USD, 0, 0, 10 * USD)


@pytest.mark.parametrize("amount", [0, -5, 1.5])
def test_grant_refuses_an_amount_that_is_not_a_positive_whole_number(ledger: Ledger, amount) -> None:
    with pytest.raises(LedgerError):
        ledger.grant("acme", amount, key="g")
    assert journal_count(ledger) == 0


# -- reserve -------------------------------------------------------------------------------------------
def test_reserve_moves_the_amount_from_available_to_held(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    entry = ledger.reserve("acme", "b1", 3 * USD)
    assert (entry.op, entry.batch_id, entry.amount_usd_micros, entry.idempotency_key) == (
        "reserve",
        "b1",
        3 * USD,
        "reserve:b1",
    )
    assert balances(ledger, "acme") == (7 * USD, 3 * USD, 0, 10 * USD)
    hold = ledger.hold("b1")
    assert hold is not None
    assert (hold.status, hold.amount_usd_micros, hold.workspace) == ("held", 3 * USD, "acme")
    assert hold.captured_usd_micros == 0


def test_reserve_of_the_whole_available_balance_succeeds(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 10 * USD)
    assert balances(ledger, "acme") == (0, 10 * USD, 0, 10 * USD)


def test_reserve_again_with_the_same_batch_and_amount_is_replayed_and_holds_once(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    first = ledger.reserve("acme", "b1", 3 * USD)
    again = ledger.reserve("acme", "b1", 3 * USD)
    assert again.replayed and again.entry_id == first.entry_id
    assert balances(ledger, "acme") == (7 * USD, 3 * USD, 0, 10 * USD)


def test_reserve_again_for_the_same_batch_with_another_amount_raises_idempotency_conflict(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 3 * USD)
    with pytest.raises(IdempotencyConflict):
        ledger.reserve("acme", "b1", 4 * USD)
    assert balances(ledger, "acme") == (7 * USD, 3 * USD, 0, 10 * USD)


def test_reserve_beyond_the_available_balance_raises_insufficient_credits_and_writes_nothing(
    ledger: Ledger,
) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    before = journal_count(ledger)
    with pytest.raises(InsufficientCredits) as caught:
        ledger.reserve("acme", "b2", 6 * USD + 1)
    assert (caught.value.needed, caught.value.available, caught.value.missing) == (6 * USD + 1, 6 * USD, 1)
    assert usd(1) in str(caught.value)
    assert journal_count(ledger) == before
    assert ledger.hold("b2") is None
    assert balances(ledger, "acme") == (6 * USD, 4 * USD, 0, 10 * USD)


def test_reserve_in_a_workspace_without_credit_raises_insufficient_credits(ledger: Ledger) -> None:
    with pytest.raises(InsufficientCredits):
        ledger.reserve("nobody", "b1", 1)
    assert journal_count(ledger) == 0


def test_reserve_refuses_a_negative_amount(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    with pytest.raises(LedgerError):
        ledger.reserve("acme", "b1", -1)
    assert journal_count(ledger) == 1


def test_reserve_spends_only_its_own_workspaces_credit(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    with pytest.raises(InsufficientCredits):
        ledger.reserve("other", "b1", 1 * USD)
    assert balances(ledger, "acme") == (10 * USD, 0, 0, 10 * USD)


# -- settle --------------------------------------------------------------------------------------------
def test_settle_captures_the_actual_cost_and_releases_the_rest(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    entry = ledger.settle("b1", 1_250_000)
    assert (entry.op, entry.amount_usd_micros, entry.memo) == ("settle", 1_250_000, None)
    assert balances(ledger, "acme") == (10 * USD - 1_250_000, 0, 1_250_000, 10 * USD)
    hold = ledger.hold("b1")
    assert hold is not None and (hold.status, hold.captured_usd_micros) == ("settled", 1_250_000)


def test_settle_twice_with_the_same_actual_captures_once(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    first = ledger.settle("b1", 2 * USD)
    again = ledger.settle("b1", 2 * USD)
    assert again.replayed and again.entry_id == first.entry_id
    assert balances(ledger, "acme") == (8 * USD, 0, 2 * USD, 10 * USD)
    assert [r["op"] for r in ledger.history("acme")] == ["grant", "reserve", "settle"]


def test_settle_again_with_another_actual_raises_idempotency_conflict(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    ledger.settle("b1", 2 * USD)
    with pytest.raises(IdempotencyConflict):
        ledger.settle("b1", 3 * USD)
    assert balances(ledger, "acme") == (8 * USD, 0, 2 * USD, 10 * USD)


def test_settle_for_more_than_reserved_captures_only_the_reservation_with_a_memo(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    entry = ledger.settle("b1", 5 * USD)
    assert entry.amount_usd_micros == 4 * USD
    assert entry.memo is not None and "exceeded the reservation" in entry.memo and usd(5 * USD) in entry.memo
    assert balances(ledger, "acme") == (6 * USD, 0, 4 * USD, 10 * USD)
    assert ledger.verify()["ok"]


def test_settle_for_zero_releases_the_whole_hold(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    ledger.settle("b1", 0)
    assert balances(ledger, "acme") == (10 * USD, 0, 0, 10 * USD)


def test_settle_without_a_reservation_raises_hold_error_and_writes_nothing(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    with pytest.raises(HoldError):
        ledger.settle("never-reserved", 1)
    assert journal_count(ledger) == 1


def test_settle_refuses_a_negative_actual(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    with pytest.raises(LedgerError):
        ledger.settle("b1", -1)
    assert balances(ledger, "acme") == (6 * USD, 4 * USD, 0, 10 * USD)


# -- void and expire -----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["void", "expire"])
def test_void_and_expire_release_the_whole_hold(ledger: Ledger, op: str) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    entry = getattr(ledger, op)("b1", reason="cancelled by test")
    assert (entry.op, entry.amount_usd_micros, entry.memo) == (op, 4 * USD, "cancelled by test")
    assert balances(ledger, "acme") == (10 * USD, 0, 0, 10 * USD)
    hold = ledger.hold("b1")
    assert hold is not None and hold.status == {"void": "voided", "expire": "expired"}[op]


@pytest.mark.parametrize("op", ["void", "expire"])
def test_void_and_expire_twice_release_once(ledger: Ledger, op: str) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    first = getattr(ledger, op)("b1")
    again = getattr(ledger, op)("b1")
    assert again.replayed and again.entry_id == first.entry_id
    assert balances(ledger, "acme") == (10 * USD, 0, 0, 10 * USD)
    assert journal_count(ledger) == 3


@pytest.mark.parametrize("release", ["void", "expire"])
def test_settle_after_a_release_raises_hold_error(ledger: Ledger, release: str) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    getattr(ledger, release)("b1")
    with pytest.raises(HoldError):
        ledger.settle("b1", 1 * USD)
    assert balances(ledger, "acme") == (10 * USD, 0, 0, 10 * USD)


@pytest.mark.parametrize("release", ["void", "expire"])
def test_release_after_settle_raises_hold_error(ledger: Ledger, release: str) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    ledger.settle("b1", 1 * USD)
    with pytest.raises(HoldError):
        getattr(ledger, release)("b1")
    assert balances(ledger, "acme") == (9 * USD, 0, 1 * USD, 10 * USD)


def test_expire_after_void_raises_hold_error(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    ledger.void("b1")
    with pytest.raises(HoldError):
        ledger.expire("b1")
    assert journal_count(ledger) == 3


def test_void_without_a_reservation_raises_hold_error(ledger: Ledger) -> None:
    with pytest.raises(HoldError):
        ledger.void("nothing")
    assert journal_count(ledger) == 0


def test_reserve_after_its_hold_was_settled_is_a_replay_not_a_new_hold(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    ledger.settle("b1", 1 * USD)
    again = ledger.reserve("acme", "b1", 4 * USD)
    assert again.replayed
    assert balances(ledger, "acme") == (9 * USD, 0, 1 * USD, 10 * USD)


# -- history, holds --------------------------------------------------------------------------------------
def test_history_lists_the_workspaces_entries_in_order(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.grant("other", 1 * USD, key="g-other")
    ledger.reserve("acme", "b1", 4 * USD)
    ledger.settle("b1", 3 * USD)
    rows = ledger.history("acme")
    assert [(r["op"], r["batch_id"], r["amount_usd_micros"]) for r in rows] == [
        ("grant", None, 10 * USD),
        ("reserve", "b1", 4 * USD),
        ("settle", "b1", 3 * USD),
    ]


def test_holds_filters_by_status(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    for batch in ("held", "settled", "voided", "expired"):
        ledger.reserve("acme", batch, 1 * USD)
    ledger.settle("settled", 1)
    ledger.void("voided")
    ledger.expire("expired")
    assert {h.batch_id: h.status for h in ledger.holds()} == {
        "held": "held",
        "settled": "settled",
        "voided": "voided",
        "expired": "expired",
    }
    assert [h.batch_id for h in ledger.holds(status="held")] == ["held"]


def test_stale_holds_lists_only_open_holds_older_than_the_cutoff(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    for batch in ("old", "old-settled", "fresh"):
        ledger.reserve("acme", batch, 1 * USD)
    ledger.settle("old-settled", 1)
    # Age two reservations by two hours, directly in the file (the ledger itself never rewrites history).
    with duckdb.connect(ledger.path) as con:
        con.execute(
            "UPDATE journal SET created_at = created_at - INTERVAL 2 HOUR WHERE batch_id IN ('old', 'old-settled')"
        )
    assert [h.batch_id for h in ledger.stale_holds(timedelta(hours=1))] == ["old"]
    assert sorted(h.batch_id for h in ledger.stale_holds(timedelta(0))) == ["fresh", "old"]
    stale = ledger.stale_holds(timedelta(hours=1))[0]
    assert stale.created_at < datetime.now(UTC) - timedelta(hours=1)


# -- verify --------------------------------------------------------------------------------------------
def build_history(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g1")
    ledger.purchase("acme", 50 * USD, key="stripe:cs_1")
    ledger.grant("other", 2 * USD, key="g2")
    ledger.reserve("acme", "b1", 4 * USD)
    ledger.settle("b1", 3 * USD)
    ledger.reserve("acme", "b2", 5 * USD)
    ledger.void("b2")
    ledger.reserve("other", "b3", 2 * USD)
    ledger.expire("b3")
    ledger.reserve("acme", "b4", 7 * USD)


def test_verify_is_ok_for_a_history_of_every_operation(ledger: Ledger) -> None:
    build_history(ledger)
    report = ledger.verify()
    assert report == {"ok": True, "entries": 10, "workspaces": 2, "problems": []}


def test_every_journal_entry_balances_to_zero(ledger: Ledger) -> None:
    build_history(ledger)
    with duckdb.connect(ledger.path, read_only=True) as con:
        sums = con.execute("SELECT entry_id, sum(amount_usd_micros) FROM postings GROUP BY entry_id").fetchall()
        entries = con.execute("SELECT count(*) FROM journal").fetchone()
    assert entries is not None and len(sums) == entries[0] == 10
    assert {s for _, s in sums} == {0}


def test_balances_equal_a_replay_of_the_postings(ledger: Ledger) -> None:
    build_history(ledger)
    for workspace in ("acme", "other"):
        available, held, spent, credited = balances(ledger, workspace)
        assert replay(ledger.path, workspace) == (available, held, spent)
        assert credited == available + held + spent
    assert balances(ledger, "acme") == (50 * USD, 7 * USD, 3 * USD, 60 * USD)
    assert balances(ledger, "other") == (2 * USD, 0, 0, 2 * USD)


def test_verify_reports_a_tampered_wallets_row(ledger: Ledger) -> None:
    build_history(ledger)
    with duckdb.connect(ledger.path) as con:
        con.execute("UPDATE wallets SET available_usd_micros = available_usd_micros + 1 WHERE workspace = 'acme'")
    report = ledger.verify()
    assert report["ok"] is False
    assert any("workspace acme" in p and "replay" in p for p in report["problems"])
    assert not any("workspace other" in p for p in report["problems"])


def test_verify_reports_an_unbalanced_entry(ledger: Ledger) -> None:
    build_history(ledger)
    with duckdb.connect(ledger.path) as con:
        con.execute(
            "UPDATE postings SET amount_usd_micros = amount_usd_micros + 5 WHERE entry_id = "
            "(SELECT entry_id FROM journal WHERE idempotency_key = 'settle:b1') AND account LIKE '%:spent'"
        )
    report = ledger.verify()
    assert report["ok"] is False
    assert any("does not balance (sum 5)" in p for p in report["problems"])


def test_verify_reports_a_hold_resolved_twice(ledger: Ledger) -> None:
    build_history(ledger)
    with duckdb.connect(ledger.path) as con:
        # A forged second resolution, balanced and mirrored in the wallet, so only the hold check can see it.
        con.execute(
            "INSERT INTO journal SELECT 'forged', 'void:b1', 'void', workspace, batch_id, 0, body_sha256, NULL, "
            "now() FROM journal WHERE idempotency_key = 'settle:b1'"
        )
    report = ledger.verify()
    assert report["ok"] is False
    assert "batch b1: hold resolved 2 times" in report["problems"]


def test_verify_reports_an_overdraft_in_the_history(ledger: Ledger) -> None:
    ledger.grant("acme", 10 * USD, key="g")
    ledger.reserve("acme", "b1", 4 * USD)
    with duckdb.connect(ledger.path) as con:
        # Backdate the reservation before the grant that funded it: available went below zero in between.
        con.execute("UPDATE journal SET created_at = created_at - INTERVAL 1 HOUR WHERE op = 'reserve'")
    report = ledger.verify()
    assert report["ok"] is False
    assert any("available went below zero" in p for p in report["problems"])
