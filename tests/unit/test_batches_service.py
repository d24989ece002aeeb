"""The batches service and its state machine: each lifecycle rule, tested once, at the engine."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from batchrouter.access.actors import CLI
from batchrouter.batches import lifecycle
from batchrouter.batches.leases import Leases
from batchrouter.batches.lifecycle import current_state, record_state
from batchrouter.batches.states import ALLOWED, FINAL, BatchState, check_transition, outcome
from batchrouter.core.config import Settings, WorkspaceConfig
from batchrouter.core.errors import (
    AwaitingApproval,
    BatchBusy,
    BatchError,
    Forbidden,
    IllegalTransition,
    ManifestError,
    NotFound,
)
from batchrouter.engine import BatchRouter
from batchrouter.execution.checkpoint import Checkpoint, ItemResult, ItemStatus
from batchrouter.intake.drops import Dropped
from batchrouter.money.ledger import InsufficientCredits

USD = 1_000_000
MANIFEST = b"item_id,model,prompt\n1,gpt-4o-mini,hello\n2,gpt-4o-mini,hi there\n3,gpt-4o-mini,a third\n"


@pytest.fixture
def engine(settings: Settings) -> BatchRouter:
    engine = BatchRouter(settings)
    engine.ledger.grant("acme", 5 * USD, key="grant")
    return engine


def state_events(engine: BatchRouter, batch_id: str) -> list[tuple[str, str]]:
    events = [e for e in engine.accounts.audit_events("acme") if e["action"] == "batch.state"]
    out = []
    for e in events:
        if e["target"] == batch_id:
            before, after = (json.loads(x) if isinstance(x, str) else x for x in (e["before_json"], e["after_json"]))
            out.append((before["state"], after["state"]))
    return out


# -- the state machine --------------------------------------------------------------------------------
def test_every_state_has_its_transitions_and_only_final_states_can_be_the_end() -> None:
    assert set(ALLOWED) == set(BatchState)
    ends = {s for s in BatchState if s.terminal}
    assert ends == {BatchState.COMPLETED, BatchState.CANCELLED, BatchState.UNUSABLE_MANIFEST}
    assert ends <= FINAL
    # Everything that is not the end can still be cancelled.
    assert all(BatchState.CANCELLED in ALLOWED[s] for s in BatchState if not s.terminal)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (BatchState.SUBMITTED, BatchState.DISPATCHING),  # no dispatch without a quote and a reservation
        (BatchState.QUOTED, BatchState.DISPATCHING),
        (BatchState.AWAITING_APPROVAL, BatchState.COMPLETED),
        (BatchState.CANCELLED, BatchState.RESERVED),  # a cancelled batch is never revived
        (BatchState.COMPLETED, BatchState.QUOTED),
        (BatchState.UNUSABLE_MANIFEST, BatchState.QUOTED),
    ],
)
def test_illegal_transitions_are_refused_with_what_is_allowed(current: BatchState, target: BatchState) -> None:
    with pytest.raises(IllegalTransition, match=f"is {current} and cannot become {target}"):
        check_transition("b1", current, target)


def test_an_illegal_transition_writes_nothing(engine: BatchRouter) -> None:
    view = engine.batches.submit(MANIFEST, filename="m.csv", workspace="acme")
    info = engine.batches.info(view.batch_id)
    with pytest.raises(IllegalTransition):
        record_state(engine.storage, info, BatchState.DISPATCHING, engine.settings.database)
    assert current_state(engine.storage, info) == BatchState.SUBMITTED
    assert not engine.storage.exists(*info.folder("status.json"))
    assert state_events(engine, view.batch_id) == []


def test_the_outcome_of_settled_receipts() -> None:
    assert outcome(succeeded=3, failed=0, pending=0, cancelled=False) == BatchState.COMPLETED
    assert outcome(succeeded=2, failed=1, pending=0, cancelled=False) == BatchState.PARTIALLY_FAILED
    assert outcome(succeeded=0, failed=3, pending=0, cancelled=False) == BatchState.FAILED
    assert outcome(succeeded=1, failed=2, pending=0, cancelled=True) == BatchState.CANCELLED
    # Rows refused before dispatch are reported, not retried: they fail a batch only if nothing came out.
    assert outcome(succeeded=2, failed=0, pending=0, cancelled=False, rejected=1) == BatchState.COMPLETED
    assert outcome(succeeded=0, failed=0, pending=0, cancelled=False, rejected=1) == BatchState.FAILED


# -- create and advance -------------------------------------------------------------------------------
def test_create_then_advance_walks_the_states_each_audited_once(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    assert (view.state, view.created) == (BatchState.RESERVED, True)
    run = engine.batches.advance(view.batch_id)
    assert (run.state, run.succeeded, run.failed) == (BatchState.COMPLETED, 3, 0)
    assert run.settlement is not None and run.settlement["captured_usd_micros"] == run.cost_usd_micros
    assert state_events(engine, view.batch_id) == [
        ("submitted", "quoted"), ("quoted", "reserved"), ("reserved", "dispatching"), ("dispatching", "completed"),
    ]  # fmt: skip


def test_the_last_progress_report_of_a_run_counts_every_item(engine: BatchRouter) -> None:
    # Reports are throttled to a display's refresh rate; the one after the last result is never held back.
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    reports: list[tuple[int, int, int]] = []
    run = engine.batches.advance(view.batch_id, on_progress=lambda p: reports.append((p.succeeded, p.failed, p.total)))
    assert reports and len(reports) <= 3 + 1
    assert reports[-1] == (run.succeeded, run.failed, 3) == (3, 0, 3)


def test_a_dispatch_run_records_its_wall_and_cpu_seconds_beside_route_health(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    engine.batches.advance(view.batch_id)
    folder = Path(engine.settings.storage.root) / "batches" / view.batch_id / "dispatch"
    health = pl.read_parquet(sorted(folder.glob("health-*.parquet"))[-1])
    row = health.row(0, named=True)
    assert row["requests"] == 3
    assert 0 < row["run_cpu_seconds"] and 0 < row["run_seconds"]


def test_creating_an_existing_batch_again_quotes_and_reserves_nothing_new(engine: BatchRouter) -> None:
    first = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    info = engine.batches.info(first.batch_id)
    quoted_at = engine.storage.fs.info(engine.storage.path(*info.folder("quote.json")))["mtime"]
    again = engine.batches.create(MANIFEST, filename="renamed.csv", workspace="acme", actor=CLI)
    assert (again.batch_id, again.created, again.state) == (first.batch_id, False, BatchState.RESERVED)
    assert engine.storage.fs.info(engine.storage.path(*info.folder("quote.json")))["mtime"] == quoted_at
    assert [h.status for h in engine.ledger.batch_holds(first.batch_id)] == ["held"]
    engine.batches.advance(first.batch_id)
    done = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    assert (done.created, done.state) == (False, BatchState.COMPLETED)
    assert len(engine.ledger.batch_holds(first.batch_id)) == 1


def test_advance_again_on_a_completed_batch_sends_and_charges_nothing(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    first = engine.batches.advance(view.batch_id)
    again = engine.batches.advance(view.batch_id)
    assert (again.state, again.cost_usd_micros) == (BatchState.COMPLETED, first.cost_usd_micros)
    assert again.settlement is not None and again.settlement["already_settled"] is True
    assert engine.ledger.balance("acme").spent_usd_micros == first.cost_usd_micros


def test_short_of_credit_the_batch_waits_and_goes_on_once_credit_is_there(settings: Settings) -> None:
    engine = BatchRouter(settings)
    with pytest.raises(InsufficientCredits) as refused:
        engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    assert refused.value.missing > 0
    (view,) = engine.batches.list("acme")
    assert view.state == BatchState.INSUFFICIENT_CREDITS
    engine.ledger.grant("acme", USD, key="later")
    assert engine.batches.advance(view.batch_id).state == BatchState.COMPLETED


def test_over_the_approval_limit_the_batch_waits_until_approved(settings: Settings) -> None:
    settings = settings.model_copy(update={"workspaces": {"acme": WorkspaceConfig(auto_approve_max_usd="0.000001")}})
    engine = BatchRouter(settings)
    engine.ledger.grant("acme", 5 * USD, key="grant")
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    assert (view.state, view.holds) == (BatchState.AWAITING_APPROVAL, [])
    with pytest.raises(AwaitingApproval, match="batchrouter approve"):
        engine.batches.advance(view.batch_id)
    assert engine.batches.approved_waiting() == []
    engine.batches.approve(view.batch_id, actor=CLI)
    assert engine.batches.approved_waiting() == [view.batch_id]
    assert engine.batches.advance(view.batch_id).state == BatchState.COMPLETED


def test_an_unusable_manifest_is_the_end_and_says_why_each_time(engine: BatchRouter) -> None:
    bad = b"item_id,prompt\n1,no model column\n"
    with pytest.raises(ManifestError) as first:
        engine.batches.create(bad, filename="bad.csv", workspace="acme", actor=CLI)
    (view,) = engine.batches.list("acme")
    assert view.state == BatchState.UNUSABLE_MANIFEST
    with pytest.raises(ManifestError) as again:
        engine.batches.advance(view.batch_id)
    assert again.value.problem == first.value.problem
    assert engine.ledger.batch_holds(view.batch_id) == []


# -- cancel and retry ---------------------------------------------------------------------------------
def test_cancel_before_dispatch_releases_the_hold_and_nothing_is_sent(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    cancelled = engine.batches.cancel(view.batch_id, actor=CLI)
    assert cancelled.state == BatchState.CANCELLED
    assert [h.status for h in engine.ledger.batch_holds(view.batch_id)] == ["voided"]
    run = engine.batches.advance(view.batch_id)
    assert (run.state, run.succeeded, run.cost_usd_micros) == (BatchState.CANCELLED, 0, 0)
    assert engine.ledger.balance("acme").available_usd_micros == 5 * USD
    # Cancelling again, or creating it again, changes nothing.
    assert engine.batches.cancel(view.batch_id, actor=CLI).state == BatchState.CANCELLED
    assert engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI).state == BatchState.CANCELLED


def test_retry_is_only_for_a_batch_with_unanswered_items(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    with pytest.raises(BatchError, match="only a batch with failed or expired items"):
        engine.batches.retry(view.batch_id, actor=CLI)
    engine.batches.advance(view.batch_id)
    with pytest.raises(BatchError, match="is completed"):
        engine.batches.retry(view.batch_id, actor=CLI)


# -- who may see and do what --------------------------------------------------------------------------
def test_another_workspaces_batch_is_not_found(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    with pytest.raises(NotFound):
        engine.batches.status(view.batch_id, workspace="globex")
    assert engine.batches.list("globex") == []
    with pytest.raises(NotFound):
        engine.batches.status("../../etc")


def test_a_drop_in_a_suspended_workspace_is_quarantined_with_a_report(engine: BatchRouter, tmp_path: Path) -> None:
    engine.accounts.set_suspended("acme", True, reason="unpaid", actor="test")
    engine.storage.write_bytes(MANIFEST, "manifests", "acme", "m.csv")
    with pytest.raises(Forbidden, match="suspended"):
        engine.batches.accept_drop(Dropped("manifests/acme/m.csv", "acme", "m.csv", 0.0))
    assert not engine.storage.exists("manifests", "acme", "m.csv")
    reports = [n for n in engine.storage.list("quarantine", "acme") if n.endswith(".error.txt")]
    assert len(reports) == 1 and engine.batches.list("acme") == []


def test_a_batch_cancelled_before_it_was_reserved_ends_with_every_item_cancelled(settings: Settings) -> None:
    settings = settings.model_copy(update={"workspaces": {"acme": WorkspaceConfig(auto_approve_max_usd="0.000001")}})
    engine = BatchRouter(settings)
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    assert view.state == BatchState.AWAITING_APPROVAL
    assert engine.batches.cancel(view.batch_id, actor=CLI).state == BatchState.CANCELLED
    run = engine.batches.advance(view.batch_id)
    assert (run.state, run.succeeded, run.failed, run.pending, run.settlement) == (BatchState.CANCELLED, 0, 3, 0, None)
    assert [f["error_code"] for f in run.failures] == ["cancelled"]
    assert engine.ledger.batch_holds(view.batch_id) == []


# -- many processes on one batch (the lease) and recovery -------------------------------------------------
def test_a_batch_another_process_is_running_is_not_advanced_twice(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    other = Leases(engine.settings.database)
    assert other.claim(view.batch_id, "dagster run 42", ttl_s=600) is None
    with pytest.raises(BatchBusy, match="dagster run 42"):
        engine.batches.advance(view.batch_id)
    # Its sweep leaves it alone however quiet it is; once the run is gone, the sweeper releases it.
    assert engine.batches.sweep(stale_after=timedelta(0)) == []
    other.release(view.batch_id, "dagster run 42")
    assert [s["hold"] for s in engine.batches.sweep(stale_after=timedelta(0))] == [view.batch_id]
    assert engine.batches.status(view.batch_id).state == BatchState.FAILED


def test_the_lease_of_a_run_killed_on_this_host_is_taken_over_at_once(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"dagster on {socket.gethostname()} pid {int(gone.stdout)} (killed)"
    assert Leases(engine.settings.database).claim(view.batch_id, dead, ttl_s=600) is None
    assert engine.batches.advance(view.batch_id).state == BatchState.COMPLETED


def dead_owner() -> str:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"api on {socket.gethostname()} pid {int(gone.stdout)} (killed)"


def test_a_batch_whose_run_died_mid_dispatch_is_listed_to_run_again_and_no_other(engine: BatchRouter) -> None:
    leases = Leases(engine.settings.database)
    made = [engine.batches.create(MANIFEST + f"4,gpt-4o-mini,batch {n}\n".encode(), filename=f"m{n}.csv",
                                  workspace="acme", actor=CLI).batch_id for n in range(5)]  # fmt: skip
    killed, lapsed, running, finished, never_started = made
    for batch_id in (killed, lapsed, running):
        record_state(engine.storage, engine.batches.info(batch_id), BatchState.DISPATCHING, None)
    assert leases.claim(killed, dead_owner(), ttl_s=600) is None  # its process is gone
    assert leases.claim(lapsed, "dagster on another-host pid 1 (x)", ttl_s=-1) is None  # it stopped renewing
    assert leases.claim(running, "dagster run 42", ttl_s=600) is None  # alive somewhere
    assert engine.batches.advance(finished).state == BatchState.COMPLETED
    assert leases.claim(finished, dead_owner(), ttl_s=600) is None  # died after it was done

    assert engine.batches.interrupted() == sorted([killed, lapsed])
    assert never_started not in engine.batches.interrupted()  # reserved, handed to a run not yet begun
    assert engine.batches.advance(killed).state == BatchState.COMPLETED
    assert engine.batches.interrupted() == [lapsed]


def test_a_crash_between_the_reservation_and_its_state_is_recovered_on_the_next_run(engine: BatchRouter) -> None:
    view = engine.batches.submit(MANIFEST, filename="m.csv", workspace="acme")
    info = engine.batches.info(view.batch_id)
    manifest = lifecycle.stage_manifest(engine.storage, engine.settings, engine.catalog, info)
    priced = lifecycle.stage_quote(engine.storage, engine.settings, engine.catalog, info, manifest)
    lifecycle.stage_route(engine.storage, info, manifest, priced)
    quote = engine.storage.read_json(*info.folder("quote.json"))
    engine.ledger.reserve("acme", info.batch_id, int(quote["reserve_usd_micros"]))  # then the process died
    assert current_state(engine.storage, info) == BatchState.QUOTED
    run = engine.batches.advance(view.batch_id)
    assert (run.state, run.succeeded) == (BatchState.COMPLETED, 3)
    assert [h.status for h in engine.ledger.batch_holds(view.batch_id)] == ["settled"]


def test_creating_a_batch_with_failed_items_again_opens_no_new_round(engine: BatchRouter) -> None:
    data = MANIFEST + b"4,gpt-4o-mini,[[sim:400]] refused\n"
    view = engine.batches.create(data, filename="m.csv", workspace="acme", actor=CLI)
    assert engine.batches.advance(view.batch_id).state == BatchState.PARTIALLY_FAILED
    again = engine.batches.create(data, filename="m.csv", workspace="acme", actor=CLI)
    assert (again.created, again.state, len(again.holds)) == (False, BatchState.PARTIALLY_FAILED, 1)
    # Retrying short of credit says so (and waits), instead of refusing the transition.
    available = engine.ledger.balance("acme").available_usd_micros
    engine.ledger.reserve("acme", "elsewhere", available)
    with pytest.raises(InsufficientCredits):
        engine.batches.retry(view.batch_id, actor=CLI)
    assert engine.batches.status(view.batch_id).state == BatchState.INSUFFICIENT_CREDITS


def test_cancelling_a_batch_whose_run_died_settles_what_was_answered(engine: BatchRouter) -> None:
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    info = engine.batches.info(view.batch_id)
    record_state(engine.storage, info, BatchState.DISPATCHING, engine.settings.database)
    checkpoint = Checkpoint(engine.storage, info.batch_id)
    checkpoint.add(answered("1", cost=7))  # one answer recorded, then the run died
    checkpoint.flush()
    cancelled = engine.batches.cancel(view.batch_id, actor=CLI)
    assert cancelled.state == BatchState.CANCELLED
    (hold,) = engine.ledger.batch_holds(view.batch_id)
    assert (hold.status, hold.captured_usd_micros) == ("settled", 7)
    assert engine.ledger.balance("acme").spent_usd_micros == 7


def answered(item_id: str, *, cost: int) -> ItemResult:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    return ItemResult(
        item_id=item_id, status=ItemStatus.SUCCEEDED, route="openai:gpt-4o-mini", provider="openai",
        model="gpt-4o-mini", upstream="gpt-4o-mini", attempts=1, input_tokens=10, output_tokens=5, cached_tokens=0,
        reserve_usd_micros=70, cost_usd_micros=cost, cost_source="catalog", latency_ms=12, started_at=at,
        finished_at=at, provider_request_id="req", input_sha256="0" * 64, output_sha256=None, output_text="hi",
        choices=None, finish_reason="stop", error_code=None, error_message=None, fallbacks_used=0, rate_limited=0,
    )  # fmt: skip


def test_a_batch_settled_before_the_state_machine_is_in_the_outcome_its_receipts_say(engine: BatchRouter) -> None:
    info = engine.batches.info(engine.batches.submit(MANIFEST, filename="m.csv", workspace="acme").batch_id)
    engine.storage.write_json({"status": "settled"}, *info.folder("status.json"))
    receipts = pl.DataFrame({"item_id": ["1", "2"], "status": ["succeeded", "failed"], "cost_usd_micros": [3, 0]})
    engine.storage.write_parquet(receipts, *info.folder("receipts.parquet"))
    assert current_state(engine.storage, info) == BatchState.PARTIALLY_FAILED  # so it can be retried


# -- the providers a batch may use (what Dagster's per-provider run limits count) ---------------------


def test_a_batch_names_each_provider_its_models_may_be_routed_to_before_it_is_quoted(engine: BatchRouter) -> None:
    data = MANIFEST + b"4,claude-haiku-4-5,hello\n"
    view = engine.batches.submit(data, filename="m.csv", workspace="acme")
    # gpt-4o-mini is served by openai and openrouter (a fallback), claude-haiku-4-5 by anthropic only.
    assert engine.batches.providers(view.batch_id) == ["anthropic", "openai", "openrouter"]
    assert current_state(engine.storage, engine.batches.info(view.batch_id)) == BatchState.SUBMITTED


def test_the_providers_of_a_batch_follow_its_workspaces_route_policy(settings: Settings) -> None:
    policy = {"denied_providers": ["openrouter"]}
    engine = BatchRouter(settings.model_copy(update={"workspaces": {"acme": WorkspaceConfig(policy=policy)}}))
    engine.ledger.grant("acme", 5 * USD, key="grant")
    view = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI)
    # Read from the manifest kept at quoting, the same answer as before it.
    assert engine.storage.exists(*engine.batches.info(view.batch_id).folder("manifest.parquet"))
    assert engine.batches.providers(view.batch_id) == ["openai"]


def test_a_batch_with_an_unusable_manifest_names_no_provider(engine: BatchRouter) -> None:
    view = engine.batches.submit(b"not,a\nmanifest", filename="m.csv", workspace="acme")
    assert engine.batches.providers(view.batch_id) == []


def test_asap_runs_online_at_once_even_where_the_workspace_has_a_default_deadline(settings: Settings) -> None:
    rushed = WorkspaceConfig(default_deadline="24h")
    engine = BatchRouter(settings.model_copy(update={"workspaces": {"acme": rushed}}))
    engine.ledger.grant("acme", 5 * USD, key="grant")

    def lanes(quote: dict[str, object] | None) -> set[str]:
        assert quote is not None
        return {str(r["lane"]) for r in quote["by_lane"]}  # type: ignore[attr-defined]

    # Without a deadline of its own the batch takes the workspace's 24 h, and so the providers' batch APIs.
    assert lanes(engine.batches.preview(MANIFEST, filename="m.csv", workspace="acme").model_dump()) == {"batch"}
    asap = engine.batches.preview(MANIFEST, filename="m.csv", workspace="acme", keep=True, deadline="asap")
    assert lanes(asap.model_dump()) == {"online"} and asap.deadline_s is None
    # Created from that quote (the terms the customer saw), or directly with "asap": online too.
    from_quote = engine.batches.create(quote_id=asap.quote_id, workspace="acme", actor=CLI)
    assert lanes(from_quote.quote) == {"online"}
    direct = engine.batches.create(MANIFEST, filename="m.csv", workspace="acme", actor=CLI, deadline="asap",
                                   run_tag="direct")  # fmt: skip
    assert lanes(direct.quote) == {"online"}
