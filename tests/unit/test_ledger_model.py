"""The ledger against a simple in-memory model, under random sequences of operations (hypothesis).

After every step: every entry sums to zero, no available balance is below zero, the wallets equal a
replay of the journal (`verify()`), each hold is resolved at most once, and the ledger's balances and
holds equal the model's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from batchrouter.money.ledger import Entry, HoldError, IdempotencyConflict, InsufficientCredits, Ledger

USD = 1_000_000
WORKSPACES = ("acme", "beta")
BATCHES = tuple(f"b{i}" for i in range(4))
KEYS = ("k0", "k1", "k2")
STATUS = {"settle": "settled", "void": "voided", "expire": "expired"}


@pytest.fixture(autouse=True)
def _alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ledger's own logic, in a process that is alone with its file: no control service.
    monkeypatch.setenv("BATCHROUTER_CONTROL", "direct")


@dataclass
class ModelHold:
    workspace: str
    amount: int
    status: str = "held"
    captured: int = 0


class LedgerModel(RuleBasedStateMachine):
    # Batches that were reserved: settling and releasing draw mostly from them, so the interesting
    # sequences (reserve, settle, settle again, void after settle, ...) come up within a few steps.
    reserved = Bundle("reserved")
    resolved = Bundle("resolved")

    def __init__(self) -> None:
        super().__init__()
        # A fresh file per example; in memory-backed /dev/shm when there is one (the ledger fsyncs every commit).
        self.folder = tempfile.mkdtemp(prefix="ledger-model-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.ledger = Ledger(Path(self.folder) / "ledger.duckdb")
        self.wallet = {w: {"available": 0, "held": 0, "spent": 0, "credited": 0} for w in WORKSPACES}
        self.credit_keys: dict[str, tuple[str, str, int]] = {}
        self.holds: dict[str, ModelHold] = {}
        self.settled_with: dict[str, int] = {}
        self.released: set[tuple[str, str]] = set()
        self.entries = 0
        self.last: tuple[str, tuple[Any, ...], Entry | type[Exception]] | None = None

    # -- helpers -----------------------------------------------------------------------------------
    def call(self, op: str, *args: Any, expect: type[Exception] | None = None, replay: bool = False) -> Entry | None:
        """Run one ledger operation and check it did what the model expects (a new entry, a replay, a refusal).

        A refusal must write nothing: the invariant compares the journal's entry count with the model's.
        """
        try:
            entry = getattr(self.ledger, op)(*args)
        except (HoldError, IdempotencyConflict, InsufficientCredits) as exc:
            assert expect is not None and isinstance(exc, expect), f"{op}{args} raised {exc!r}, expected {expect}"
            self.last = (op, args, type(exc))
            return None
        assert expect is None, f"{op}{args} returned {entry}, expected {expect}"
        assert entry.replayed is replay, f"{op}{args}: replayed={entry.replayed}, expected {replay}"
        self.last = (op, args, entry)
        if not replay:
            self.entries += 1
        return entry

    def move(self, workspace: str, **deltas: int) -> None:
        for kind, delta in deltas.items():
            self.wallet[workspace][kind] += delta

    # -- rules -------------------------------------------------------------------------------------
    @initialize(amounts=st.tuples(st.integers(1, 10 * USD), st.integers(1, 10 * USD)))
    def opening_grants(self, amounts: tuple[int, int]) -> None:
        for workspace, amount in zip(WORKSPACES, amounts, strict=True):
            self._credit("grant", workspace, amount, f"opening-{workspace}", expect=None, replay=False)
            self.move(workspace, available=amount, credited=amount)

    @rule(
        op=st.sampled_from(["grant", "purchase"]),
        workspace=st.sampled_from(WORKSPACES),
        amount=st.integers(1, 5 * USD),
        key=st.sampled_from(KEYS),
    )
    def credit(self, op: str, workspace: str, amount: int, key: str) -> None:
        used = self.credit_keys.get(key)
        if used is None:
            entry = self._credit(op, workspace, amount, key, expect=None, replay=False)
            assert entry is not None and entry.amount_usd_micros == amount
            self.credit_keys[key] = (op, workspace, amount)
            self.move(workspace, available=amount, credited=amount)
        elif used == (op, workspace, amount):
            self._credit(op, workspace, amount, key, expect=None, replay=True)
        else:
            self._credit(op, workspace, amount, key, expect=IdempotencyConflict, replay=False)

    def _credit(
        self, op: str, workspace: str, amount: int, key: str, *, expect: type[Exception] | None, replay: bool
    ) -> Entry | None:
        try:
            entry: Entry = getattr(self.ledger, op)(workspace, amount, key=key)
        except IdempotencyConflict:
            assert expect is IdempotencyConflict, f"{op} with key {key} raised a conflict unexpectedly"
            self.last = ("credit", (op, workspace, amount, key), IdempotencyConflict)
            return None
        assert expect is None, f"{op} with used key {key} and another body did not raise"
        assert entry.replayed is replay
        if not replay:
            self.entries += 1
        self.last = ("credit", (op, workspace, amount, key), entry)
        return entry

    @rule(
        target=reserved,
        workspace=st.sampled_from(WORKSPACES),
        batch=st.sampled_from(BATCHES),
        amount=st.integers(0, 4 * USD),
    )
    def reserve(self, workspace: str, batch: str, amount: int) -> Any:
        hold = self.holds.get(batch)
        if hold is not None:
            same = (hold.workspace, hold.amount) == (workspace, amount)
            self.call("reserve", workspace, batch, amount, expect=None if same else IdempotencyConflict, replay=same)
        elif amount > self.wallet[workspace]["available"]:
            self.call("reserve", workspace, batch, amount, expect=InsufficientCredits)
        else:
            entry = self.call("reserve", workspace, batch, amount)
            assert entry is not None and entry.amount_usd_micros == amount
            self.holds[batch] = ModelHold(workspace, amount)
            self.move(workspace, available=-amount, held=amount)
            return batch
        return multiple()

    @rule(
        target=resolved,
        op=st.sampled_from(["settle", "void", "expire"]),
        batch=reserved,
        actual=st.integers(0, 5 * USD),
    )
    def resolve_a_reserved_batch(self, op: str, batch: str, actual: int) -> Any:
        return batch if self.resolve(op, batch, actual) else multiple()

    @rule(
        op=st.sampled_from(["settle", "void", "expire"]),
        batch=resolved | st.just("never-reserved"),
        actual=st.integers(0, 5 * USD),
    )
    def resolve_again_or_without_a_reservation(self, op: str, batch: str, actual: int) -> None:
        assert not self.resolve(op, batch, actual), "a second resolution of a hold changed the ledger"

    def resolve(self, op: str, batch: str, actual: int) -> bool:
        """settle (capture `actual`, at most the hold), void or expire (release all) once; True if it did."""
        hold = self.holds.get(batch)
        if op == "settle" and batch in self.settled_with:
            same = self.settled_with[batch] == actual
            self.call("settle", batch, actual, expect=None if same else IdempotencyConflict, replay=same)
        elif op != "settle" and (op, batch) in self.released:
            self.call(op, batch, replay=True)
        elif hold is None or hold.status != "held":
            self.call(op, batch, *([actual] if op == "settle" else []), expect=HoldError)
        elif op == "settle":
            captured = min(actual, hold.amount)
            entry = self.call("settle", batch, actual)
            assert entry is not None and entry.amount_usd_micros == captured
            assert (entry.memo is not None) == (actual > hold.amount)
            self.settled_with[batch] = actual
            hold.status, hold.captured = "settled", captured
            self.move(hold.workspace, held=-hold.amount, available=hold.amount - captured, spent=captured)
            return True
        else:
            entry = self.call(op, batch)
            assert entry is not None and entry.amount_usd_micros == hold.amount
            self.released.add((op, batch))
            hold.status = STATUS[op]
            self.move(hold.workspace, held=-hold.amount, available=hold.amount)
            return True
        return False

    @rule()
    def repeat_last_operation(self) -> None:
        """The same key and body again: the original entry back (or the same refusal), nothing new."""
        if self.last is None:
            return
        op, args, outcome = self.last
        if op == "credit":
            kind, workspace, amount, key = args
            call = lambda: getattr(self.ledger, kind)(workspace, amount, key=key)  # noqa: E731
        else:
            call = lambda: getattr(self.ledger, op)(*args)  # noqa: E731
        if isinstance(outcome, Entry):
            again = call()
            assert again.replayed and again.entry_id == outcome.entry_id
            assert again.amount_usd_micros == outcome.amount_usd_micros
        else:
            try:
                call()
            except outcome:
                pass
            else:
                raise AssertionError(f"repeating {op}{args} did not raise {outcome.__name__} again")

    # -- invariants --------------------------------------------------------------------------------
    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        # verify(): every entry sums to zero, wallets equal the journal's replay, available never went
        # below zero, no hold resolved twice. The entry count shows refused operations wrote nothing.
        report = self.ledger.verify()
        assert report["ok"], report["problems"]
        assert report["entries"] == self.entries
        # The state itself, read in one connection (the API's reads are compared once, at teardown).
        with duckdb.connect(self.ledger.path, read_only=True) as con:
            wallets = {
                w: {"available": a, "held": h, "spent": s, "credited": c}
                for w, a, h, s, c in con.execute(
                    "SELECT workspace, available_usd_micros, held_usd_micros, spent_usd_micros, credited_usd_micros "
                    "FROM wallets"
                ).fetchall()
            }
            resolutions = con.execute(
                "SELECT batch_id, list(op ORDER BY op) FROM journal WHERE batch_id IS NOT NULL GROUP BY ALL"
            ).fetchall()
        assert wallets == {w: m for w, m in self.wallet.items() if w in wallets}
        assert all(m == dict.fromkeys(m, 0) for w, m in self.wallet.items() if w not in wallets)
        assert all(v["available"] >= 0 for v in wallets.values())
        for batch, ops in resolutions:
            assert len([op for op in ops if op in STATUS]) <= 1, f"{batch} resolved more than once: {ops}"
            assert ops.count("reserve") == 1

    def teardown(self) -> None:
        try:
            for workspace in WORKSPACES:
                b = self.ledger.balance(workspace)
                assert (b.available_usd_micros, b.held_usd_micros, b.spent_usd_micros, b.credited_usd_micros) == tuple(
                    self.wallet[workspace][k] for k in ("available", "held", "spent", "credited")
                )
            holds = {h.batch_id: (h.workspace, h.amount_usd_micros, h.status, h.captured_usd_micros)
                     for h in self.ledger.holds()}  # fmt: skip
            assert holds == {b: (h.workspace, h.amount, h.status, h.captured) for b, h in self.holds.items()}
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


LedgerModel.TestCase.settings = settings(
    max_examples=10,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerAgreesWithAnInMemoryModelUnderRandomOperations = LedgerModel.TestCase
