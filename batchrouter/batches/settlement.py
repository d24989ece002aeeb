"""Money around a batch: the approval gate, reservation rounds, settlement and the sweeper.

A batch is paid for in rounds. Round 0 reserves the quote. Running the batch again later (a
re-execution or backfill of its partition, or `batchrouter run` on the same manifest) opens a new
round only if items failed or were never finished: it reserves just what those items need (plus
any cost of finished items that a dead run left unsettled), retries only them, and settles only
the new cost. So a batch is never charged twice, and the sum captured over its rounds equals its
receipts' total to the micro-dollar. Hold ids: `<batch>` for round 0, `<batch>~r<n>` after.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl

from batchrouter.access.accounts import Accounts
from batchrouter.batches.lifecycle import current_state, load_routed_items, record_state
from batchrouter.batches.states import ALLOWED, BatchState, outcome
from batchrouter.core.batch_info import BatchInfo, load_batch
from batchrouter.core.config import Settings
from batchrouter.core.errors import BatchError
from batchrouter.core.storage import Storage
from batchrouter.execution.checkpoint import Checkpoint, ItemStatus
from batchrouter.money.ledger import Entry, Hold, HoldStatus, InsufficientCredits, Ledger
from batchrouter.output.summary import write_summary

APPROVALS = "approvals"
AWAITING = "awaiting_approval"  # one marker per waiting batch, so the approval sensor lists only those


def hold_id(batch_id: str, round_no: int) -> str:
    return batch_id if round_no == 0 else f"{batch_id}~r{round_no}"


def is_approved(storage: Storage, settings: Settings, info: BatchInfo) -> bool:
    """Within the workspace's auto-approval limit, or approved (`batchrouter approve`, or an object
    dropped at `approvals/<batch_id>` in the bucket)."""
    if storage.exists(*info.folder("approval.json")) or storage.exists(APPROVALS, info.batch_id):
        return True
    limit = settings.workspace(info.workspace).auto_approve_max_usd
    if limit is None:
        return True
    quote = storage.read_json(*info.folder("quote.json"))
    return int(quote["reserve_usd_micros"]) <= int(Decimal(limit) * 10**6)


def leave_gate(storage: Storage, info: BatchInfo) -> None:
    """The batch no longer waits at the approval gate (approved, or cancelled)."""
    if storage.exists(AWAITING, info.batch_id):
        storage.fs.rm(storage.path(AWAITING, info.batch_id))


def gate(storage: Storage, settings: Settings, info: BatchInfo) -> bool:
    """The approval gate: True to go on; otherwise the batch waits with status `awaiting_approval`."""
    if is_approved(storage, settings, info):
        leave_gate(storage, info)
        return True
    storage.write_bytes(b"", AWAITING, info.batch_id)
    quote = storage.read_json(*info.folder("quote.json"))
    limit = settings.workspace(info.workspace).auto_approve_max_usd
    record_state(
        storage, info, BatchState.AWAITING_APPROVAL, settings.database, "batchrouter",
        reserve_usd_micros=quote["reserve_usd_micros"], auto_approve_max_usd=str(limit),
        quote=storage.url(*info.folder("quote.json")),
        message=f"the quote reserves more than the workspace's auto-approval limit of {limit} USD; "
        f"approve it with: batchrouter approve {info.batch_id}",
    )  # fmt: skip
    return False


def awaiting(storage: Storage) -> list[str]:
    """Batch ids waiting at the approval gate."""
    return storage.list(AWAITING)


def approve(storage: Storage, info: BatchInfo, *, by: str) -> dict[str, Any]:
    record = {"batch_id": info.batch_id, "approved_by": by, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    storage.write_json(record, *info.folder("approval.json"))
    return record


def _captured(holds: list[Hold]) -> int:
    return sum(h.captured_usd_micros for h in holds)


def stage_reserve(storage: Storage, settings: Settings, info: BatchInfo) -> Entry | None:
    """Reserve for the batch's next round of work; None when nothing is left to do.

    Raises:
        InsufficientCredits: not enough available; nothing is written and no request will be sent.
    """
    ledger = Ledger(settings.database)
    holds = ledger.batch_holds(info.batch_id)
    checkpoint = Checkpoint(storage, info.batch_id)
    if storage.exists(*info.folder("cancel.json")):
        return None  # a cancelled batch never reserves again
    if holds and holds[-1].status == HoldStatus.HELD:
        if len(holds) > 1:
            checkpoint.retry_failed()
        if current_state(storage, info) not in (BatchState.RESERVED, BatchState.DISPATCHING,
                                                BatchState.WAITING_ON_PROVIDER):  # fmt: skip
            # The hold was made but its state not recorded (a crash between the two): record it now.
            record_state(storage, info, BatchState.RESERVED, settings.database, "batchrouter",
                         round=len(holds) - 1, hold=holds[-1].batch_id)  # fmt: skip
        return None
    if not holds:
        amount = int(storage.read_json(*info.folder("quote.json"))["reserve_usd_micros"])
        quote_id = storage.read_json(*info.folder("quote.json"))["quote_id"]
    else:
        routed = load_routed_items(storage, info)
        results = checkpoint.load()
        finished = results.filter(pl.col("status") == ItemStatus.SUCCEEDED)
        todo = routed.filter(~pl.col("item_id").is_in(finished["item_id"].implode())) if routed.height else routed
        if todo.height == 0 and int(results["cost_usd_micros"].sum() or 0) == _captured(holds):
            return None
        unsettled = int(results["cost_usd_micros"].sum() or 0) - _captured(holds)
        amount = int(todo["reserve_usd_micros"].sum() or 0) + max(0, unsettled)
        quote_id = None
    hid = hold_id(info.batch_id, len(holds))
    try:
        entry = ledger.reserve(info.workspace, hid, amount)
    except InsufficientCredits as exc:
        record_state(storage, info, BatchState.INSUFFICIENT_CREDITS, settings.database, "batchrouter",
                     message=str(exc), missing_usd_micros=exc.missing, needed_usd_micros=exc.needed,
                     available_usd_micros=exc.available)  # fmt: skip
        raise
    if holds:
        checkpoint.retry_failed()
    Accounts(settings.database).record(info.workspace, "batchrouter", "batch.reserved", hid,
                                       after={"reserve_usd_micros": amount, "round": len(holds)})  # fmt: skip
    record_state(storage, info, BatchState.RESERVED, settings.database, "batchrouter", round=len(holds), hold=hid,
                 reserve_usd_micros=amount, quote_id=quote_id)  # fmt: skip
    return entry


def stage_settle(storage: Storage, settings: Settings, info: BatchInfo) -> dict[str, Any]:
    """Capture the round's actual cost and release the rest of its hold, exactly once."""
    receipts = storage.read_parquet(*info.folder("receipts.parquet"))
    pending = int((receipts["status"] == ItemStatus.PENDING).sum())
    if pending:
        raise BatchError(f"batch {info.batch_id} has {pending} items without a final receipt; dispatch it again first")
    ledger = Ledger(settings.database)
    holds = ledger.batch_holds(info.batch_id)
    if not holds:
        raise BatchError(f"batch {info.batch_id} has no reservation to settle")
    total = int(receipts["cost_usd_micros"].sum() or 0)
    current = holds[-1]
    earlier = _captured(holds[:-1])
    entry = ledger.settle(current.batch_id, total - earlier) if current.status == HoldStatus.HELD else None
    holds = ledger.batch_holds(info.batch_id)
    captured = _captured(holds)
    result = {
        "batch_id": info.batch_id,
        "rounds": len(holds),
        "reserved_usd_micros": sum(h.amount_usd_micros for h in holds),
        "receipts_usd_micros": total,
        "captured_usd_micros": captured,
        "released_usd_micros": sum(h.amount_usd_micros - h.captured_usd_micros for h in holds),
        "already_settled": entry is None or entry.replayed,
    }
    if entry is not None and not entry.replayed:
        Accounts(settings.database).record(info.workspace, "batchrouter", "batch.settled", current.batch_id,
                                           before={"held_usd_micros": current.amount_usd_micros},
                                           after={"captured_usd_micros": entry.amount_usd_micros})  # fmt: skip
    storage.write_json(result, *info.folder("settlement.json"))
    write_summary(settings, storage, info)
    by_status = dict(receipts.group_by("status").len().iter_rows())
    final = outcome(succeeded=int(by_status.get("succeeded", 0)), failed=int(by_status.get("failed", 0)), pending=0,
                    rejected=int(by_status.get("rejected", 0)),
                    cancelled=storage.exists(*info.folder("cancel.json")))  # fmt: skip
    now_in = current_state(storage, info)
    if now_in != final and final in ALLOWED[now_in]:  # (a swept batch stays failed until it runs again)
        record_state(storage, info, final, settings.database, "batchrouter",
                     **{k: v for k, v in result.items() if k != "batch_id"}, items_by_status=by_status)  # fmt: skip
    return result


def sweep(
    storage: Storage,
    settings: Settings,
    *,
    stale_after: timedelta,
    running: Callable[[str], str | None] = lambda batch_id: None,
) -> list[dict[str, Any]]:
    """Expire the holds of batches whose runs died (no progress for `stale_after`) and mark them failed.

    A batch that `running(batch_id)` says a live run holds is left alone, however long it has been quiet,
    and so is a batch waiting on its providers' batches: no run is meant to be alive then (the
    provider-batch sensor, or `batchrouter run` again, moves it on, hedging by its deadline).
    """

    ledger = Ledger(settings.database)
    now = datetime.now(UTC)
    swept = []
    for hold in ledger.holds(status=HoldStatus.HELD):
        batch_id = hold.batch_id.split("~r", 1)[0]
        try:
            info = load_batch(storage, batch_id)
            status = storage.read_json(*info.folder("status.json"))
            last = datetime.fromisoformat(status["at"])
        except (BatchError, FileNotFoundError, KeyError, ValueError):
            info, last = None, hold.created_at
        if now - last < stale_after or running(batch_id) is not None:
            continue
        if info is not None and current_state(storage, info) == BatchState.WAITING_ON_PROVIDER:
            continue
        entry = ledger.expire(hold.batch_id, reason=f"no progress since {last.isoformat()}; run presumed dead")
        Accounts(settings.database).record(hold.workspace, "sweeper", "batch.expired", hold.batch_id,
                                           after={"released_usd_micros": entry.amount_usd_micros})  # fmt: skip
        if info is not None and BatchState.FAILED in ALLOWED[current_state(storage, info)]:
            record_state(storage, info, BatchState.FAILED, settings.database, "sweeper",
                         reason="the run stopped without finishing; reservation released",
                         released_usd_micros=entry.amount_usd_micros, hold=hold.batch_id)  # fmt: skip
        swept.append({"hold": hold.batch_id, "released_usd_micros": entry.amount_usd_micros})
    return swept
