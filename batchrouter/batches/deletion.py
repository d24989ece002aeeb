"""`batchrouter workspace delete-data W`: remove a workspace's customer data, keep what must be kept.

Deleted: dropped manifests, quarantined files, quote previews, files (uploaded, and batches' output and
error files), and every batch folder (manifest,
quote, outputs, receipts, checkpoints) of batches that are finished. Kept, and reported with the
reason: batches still active (a reservation held, or waiting for approval), the ledger (financial
records) and the audit trail (security records), which hold amounts and ids, not prompts or outputs.
"""

from __future__ import annotations

from typing import Any

from batchrouter.access.accounts import Accounts
from batchrouter.batches.lifecycle import current_state
from batchrouter.batches.states import BatchState
from batchrouter.core.batch_info import BATCHES, load_batch
from batchrouter.core.config import Settings
from batchrouter.core.errors import BatchError
from batchrouter.core.storage import Storage
from batchrouter.money.ledger import HoldStatus, Ledger
from batchrouter.output.files import FILES

# Batches in these states are kept: money is held for them, they may run at any moment, or await approval.
ACTIVE = frozenset({BatchState.RESERVED, BatchState.DISPATCHING, BatchState.WAITING_ON_PROVIDER,
                    BatchState.AWAITING_APPROVAL})  # fmt: skip


def delete_workspace_data(storage: Storage, settings: Settings, workspace: str, *, actor: str) -> dict[str, Any]:
    ledger = Ledger(settings.database)
    deleted: list[str] = []
    kept: list[dict[str, str]] = []
    for folder in (("manifests", workspace), ("quarantine", workspace), ("quotes", workspace), (FILES, workspace)):
        if storage.exists(*folder):
            storage.remove_tree(*folder)
            deleted.append(storage.url(*folder))
    for batch_id in storage.list(BATCHES):
        try:
            info = load_batch(storage, batch_id)
        except BatchError:
            continue
        if info.workspace != workspace:
            continue
        holds = ledger.batch_holds(batch_id)
        state = current_state(storage, info)
        if (holds and holds[-1].status == HoldStatus.HELD) or state in ACTIVE:
            kept.append({"what": storage.url(BATCHES, batch_id), "why": f"batch is active ({state}); "
                         "cancel it or let it finish, then delete again"})  # fmt: skip
            continue
        storage.remove_tree(BATCHES, batch_id)
        deleted.append(storage.url(BATCHES, batch_id))
    kept.append({"what": f"ledger entries of {workspace}", "why": "financial records (amounts and batch ids only)"})
    kept.append({"what": f"audit events of {workspace}", "why": "security records (who changed what, when)"})
    report = {"workspace": workspace, "deleted": deleted, "kept": kept}
    Accounts(settings.database).record(workspace, actor, "workspace.data_deleted", workspace,
                                       after={"deleted": len(deleted), "kept": len(kept)})  # fmt: skip
    return report
